"""The codebook options of VectorQuantizer/VectorQuantizerEMA: cosine codes, a low-dimensional
lookup space, k-means initialisation and the rotation trick, each in a user's hk.transform."""

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqzoo.nn import VectorQuantizer, VectorQuantizerEMA, apply_reseeds
from vqzoo.nn.quantizers import kmeans, rotation_trick

K, D, BETA = 16, 8, 0.25


def _q(ema=False, axis=None, **options):
  cls = VectorQuantizerEMA if ema else VectorQuantizer
  return hk.transform_with_state(
      lambda z, t=False: cls(D, K, BETA, cross_replica_axis=axis, name="q", **options)(z, t))


def _z(n=256, seed=0):
  return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("ema", [False, True])
def test_cosine_codes_are_the_most_similar_direction(ema):
  z = _z() * np.random.default_rng(1).uniform(0.1, 10, (256, 1)).astype(np.float32)
  model = _q(ema, cosine=True)
  params, state = model.init(jax.random.PRNGKey(0), z)
  out, _ = model.apply(params, state, None, z)
  book = (state if ema else params)["q"]["codebook"]
  np.testing.assert_array_equal(out.codes, np.argmax(_unit(z) @ _unit(book).T, axis=1))
  np.testing.assert_allclose(out.quantized, _unit(book)[out.codes], atol=1e-6)
  np.testing.assert_allclose(out.commitment_loss,
                             np.mean((_unit(z) - _unit(book)[out.codes]) ** 2), rtol=1e-5)
  plain, _ = _q(ema).apply(params, state, None, z)
  assert not np.array_equal(plain.codes, out.codes)  # the norms of z no longer matter


