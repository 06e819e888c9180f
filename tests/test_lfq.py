"""LFQ: sign codes against numpy, the entropy penalty against a brute-force softmax over all
2^d codes, global-batch statistics under pmap, bfloat16 inputs."""

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqzoo.nn import LFQ, QuantizerOutput

D = 6
K = 2 ** D


def _apply(z, is_training=True, **kwargs):
  return hk.transform(lambda z: LFQ(D, **kwargs)(z, is_training)).apply({}, None, z)


def _z(n=512, seed=0, scale=0.05):
  return (np.random.default_rng(seed).normal(size=(n, D)) * scale).astype(np.float32)


def brute_entropies(z, tau):
  """Per-sample and batch entropies from softmax(-||z - c||^2 / tau) over every corner c."""
  corners = np.array([[1 if (k >> (D - 1 - i)) & 1 else -1 for i in range(D)] for k in range(K)],
                     np.float64)
  logits = -((z[:, None, :].astype(np.float64) - corners[None]) ** 2).sum(-1) / tau
  logits -= logits.max(1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(1, keepdims=True)
  per_sample = -(p * np.log(np.maximum(p, 1e-300))).sum(1).mean()
  mean = p.mean(0)
  return per_sample, -(mean * np.log(np.maximum(mean, 1e-300))).sum()


def test_codes_are_the_sign_bits_and_lookup_inverts_them():
  z = _z().reshape(4, 128, D)
  out = jax.jit(_apply)(z)
  assert isinstance(out, QuantizerOutput)
  chex.assert_shape([out.codes, out.quantized, out.code_counts], [(4, 128), z.shape, (K,)])
  want = ((z > 0) * (2 ** np.arange(D - 1, -1, -1))).sum(-1)
  np.testing.assert_array_equal(out.codes, want)
  np.testing.assert_array_equal(out.quantized, np.where(z > 0, 1.0, -1.0))
  np.testing.assert_array_equal(out.code_counts, np.bincount(want.ravel(), minlength=K))
  lookup, codebook = hk.transform(lambda c: (LFQ(D).lookup(c), LFQ(D).codebook())).apply(
      {}, None, out.codes)
  np.testing.assert_array_equal(lookup, out.quantized)
  chex.assert_shape(codebook, (K, D))
  np.testing.assert_array_equal(codebook[out.codes], out.quantized)
  g = jax.grad(lambda z: jnp.sum(_apply(z).quantized * 3.0))(z)
  np.testing.assert_allclose(g, 3.0 * np.ones_like(z))  # straight-through


@pytest.mark.parametrize("tau", [0.01, 0.1])
def test_entropy_penalty_equals_the_brute_force_softmax(tau):
  z = _z(256, seed=1)
  per_sample, batch = hk.transform(lambda z: LFQ(D, temperature=tau).entropies(z)).apply(
      {}, None, z)
  want = brute_entropies(z, tau)
  np.testing.assert_allclose([per_sample, batch], want, rtol=1e-4, atol=1e-5)
  out = _apply(z, temperature=tau, commitment_cost=0.5, entropy_weight=0.2, diversity_gamma=2.0)
  commitment = np.mean((z - np.where(z > 0, 1, -1)) ** 2)
  np.testing.assert_allclose(out.loss, 0.5 * commitment + 0.2 * (want[0] - 2.0 * want[1]),
                             rtol=1e-4)
  evaluation = _apply(z, False, temperature=tau, commitment_cost=0.5, entropy_weight=0.2)
  np.testing.assert_allclose(evaluation.loss, 0.5 * commitment, rtol=1e-5)  # no penalty
  np.testing.assert_array_equal(evaluation.codes, out.codes)


def test_the_penalty_gradient_spreads_codes_over_a_batch():
  """A batch all on one code: descending the penalty moves some inputs to other codes."""
  z = jnp.asarray(np.abs(_z(256, seed=2)) + 0.01)  # every input on code K - 1
  loss = lambda z: _apply(z, commitment_cost=0.0, entropy_weight=1.0, temperature=0.1).loss
  for _ in range(50):
    z = z - 0.05 * jax.grad(loss)(z) * 256
  assert len(np.unique(np.asarray(_apply(z).codes))) > 4


def test_batch_statistics_under_pmap_equal_one_device_on_the_whole_batch():
  n_dev = 2
  z = _z(256, seed=3)
  ref = _apply(z)

  def shard(z):
    return hk.transform(lambda z: LFQ(D, cross_replica_axis="i")(z, True)).apply({}, None, z)
  out = jax.pmap(shard, axis_name="i", devices=jax.local_devices()[:n_dev])(z.reshape(n_dev, -1, D))
  alone = jax.pmap(lambda z: _apply(z), devices=jax.local_devices()[:n_dev])(
      z.reshape(n_dev, -1, D))  # no axis: each replica's own entropies
  for r in range(n_dev):
    np.testing.assert_array_equal(out.code_counts[r], ref.code_counts)
    np.testing.assert_allclose(out.perplexity[r], ref.perplexity, rtol=1e-5)
    # Commitment is a mean of equal-size shards; the entropy terms are global only when summed.
    np.testing.assert_allclose(np.mean(out.loss), ref.loss, rtol=1e-5)
  assert not np.allclose(np.mean(alone.loss), ref.loss, rtol=1e-3)


def test_bfloat16_inputs_give_the_float32_codes_and_every_code_is_reachable():
  z = np.random.default_rng(4).normal(size=(8192, D)).astype(np.float32)
  z16 = jnp.asarray(z, jnp.bfloat16)
  out16, out32 = _apply(z16), _apply(z16.astype(jnp.float32))
  np.testing.assert_array_equal(out16.codes, out32.codes)
  assert out16.quantized.dtype == jnp.bfloat16
  assert np.all(np.asarray(out16.code_counts) > 0)


def test_bad_arguments_are_refused():
  for kwargs, field in ((dict(embedding_dim=0), "embedding_dim"),
                        (dict(embedding_dim=D, temperature=0.0), "temperature"),
                        (dict(embedding_dim=D, entropy_weight=-1.0), "entropy_weight")):
    with pytest.raises(ValueError, match=field):
      hk.transform(lambda: LFQ(**kwargs)).init(None)
  with pytest.raises(ValueError, match="expected"):
    _apply(np.zeros((3, D + 1), np.float32))
