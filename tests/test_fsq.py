"""FSQ against the paper's formulas, in a user's own hk.transform, and in bfloat16."""

import math

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqzoo.nn import FSQ, QuantizerOutput, fsq

LEVELS = (8, 5, 5, 5)  # 1,000 codes, odd and even levels
K, D = math.prod(LEVELS), len(LEVELS)


def numpy_fsq(z, levels=LEVELS, eps=1e-3):
  """The paper's bound-and-round (with the offset for even levels), and mixed-radix indices."""
  l = np.asarray(levels, np.float64)
  half_l = (l - 1) * (1 + eps) / 2
  offset = np.where(l % 2 == 0, 0.5, 0.0)
  rounded = np.round(np.tanh(z + np.arctanh(offset / half_l)) * half_l - offset)
  half_width = l // 2
  basis = np.cumprod([1, *levels[:-1]])
  return rounded / half_width, ((rounded + half_width) * basis).sum(-1).astype(np.int64)


def _apply(z, levels=LEVELS):
  return hk.transform(lambda z: FSQ(levels)(z)).apply({}, None, z)


def _centres(levels=LEVELS):
  """Inputs that bound exactly onto the centre of every code's cell, in index order."""
  vectors = np.asarray(fsq.indices_to_vectors(jnp.arange(math.prod(levels)), levels), np.float64)
  l = np.asarray(levels, np.float64)
  half_l, offset = (l - 1) * (1 + 1e-3) / 2, np.where(l % 2 == 0, 0.5, 0.0)
  return np.arctanh((vectors * (l // 2) + offset) / half_l) - np.arctanh(offset / half_l)


def test_values_and_indices_equal_the_papers_formulas():
  z = np.random.default_rng(0).normal(scale=2.0, size=(4096, D))
  out = jax.jit(_apply)(z.astype(np.float32))
  want_vectors, want_codes = numpy_fsq(z)
  np.testing.assert_allclose(out.quantized, want_vectors, atol=1e-6)
  np.testing.assert_array_equal(out.codes, want_codes)
  assert isinstance(out, QuantizerOutput) and out.codes.dtype == jnp.int32
  np.testing.assert_array_equal(out.code_counts, np.bincount(want_codes, minlength=K))
  assert float(out.loss) == 0.0 and out.reseeds == {}
  p = np.bincount(want_codes, minlength=K) / len(want_codes)
  np.testing.assert_allclose(out.perplexity, np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))),
                             rtol=1e-4)


def test_indices_and_vectors_are_inverse_and_the_codebook_is_the_grid():
  codebook = hk.transform(lambda: FSQ(LEVELS).codebook()).apply({}, None)
  chex.assert_shape(codebook, (K, D))
  assert len(np.unique(np.asarray(codebook), axis=0)) == K
  assert np.all(np.abs(codebook) <= 1.0)
  np.testing.assert_array_equal(fsq.vectors_to_indices(codebook, LEVELS), np.arange(K))
  for i, l in enumerate(LEVELS):  # each dimension takes exactly its L_i values
    assert len(np.unique(np.asarray(codebook[:, i]))) == l
  lookup = hk.transform(lambda c: FSQ(LEVELS).lookup(c)).apply({}, None, jnp.arange(K))
  np.testing.assert_array_equal(lookup, codebook)


def test_every_code_is_reached_in_float32_and_bfloat16():
  centres = _centres()
  for dtype in (jnp.float32, jnp.bfloat16):
    out = _apply(jnp.asarray(centres, dtype))
    np.testing.assert_array_equal(out.codes, np.arange(K))
    np.testing.assert_array_equal(out.code_counts, np.ones(K))
    assert out.quantized.dtype == dtype


