"""Residual VQ: stages on residuals, codes [..., N], decoding at any depth, quantizer dropout,
statistics over replicas and bfloat16 inputs."""

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqzoo.nn import QuantizerOutput, ResidualVQ, nearest_codes

N, K, D = 3, 16, 4


def _rvq(ema=False, **kwargs):
  def f(z, is_training=False, depth=None):
    q = ResidualVQ(D, K, N, 0.25, ema=ema, name="rvq", **kwargs)
    return q(z, is_training, depth)
  return hk.transform_with_state(f)


def _z(n=256, seed=0, scale=1.0):
  return (np.random.default_rng(seed).normal(size=(n, D)) * scale).astype(np.float32)


@pytest.mark.parametrize("ema", [False, True])
def test_codes_are_greedy_nearest_codes_of_each_residual(ema):
  z = _z().reshape(8, 32, D)
  model = _rvq(ema)
  params, state = model.init(jax.random.PRNGKey(0), z)
  out, _ = model.apply(params, state, None, z)
  assert isinstance(out, QuantizerOutput)
  chex.assert_shape([out.codes, out.quantized, out.code_counts], [(8, 32, N), z.shape, (N, K)])
  books = np.stack([(params if not ema else state)[f"rvq/~/stage_{i}"]["codebook"]
                    for i in range(N)])
  residual = z.reshape(-1, D)
  total = np.zeros_like(residual)
  for i in range(N):
    want = np.asarray(nearest_codes(jnp.asarray(residual), jnp.asarray(books[i])))
    np.testing.assert_array_equal(out.codes[..., i].ravel(), want)
    np.testing.assert_array_equal(out.code_counts[i], np.bincount(want, minlength=K))
    residual = residual - books[i][want]
    total = total + books[i][want]
  np.testing.assert_allclose(out.quantized.reshape(-1, D), total, atol=1e-5)
  # lookup of a prefix is the depth-n decoding; __call__ at depth n gives the same vectors.
  for depth in range(1, N + 1):
    decoded = hk.transform_with_state(
        lambda c: ResidualVQ(D, K, N, 0.25, ema=ema, name="rvq").lookup(c)).apply(
            params, state, None, out.codes[..., :depth])[0]
    at_depth, _ = model.apply(params, state, None, z, False, depth)
    np.testing.assert_allclose(decoded, at_depth.quantized, atol=1e-5)
    np.testing.assert_array_equal(at_depth.codes, out.codes)  # later stages still encoded
  errors = [np.mean((model.apply(params, state, None, z, False, d)[0].quantized - z) ** 2)
            for d in range(1, N + 1)]
  assert errors[0] > errors[1] > errors[2]  # each stage removes some of the error


def test_quantizer_dropout_draws_depths_from_the_rng_and_only_in_training():
  z = _z(64)
  model = _rvq(quantizer_dropout=1.0)
  params, state = model.init(jax.random.PRNGKey(0), z, True)
  full, _ = model.apply(params, state, None, z)
  per_depth = [model.apply(params, state, None, z, False, d)[0].quantized for d in (1, 2, 3)]
  seen = set()
  for seed in range(24):
    out, _ = model.apply(params, state, jax.random.PRNGKey(seed), z, True)
    depth = [d for d, q in zip((1, 2, 3), per_depth) if np.allclose(out.quantized, q)]
    assert len(depth) == 1
    seen.add(depth[0])
    again, _ = model.apply(params, state, jax.random.PRNGKey(seed), z, True)
    np.testing.assert_array_equal(again.quantized, out.quantized)  # the rng decides
    np.testing.assert_array_equal(out.codes, full.codes)
  assert seen == {1, 2, 3}
  never, _ = model.apply(params, state, None, z, False)
  np.testing.assert_array_equal(never.quantized, full.quantized)