def test_lookup_space_projects_in_searches_and_projects_out():
  z = _z()
  model = _q(lookup_dim=3)
  params, state = model.init(jax.random.PRNGKey(0), z)
  chex.assert_shape([params["q"]["codebook"], params["q/~/project_in"]["w"],
                     params["q/~/project_out"]["w"]], [(K, 3), (D, 3), (3, D)])
  out, _ = model.apply(params, state, None, z)
  p_in, p_out = params["q/~/project_in"], params["q/~/project_out"]
  low = z @ p_in["w"] + p_in["b"]
  book = params["q"]["codebook"]
  want = np.argmin(((low[:, None] - book[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_array_equal(out.codes, want)
  np.testing.assert_allclose(out.quantized, book[want] @ p_out["w"] + p_out["b"], atol=1e-5)
  chex.assert_shape(out.quantized, z.shape)
  looked_up, _ = hk.transform_with_state(
      lambda c: VectorQuantizer(D, K, BETA, name="q", lookup_dim=3).lookup(c)).apply(
          params, state, None, out.codes)
  np.testing.assert_allclose(looked_up, out.quantized, atol=1e-6)
  grads = jax.grad(lambda p: jnp.sum(model.apply(p, state, None, z)[0].quantized ** 2)
                   + model.apply(p, state, None, z)[0].loss)(params)
  for module in ("q", "q/~/project_in", "q/~/project_out"):
    assert np.any(np.asarray(grads[module]["w" if module != "q" else "codebook"]) != 0), module


def _clustered(n=512, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(scale=5.0, size=(K, D))
  return (centres[rng.integers(0, K, n)] + 0.1 * rng.normal(size=(n, D))).astype(np.float32)


@pytest.mark.parametrize("ema", [False, True])
def test_kmeans_sets_the_codebook_on_the_first_training_batch_only(ema):
  z = _clustered()
  model = _q(ema, kmeans_init=True)
  params, state = model.init(jax.random.PRNGKey(0), z, True)
  assert int(state["q"]["kmeans_done"]) == 0
  before, _ = model.apply(params, state, None, z)
  out, state1 = model.apply(params, state, jax.random.PRNGKey(1), z, True)
  assert int(state1["q"]["kmeans_done"]) == 1
  if ema:
    book = state1["q"]["codebook"]
  else:
    assert bool(np.all(out.reseeds["q"]["dead"]))
    params = apply_reseeds(params, out.reseeds)
    book = params["q"]["codebook"]
  err = lambda book: np.mean(np.min(((z[:, None] - book[None]) ** 2).sum(-1), axis=1))
  assert err(book) < 0.25 * float(before.commitment_loss) * D  # the initial codebook's error
  again, state2 = model.apply(params, state1, jax.random.PRNGKey(2), z + (1.0 if ema else 0.0),
                              True)
  if not ema:
    assert not np.any(again.reseeds.get("q", {"dead": np.zeros(K, bool)})["dead"])
    np.testing.assert_array_equal(again.code_counts, out.code_counts)  # same codebook used
  else:  # an EMA step, not a fresh k-means of the shifted batch
    assert err(state2["q"]["codebook"]) > err(book)
  frozen, frozen_state = model.apply(params, state, None, z, False)
  assert int(frozen_state["q"]["kmeans_done"]) == 0  # evaluation never runs it


def test_kmeans_is_lloyds_algorithm():
  z = _clustered(256, seed=4)
  got = kmeans(jnp.asarray(z), K, 5, None)
  centroids = z[(np.arange(K) * len(z)) // K].astype(np.float64)
  for _ in range(5):
    codes = np.argmin(((z[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    centroids = np.stack([z[codes == k].mean(0) if np.any(codes == k) else centroids[k]
                          for k in range(K)])
  np.testing.assert_allclose(got, centroids, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ema", [False, True])
def test_kmeans_under_pmap_equals_one_device_on_the_whole_batch(ema):
  n_dev = 2
  z = _clustered(seed=3)
  ref_model = _q(ema, kmeans_init=True)
  params, state = ref_model.init(jax.random.PRNGKey(0), z, True)
  ref, ref_state = ref_model.apply(params, state, jax.random.PRNGKey(5), z, True)
  rep = lambda t: jax.tree_util.tree_map(lambda x: np.broadcast_to(x, (n_dev, *x.shape)), t)
  fn = jax.pmap(_q(ema, "i", kmeans_init=True).apply, axis_name="i", in_axes=(0, 0, None, 0, None),
                static_broadcasted_argnums=4, devices=jax.local_devices()[:n_dev])
  out, new_state = fn(rep(params), rep(state), jax.random.PRNGKey(5), z.reshape(n_dev, -1, D), True)
  for r in range(n_dev):
    if ema:
      np.testing.assert_allclose(new_state["q"]["codebook"][r], ref_state["q"]["codebook"],
                                 rtol=1e-5, atol=1e-5)
    else:
      np.testing.assert_allclose(out.reseeds["q"]["fresh"][r], ref.reseeds["q"]["fresh"],
                                 rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.code_counts[r], ref.code_counts)


def test_rotation_trick_value_is_e_and_gradient_is_the_scaled_rotation():
  rng = np.random.default_rng(0)
  z, e, g = (rng.normal(size=(5, D)).astype(np.float32) for _ in range(3))
  value, vjp = jax.vjp(lambda z: rotation_trick(z, e), z)
  np.testing.assert_allclose(value, e, atol=1e-6)
  (grad,) = vjp(g)
  for i in range(5):
    u, v = _unit(z[i]), _unit(e[i])
    w = _unit(u + v)
    rot = np.eye(D) - 2 * np.outer(w, w) + 2 * np.outer(v, u)
    np.testing.assert_allclose(rot @ u, v, atol=1e-5)
    scale = np.linalg.norm(e[i]) / np.linalg.norm(z[i])
    np.testing.assert_allclose(grad[i], scale * rot.T @ g[i], rtol=1e-4, atol=1e-5)


def test_rotation_estimator_changes_only_the_gradient():
  z = _z()
  rot, st = _q(gradient_estimator="rotation"), _q()
  params, state = st.init(jax.random.PRNGKey(0), z)
  a, _ = rot.apply(params, state, None, z)
  b, _ = st.apply(params, state, None, z)
  np.testing.assert_allclose(a.quantized, b.quantized, atol=1e-6)
  np.testing.assert_array_equal(a.codes, b.codes)
  np.testing.assert_allclose(a.loss, b.loss)
  grad = lambda m: jax.grad(lambda z: jnp.sum(m.apply(params, state, None, z)[0].quantized
                                              * np.arange(D)))(z)
  np.testing.assert_allclose(grad(st), np.broadcast_to(np.arange(D), z.shape))
  assert not np.allclose(grad(rot), grad(st), atol=1e-3)


@pytest.mark.parametrize("options", [dict(cosine=True), dict(lookup_dim=3),
                                     dict(cosine=True, lookup_dim=3)])
def test_bfloat16_inputs_give_the_float32_codes(options):
  z = jnp.asarray(_z(1024, seed=7), jnp.bfloat16)
  model = _q(**options)
  params, state = model.init(jax.random.PRNGKey(0), z.astype(jnp.float32))
  out16, _ = model.apply(params, state, None, z)
  out32, _ = model.apply(params, state, None, z.astype(jnp.float32))
  np.testing.assert_array_equal(out16.codes, out32.codes)
  assert out16.quantized.dtype == jnp.bfloat16


def test_bad_options_are_refused():
  for options, field in ((dict(lookup_dim=0), "lookup_dim"),
                         (dict(gradient_estimator="gumbel"), "gradient_estimator"),
                         (dict(kmeans_iters=-1), "kmeans_iters")):
    with pytest.raises(ValueError, match=field):
      _q(**options).init(jax.random.PRNGKey(0), _z(4))
