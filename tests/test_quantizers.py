"""The quantizers against independent NumPy references and haiku's own modules."""

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqzoo import cpu_tuning
from vqzoo.nn import VectorQuantizer, VectorQuantizerEMA, apply_reseeds, nearest_codes

K, D, BETA = 16, 4, 0.25


def bruteforce_codes(z, codebook):
  """The [N, K, D] broadcast search, in NumPy."""
  dists = np.sum((z[:, None, :] - codebook[None, :, :]) ** 2, axis=2)
  return np.argmin(dists, axis=1)


def test_matmul_search_matches_bruteforce():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(2048, 64)).astype(np.float32)
  codebook = rng.normal(size=(512, 64)).astype(np.float32)
  ours = np.asarray(jax.jit(nearest_codes)(z, codebook))
  np.testing.assert_array_equal(ours, bruteforce_codes(z, codebook))


@pytest.mark.parametrize("n", [300, 2100])  # [n, 512] distances: two-pass search, then argmin
def test_both_search_paths_pick_the_first_of_tied_codes(n):
  assert (n * 512 > cpu_tuning.TWO_PASS_MAX_DISTANCES) == (n > 2048)
  rng = np.random.default_rng(2)
  codebook = rng.normal(size=(512, 8)).astype(np.float32)
  codebook[300:] = codebook[:212]  # codes 300.. duplicate 0..211: ties must go to the lower index
  z = np.concatenate([codebook[rng.integers(0, 512, n // 2)],
                      rng.normal(size=(n - n // 2, 8)).astype(np.float32)])
  f = lambda z: VectorQuantizer(embedding_dim=8, num_embeddings=512, commitment_cost=BETA, name="q")(z, False).codes
  params, state = hk.transform_with_state(f).init(jax.random.PRNGKey(0), z)
  params = {"q": {"codebook": codebook}}
  for fn in (f, cpu_tuning.tuned(f)):
    ours = np.asarray(jax.jit(hk.transform_with_state(fn).apply)(params, state, None, z)[0])
    np.testing.assert_array_equal(ours, bruteforce_codes(z, codebook))
    assert ours.max() < 300
  np.testing.assert_array_equal(jax.jit(nearest_codes)(z, codebook),
                                bruteforce_codes(z, codebook))


def _quantizer_fn(ema=False, **kwargs):
  def f(z, is_training=True):
    cls = VectorQuantizerEMA if ema else VectorQuantizer
    return cls(embedding_dim=D, num_embeddings=K, commitment_cost=BETA, name="q",
               **kwargs)(z, is_training)
  return hk.transform_with_state(f)


def test_loss_terms_equal_numpy_formula():
  z = np.random.default_rng(1).normal(size=(3, 5, D)).astype(np.float32)
  f = _quantizer_fn()
  params, state = f.init(jax.random.PRNGKey(0), z)
  out, _ = f.apply(params, state, None, z)
  codebook = np.asarray(params["q"]["codebook"])
  flat = z.reshape(-1, D)
  e = codebook[bruteforce_codes(flat, codebook)]
  codebook_loss = np.mean((flat - e) ** 2)   # ||sg[z_e] - e||^2
  commitment = np.mean((flat - e) ** 2)      # ||z_e - sg[e]||^2 (same value, other gradient)
  np.testing.assert_allclose(out.codebook_loss, codebook_loss, rtol=1e-5)
  np.testing.assert_allclose(out.commitment_loss, commitment, rtol=1e-5)
  np.testing.assert_allclose(out.loss, codebook_loss + BETA * commitment, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out.quantized).reshape(-1, D), e, rtol=1e-6)
  counts = np.bincount(bruteforce_codes(flat, codebook), minlength=K)
  np.testing.assert_array_equal(out.code_counts, counts)
  p = counts / counts.sum()
  np.testing.assert_allclose(out.perplexity, np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))),
                             rtol=1e-5)
  chex.assert_shape(out.codes, (3, 5))
  assert out.codes.dtype == jnp.int32


def _tiny_autoencoder(straight_through: bool):
  def f(x):
    z_e = hk.Linear(D, name="encoder")(x)
    quantizer = VectorQuantizer(embedding_dim=D, num_embeddings=K, commitment_cost=BETA, name="q")
    q = quantizer(z_e, True)
    # Without the estimator, codebook[indices] goes straight to the decoder.
    z_q = q.quantized if straight_through else quantizer.lookup(q.codes)
    x_hat = hk.Linear(x.shape[-1], name="decoder")(z_q)
    return jnp.mean((x - x_hat) ** 2), q
  return hk.transform_with_state(f)


@pytest.mark.parametrize("straight_through", [True, False])
def test_reconstruction_gradient_reaches_encoder_only_with_straight_through(straight_through):
  x = np.random.default_rng(2).normal(size=(32, 8)).astype(np.float32)
  f = _tiny_autoencoder(straight_through)
  params, state = f.init(jax.random.PRNGKey(0), x)
  grads = jax.grad(lambda p: f.apply(p, state, None, x)[0][0])(params)
  encoder_grad = np.abs(np.asarray(grads["encoder"]["w"])).sum()
  if straight_through:
    assert encoder_grad > 1e-6
  else:
    assert encoder_grad == 0.0


def test_commitment_term_gives_codebook_no_gradient_and_embedding_term_gives_encoder_none():
  x = np.random.default_rng(3).normal(size=(32, 8)).astype(np.float32)
  f = _tiny_autoencoder(True)
  params, state = f.init(jax.random.PRNGKey(0), x)
  term = lambda name: jax.grad(lambda p: getattr(f.apply(p, state, None, x)[0][1], name))(params)
  commit = term("commitment_loss")
  embed = term("codebook_loss")
  assert np.abs(np.asarray(commit["q"]["codebook"])).sum() == 0.0
  assert np.abs(np.asarray(commit["encoder"]["w"])).sum() > 0.0
  assert np.abs(np.asarray(embed["encoder"]["w"])).sum() == 0.0
  assert np.abs(np.asarray(embed["q"]["codebook"])).sum() > 0.0


def test_ema_update_equals_hand_computed_ema():
  decay, eps = 0.9, 1e-5
  rng = np.random.default_rng(4)
  f = _quantizer_fn(ema=True, decay=decay, epsilon=eps)
  batches = [rng.normal(size=(64, D)).astype(np.float32) for _ in range(3)]
  _, state = f.init(jax.random.PRNGKey(0), batches[0])
  codebook = np.asarray(state["q"]["codebook"], np.float64)
  hidden_n, hidden_dw = np.zeros(K), np.zeros((K, D))
  for t, z in enumerate(batches, start=1):
    out, state = f.apply({}, state, None, z)
    codes = bruteforce_codes(z, codebook)
    np.testing.assert_array_equal(out.codes, codes)
    one_hot = np.eye(K)[codes]
    hidden_n = decay * hidden_n + (1 - decay) * one_hot.sum(0)
    hidden_dw = decay * hidden_dw + (1 - decay) * one_hot.T @ z
    n = hidden_n / (1 - decay ** t)
    dw = hidden_dw / (1 - decay ** t)
    smoothed = (n + eps) / (n.sum() + K * eps) * n.sum()
    codebook = dw / smoothed[:, None]
    np.testing.assert_allclose(state["q"]["codebook"], codebook, rtol=1e-4, atol=1e-6)
  _, unchanged = f.apply({}, state, None, batches[0], is_training=False)
  chex.assert_trees_all_equal(unchanged, state)


def test_plain_quantizer_matches_haiku():
  z = np.random.default_rng(5).normal(size=(6, 7, D)).astype(np.float32)
  ours = _quantizer_fn()
  params, state = ours.init(jax.random.PRNGKey(0), z)
  out, _ = ours.apply(params, state, None, z)
  theirs = hk.transform(lambda z: hk.nets.VectorQuantizer(D, K, BETA, name="q")(z, True))
  ref = theirs.apply({"q": {"embeddings": params["q"]["codebook"].T}}, None, z)
  np.testing.assert_array_equal(out.codes, ref["encoding_indices"])
  np.testing.assert_allclose(out.quantized, ref["quantize"], rtol=1e-6)
  np.testing.assert_allclose(out.loss, ref["loss"], rtol=1e-6)
  np.testing.assert_allclose(out.perplexity, ref["perplexity"], rtol=1e-5)
  # Same initialiser, same key: the initial codebooks agree too.
  ref_params = theirs.init(jax.random.PRNGKey(0), z)
  np.testing.assert_array_equal(ref_params["q"]["embeddings"].T, params["q"]["codebook"])


def test_ema_quantizer_matches_haiku_over_several_steps():
  decay = 0.95
  rng = np.random.default_rng(6)
  batches = [rng.normal(size=(48, D)).astype(np.float32) for _ in range(4)]
  ours = _quantizer_fn(ema=True, decay=decay)
  _, state = ours.init(jax.random.PRNGKey(0), batches[0])
  theirs = hk.transform_with_state(
      lambda z, t: hk.nets.VectorQuantizerEMA(D, K, BETA, decay, name="q")(z, t))
  _, ref_state = theirs.init(jax.random.PRNGKey(0), batches[0], True)
  ref_state = {**ref_state, "q": {"embeddings": state["q"]["codebook"].T}}
  for z in batches:
    out, state = ours.apply({}, state, None, z)
    ref, ref_state = theirs.apply({}, ref_state, None, z, True)
    np.testing.assert_array_equal(out.codes, ref["encoding_indices"])
    np.testing.assert_allclose(out.loss, ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(out.perplexity, ref["perplexity"], rtol=1e-5)
    np.testing.assert_allclose(state["q"]["codebook"], ref_state["q"]["embeddings"].T,
                               rtol=1e-5, atol=1e-6)


def test_dead_codes_are_reseeded_from_the_batch():
  z = np.random.default_rng(7).normal(size=(64, D)).astype(np.float32) + 10.0
  f = _quantizer_fn(ema=True, dead_code_threshold=0.5)
  _, state = f.init(jax.random.PRNGKey(0), z)
  out, new_state = f.apply({}, state, jax.random.PRNGKey(1), z)
  codebook = np.asarray(new_state["q"]["codebook"])
  # Far-away data: the first step uses few codes; the rest are re-seeded onto data points.
  assert np.count_nonzero(out.code_counts) < K
  dist_to_data = np.min(((codebook[:, None] - z[None]) ** 2).sum(-1), axis=1)
  unused = np.asarray(out.code_counts) == 0
  assert np.all(dist_to_data[unused] < 1e-4)  # squared distance, data ~10 away
  out2, _ = f.apply({}, new_state, jax.random.PRNGKey(2), z)
  assert np.count_nonzero(out2.code_counts) > np.count_nonzero(out.code_counts)
  # Off by default: without a threshold the same step leaves unused codes where they were.
  g = _quantizer_fn(ema=True)
  _, plain_state = g.apply({}, state, None, z)
  assert np.min(((np.asarray(plain_state["q"]["codebook"])[unused][:, None] - z[None]) ** 2
                 ).sum(-1)) > 1.0


def test_bad_quantizer_input_is_refused():
  f = _quantizer_fn()
  with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
    f.init(jax.random.PRNGKey(0), np.zeros((3, 5), np.float32))
  with pytest.raises(ValueError, match="decay"):
    hk.transform_with_state(lambda z: VectorQuantizerEMA(embedding_dim=D, num_embeddings=K, commitment_cost=BETA, decay=2.0)(z, True)).init(
        jax.random.PRNGKey(0), np.zeros((3, D), np.float32))


def test_plain_codebook_reseeds_dead_codes_through_apply_reseeds():
  z = np.random.default_rng(8).normal(size=(64, D)).astype(np.float32) + 10.0
  f = _quantizer_fn(dead_code_threshold=0.5)
  params, state = f.init(jax.random.PRNGKey(0), z)
  out, new_state = f.apply(params, state, jax.random.PRNGKey(1), z)
  unused = np.asarray(out.code_counts) == 0
  assert unused.any() and set(out.reseeds) == {"q"}
  np.testing.assert_array_equal(out.reseeds["q"]["dead"], unused)  # first batch: usage = counts
  reseeded = apply_reseeds(params, out.reseeds)["q"]["codebook"]
  np.testing.assert_array_equal(reseeded[~unused], params["q"]["codebook"][~unused])
  dist_to_data = np.min(((np.asarray(reseeded)[:, None] - z[None]) ** 2).sum(-1), axis=1)
  assert np.all(dist_to_data[unused] < 1e-4)
  np.testing.assert_array_equal(new_state["q"]["usage"][unused], 0.5)  # usage reset to threshold
  # Evaluation and a threshold of 0 re-seed nothing.
  assert f.apply(params, state, None, z, is_training=False)[0].reseeds == {}
  assert _quantizer_fn().apply(params, state, None, z)[0].reseeds == {}


@pytest.mark.parametrize("ema", [False, True])
def test_haiku_keyword_arguments_switch_by_changing_the_import(ema):
  """The same keyword call builds hk.nets' quantizer and vqzoo's, and they agree."""
  kwargs = dict(embedding_dim=D, num_embeddings=K, commitment_cost=BETA, dtype=jnp.float32,
                name="q", **({"decay": 0.9} if ema else {}))
  z = np.random.default_rng(11).normal(size=(40, D)).astype(np.float32)
  ours_cls = VectorQuantizerEMA if ema else VectorQuantizer
  theirs_cls = hk.nets.VectorQuantizerEMA if ema else hk.nets.VectorQuantizer
  ours = hk.transform_with_state(lambda z: ours_cls(**kwargs)(z, True))
  theirs = hk.transform_with_state(lambda z: theirs_cls(**kwargs)(z, is_training=True))
  params, state = ours.init(jax.random.PRNGKey(0), z)
  ref_params, ref_state = theirs.init(jax.random.PRNGKey(0), z)
  tree = ref_state if ema else ref_params
  np.testing.assert_array_equal(tree["q"]["embeddings"].T,
                                (state if ema else params)["q"]["codebook"])
  out, _ = ours.apply(params, state, None, z)
  ref, _ = theirs.apply(ref_params, ref_state, None, z)
  np.testing.assert_array_equal(out.codes, ref["encoding_indices"])
  np.testing.assert_allclose(out.loss, ref["loss"], rtol=1e-5)


@pytest.mark.parametrize("ema", [False, True])
def test_positional_order_is_haikus(ema):
  """``(embedding_dim, num_embeddings, commitment_cost, ...)`` as hk.nets; K != D, so a swap shows."""
  z = np.random.default_rng(12).normal(size=(40, D)).astype(np.float32)
  ours_cls = VectorQuantizerEMA if ema else VectorQuantizer
  theirs_cls = hk.nets.VectorQuantizerEMA if ema else hk.nets.VectorQuantizer
  args = (D, K, BETA, 0.9, 1e-5, jnp.float32) if ema else (D, K, BETA, jnp.float32, "q")
  ours = hk.transform_with_state(lambda z: ours_cls(*args)(z, True))
  theirs = hk.transform_with_state(lambda z: theirs_cls(*args)(z, is_training=True))
  params, state = ours.init(jax.random.PRNGKey(0), z)
  ref_params, ref_state = theirs.init(jax.random.PRNGKey(0), z)
  (module,) = (state if ema else params)
  codebook = (state if ema else params)[module]["codebook"]
  chex.assert_shape(codebook, (K, D))
  ref_tree = ref_state if ema else ref_params
  (ref_module,) = [m for m in ref_tree if "embeddings" in ref_tree[m]]
  np.testing.assert_array_equal(ref_tree[ref_module]["embeddings"].T, codebook)
  out, new_state = ours.apply(params, state, None, z)
  ref, new_ref_state = theirs.apply(ref_params, ref_state, None, z)
  np.testing.assert_array_equal(out.codes, ref["encoding_indices"])
  np.testing.assert_allclose(out.loss, ref["loss"], rtol=1e-5)
  if ema:
    np.testing.assert_allclose(new_state[module]["codebook"],
                               new_ref_state[ref_module]["embeddings"].T, rtol=1e-5, atol=1e-6)
  else:
    assert module == "q"


def test_plain_quantizer_without_reseeding_runs_under_a_plain_transform():
  """No state unless re-seeding needs it: ``hk.transform`` (not ``_with_state``) works."""
  x = np.random.default_rng(13).normal(size=(32, 8)).astype(np.float32)

  def forward(x, is_training):
    z_e = hk.Linear(D, name="encoder")(x)
    q = VectorQuantizer(D, K, BETA, name="q")(z_e, is_training)
    return jnp.mean((x - hk.Linear(8, name="decoder")(q.quantized)) ** 2) + q.loss, q

  f = hk.transform(forward)
  for is_training in (True, False):
    params = f.init(jax.random.PRNGKey(0), x, is_training)
    assert set(params) == {"encoder", "decoder", "q"}
    loss, q = f.apply(params, None, x, is_training)
    chex.assert_shape(q.codes, (32,))
    assert q.reseeds == {} and np.isfinite(loss)
  grads = jax.grad(lambda p: f.apply(p, None, x, True)[0])(params)
  assert np.abs(np.asarray(grads["q"]["codebook"])).sum() > 0
  assert np.abs(np.asarray(grads["encoder"]["w"])).sum() > 0
  # Re-seeding keeps its usage statistics in state, so it needs hk.transform_with_state.
  reseeding = lambda z: VectorQuantizer(D, K, BETA, dead_code_threshold=0.5)(z, True)
  _, state = hk.transform_with_state(reseeding).init(jax.random.PRNGKey(0), x[:, :D])
  assert set(state["vector_quantizer"]) == {"usage", "usage_updates"}
  with pytest.raises(ValueError, match="transform_with_state"):
    hk.transform(reseeding).init(jax.random.PRNGKey(0), x[:, :D])