def test_gradients_reach_the_encoder_once_and_every_codebook():
  z = _z(64)
  model = _rvq()
  params, state = model.init(jax.random.PRNGKey(0), z)

  def loss(params, z):
    out, _ = model.apply(params, state, None, z)
    return jnp.sum(out.quantized) + out.loss
  g_params, g_z = jax.grad(loss, argnums=(0, 1))(params, z)
  st = jax.grad(lambda z: jnp.sum(model.apply(params, state, None, z)[0].quantized))(z)
  np.testing.assert_allclose(st, np.ones_like(z))  # straight-through on the sum: identity
  for i in range(N):
    assert np.any(np.asarray(g_params[f"rvq/~/stage_{i}"]["codebook"]) != 0)
  assert np.all(np.isfinite(g_z))


def test_rotation_estimator_on_the_sum_changes_only_the_gradient():
  z = _z(64)
  st, rot = _rvq(), _rvq(gradient_estimator="rotation")
  params, state = st.init(jax.random.PRNGKey(0), z)
  a, _ = st.apply(params, state, None, z)
  b, _ = rot.apply(params, state, None, z)
  np.testing.assert_allclose(a.quantized, b.quantized, atol=1e-6)
  np.testing.assert_array_equal(a.codes, b.codes)
  g = lambda m: jax.grad(lambda z: jnp.sum(m.apply(params, state, None, z)[0].quantized
                                           * np.arange(D)))(z)
  rotated = g(rot)
  assert not np.allclose(rotated, g(st), atol=1e-3)
  # The scaled rotation maps z onto e, so its transpose keeps the norm ratio ||e|| / ||z||.
  np.testing.assert_allclose(np.linalg.norm(rotated, axis=1),
                             np.linalg.norm(a.quantized, axis=1) / np.linalg.norm(z, axis=1)
                             * np.linalg.norm(np.arange(D)), rtol=1e-4)


def test_ema_stages_in_a_user_transform_under_pmap_equal_one_device_on_the_whole_batch():
  n_dev = 2
  z = _z(128, seed=1)
  model = _rvq(ema=True, decay=0.9)
  _, state = model.init(jax.random.PRNGKey(0), z, True)
  ref, ref_state = model.apply({}, state, None, z, True)

  def shard(z, state):
    f = lambda z: ResidualVQ(D, K, N, 0.25, ema=True, decay=0.9, cross_replica_axis="i",
                             name="rvq")(z, True)
    return hk.transform_with_state(f).apply({}, state, None, z)
  rep = jax.tree_util.tree_map(lambda x: np.broadcast_to(x, (n_dev, *x.shape)), state)
  out, new_state = jax.pmap(shard, axis_name="i", devices=jax.local_devices()[:n_dev])(
      z.reshape(n_dev, -1, D), rep)
  for r in range(n_dev):
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: x[r], new_state), ref_state,
                                rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.code_counts[r], ref.code_counts)
    np.testing.assert_allclose(out.perplexity[r], ref.perplexity, rtol=1e-5)
  np.testing.assert_array_equal(out.codes.reshape(ref.codes.shape), ref.codes)


def test_bfloat16_inputs_give_the_float32_codes():
  z = jnp.asarray(_z(512, seed=2), jnp.bfloat16)
  model = _rvq()
  params, state = model.init(jax.random.PRNGKey(0), z.astype(jnp.float32))
  out16, _ = model.apply(params, state, None, z)
  out32, _ = model.apply(params, state, None, z.astype(jnp.float32))
  np.testing.assert_array_equal(out16.codes, out32.codes)  # residuals are float32 inside
  assert out16.quantized.dtype == jnp.bfloat16


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="num_stages"):
    hk.transform(lambda: ResidualVQ(D, K, 0, 0.25)).init(None)
  with pytest.raises(ValueError, match="gradient_estimator"):
    hk.transform(lambda: ResidualVQ(D, K, N, 0.25, gradient_estimator="gumbel")).init(None)
  with pytest.raises(ValueError, match="cosine"):
    hk.transform(lambda: ResidualVQ(D, K, N, 0.25, cosine=True)).init(None)
  with pytest.raises(ValueError, match="depth"):
    _rvq().init(jax.random.PRNGKey(0), _z(4), False, 4)
  with pytest.raises(ValueError, match="residual codes"):
    hk.transform(lambda c: ResidualVQ(D, K, N, 0.25).lookup(c)).init(
        None, jnp.zeros((2, N + 1), jnp.int32))