def test_bfloat16_inputs_give_float32_codes_up_to_ties():
  z32 = np.random.default_rng(1).normal(scale=1.5, size=(20000, D)).astype(np.float32)
  z16 = jnp.asarray(z32, jnp.bfloat16)
  out16, out32 = _apply(z16), _apply(z32)
  # Inside, a bfloat16 input is exactly its float32 value: the same codes as float32 on it.
  np.testing.assert_array_equal(out16.codes, _apply(jnp.asarray(z16, jnp.float32)).codes)
  assert out16.perplexity.dtype == jnp.float32 and out16.code_counts.dtype == jnp.int32
  differ = np.asarray(out16.codes) != np.asarray(out32.codes)
  assert differ.mean() < 0.02
  # Every difference is a tie: bfloat16 rounding moved the input across a cell boundary.
  b32 = np.asarray(fsq.bound(z32, LEVELS))[differ]
  b16 = np.asarray(fsq.bound(z16, LEVELS))[differ]
  assert np.all(np.any(np.round(b32) != np.round(b16), axis=-1))
  assert np.all(np.min(np.abs(b32 - np.floor(b32) - 0.5), axis=-1) < 0.05)
  # And bfloat16 uses as many codes as float32 (not about half).
  assert np.count_nonzero(out16.code_counts) == np.count_nonzero(out32.code_counts)


def test_straight_through_gradient_is_the_bounds():
  z = jnp.asarray(np.random.default_rng(2).normal(size=(64, D)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(3).normal(size=(64, D)), jnp.float32)
  grad = jax.grad(lambda z: jnp.sum(_apply(z).quantized * w))(z)
  half_width = np.asarray(LEVELS) // 2
  want = jax.grad(lambda z: jnp.sum(fsq.bound(z, LEVELS) / half_width * w))(z)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(grad) != 0)


def test_a_user_written_plain_transform_trains_through_it():
  x = jnp.asarray(np.random.default_rng(4).normal(size=(32, 10)), jnp.float32)

  def forward(x):
    q = FSQ(LEVELS, name="fsq")(hk.Linear(D, name="encoder")(x), True)
    return jnp.mean((x - hk.Linear(10, name="decoder")(q.quantized)) ** 2) + q.loss, q

  f = hk.transform(forward)  # no state: a plain transform
  params = f.init(jax.random.PRNGKey(0), x)
  assert set(params) == {"encoder", "decoder"}  # the codebook is implicit
  (loss, q), grads = jax.value_and_grad(lambda p: f.apply(p, None, x), has_aux=True)(params)
  chex.assert_shape([q.codes], [(32,)])
  chex.assert_shape(q.quantized, (32, D))
  assert np.isfinite(loss) and np.abs(np.asarray(grads["encoder"]["w"])).sum() > 0


def test_counts_are_summed_over_the_replica_axis():
  z = np.random.default_rng(5).normal(size=(2, 50, D)).astype(np.float32)
  f = hk.transform(lambda z: FSQ(LEVELS, cross_replica_axis="i")(z))
  out = jax.vmap(lambda z: f.apply({}, None, z), axis_name="i")(z)
  whole = _apply(z.reshape(100, D))
  np.testing.assert_array_equal(out.code_counts[0], whole.code_counts)
  np.testing.assert_array_equal(out.code_counts[1], whole.code_counts)


def test_bad_levels_and_inputs_are_refused():
  for levels in [(), (8, 2), (2.5, 3), (2 ** 16, 2 ** 16)]:
    with pytest.raises(ValueError, match="levels"):
      hk.transform(lambda: FSQ(levels)).init(None)
  with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
    _apply(np.zeros((3, 5), np.float32))


def test_the_vqvae_module_takes_it_under_a_plain_transform():
  from vqzoo.nn import VQVAE

  class Encoder(hk.Module):
    def __call__(self, x):
      return hk.Linear(D)(hk.Flatten()(x))

  class Decoder(hk.Module):
    def __call__(self, z):
      return jnp.reshape(hk.Linear(28 * 28)(z), (-1, 28, 28, 1))

  def forward(x):
    model = VQVAE(Encoder(), Decoder(), FSQ(LEVELS))
    out = model(x, is_training=True)
    return out, model.decode_codes(out.codes)

  x = jax.random.uniform(jax.random.PRNGKey(0), (6, 28, 28, 1))
  f = hk.transform(forward)
  params = f.init(jax.random.PRNGKey(1), x)
  out, decoded = f.apply(params, None, x)
  chex.assert_shape([out.reconstruction, decoded], [(6, 28, 28, 1)] * 2)
  chex.assert_shape(out.codes, (6,))
  np.testing.assert_allclose(decoded, out.reconstruction, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.loss, out.reconstruction_loss, rtol=1e-6)  # no auxiliary loss
