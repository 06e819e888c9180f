"""Priors over codes: PixelCNN causality by gradients, conditioning, sampling, bits, config."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqzoo.configs import ModelConfig, PriorConfig, QuantizerConfig
from vqzoo.nn import (CategoricalPrior, GatedPixelCNN, build_prior, make_prior, prior_bits,
                      sample_codes)

K, H, W = 8, 5, 5
SMALL = dict(kind="pixelcnn", num_embeddings=K, latent_shape=(H, W), hidden=16, num_layers=3,
             kernel_size=3)


@functools.lru_cache(maxsize=None)
def logits_fn(config):
  """The jitted logits ``apply`` of a config, compiled once per config and shape."""
  return jax.jit(build_prior(config).apply)


@functools.lru_cache(maxsize=None)
def sampler(config):
  return sample_codes(config)


def init_params(config, batch=2, seed=0):
  """Random params of ``config``'s prior, in NumPy (compiling Haiku's initializers costs seconds
  on a busy CPU; ``jax.eval_shape`` still traces them for the structure).

  Weights are scaled by ``2 / sqrt(fan_in)``; biases are random too (zero biases would leave the
  first position's logits all equal: exact ties, which only argmax breaks).
  """
  codes = jnp.zeros((batch, *config.latent_shape), jnp.int32)
  labels = jnp.zeros((batch,), jnp.int32) if config.num_classes else None
  shapes = jax.eval_shape(build_prior(config).init, jax.random.PRNGKey(seed), codes, labels)
  rng = np.random.default_rng(seed)

  def fill(leaf):
    scale = 2 / np.sqrt(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.1
    return jnp.asarray(scale * rng.normal(size=leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map(fill, shapes)


@pytest.fixture(scope="module")
def pixelcnn():
  config = PriorConfig(**SMALL)
  return config, init_params(config)


@pytest.fixture(scope="module")
def conditional_pixelcnn():
  config = PriorConfig(**SMALL, num_classes=3)
  return config, init_params(config)


def dependencies(config, params, seed=0):
  """``[P, P]`` bool: entry ``(i, j)`` says the logits at raster position i have a non-zero
  gradient w.r.t. the (relaxed one-hot) input at position j."""
  num_classes = config.num_classes
  fn = lambda x: build_prior(config).apply(
      params, None, x, jnp.zeros((1,), jnp.int32) if num_classes else None)
  x = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(seed), (1, H, W, K)), axis=-1)
  jacobian = jax.jit(jax.jacrev(fn))(x)  # [1, H, W, K, 1, H, W, K]
  assert jacobian.shape == (1, H, W, K, 1, H, W, K)
  magnitude = np.abs(np.asarray(jacobian)).sum(axis=(0, 3, 4, 7))  # [H, W, H, W]
  return magnitude.reshape(H * W, H * W) > 0


def test_pixelcnn_logits_depend_on_exactly_the_earlier_positions(pixelcnn):
  config, params = pixelcnn
  dep = dependencies(config, params)
  # Never on the position itself or a later one; with 3 layers of kernel 3, on every earlier one.
  np.testing.assert_array_equal(dep, np.tril(np.ones_like(dep), k=-1))
  at = lambda r, c: r * W + c
  for r, c in [(0, 0), (0, 1), (0, W - 1), (1, 0), (2, 2), (3, W - 1), (H - 1, W - 1)]:
    i = at(r, c)
    assert not dep[i, i:].any(), (r, c)
    if i:
      assert dep[i, :i].any(), (r, c)
    if r and c + 1 < W:  # no blind spot: the pixel up-right
      assert dep[i, at(r - 1, c + 1)], (r, c)
    if c:
      assert dep[i, at(r, c - 1)], (r, c)


def test_pixelcnn_is_causal_for_other_shapes():
  config = PriorConfig(**{**SMALL, "kernel_size": 5, "num_layers": 0}, num_classes=2)
  dep = dependencies(config, init_params(config))
  assert not np.triu(dep).any()
  # (r, c) still sees its left neighbour and the pixel up-right.
  assert dep[W + 1, W] and dep[W + 1, 2]


def test_pixelcnn_parameters():
  config = PriorConfig(**{**SMALL, "num_layers": 1}, num_classes=2)
  shapes = jax.eval_shape(build_prior(config).init, jax.random.PRNGKey(0),
                          jnp.zeros((2, H, W), jnp.int32), jnp.zeros((2,), jnp.int32))
  shapes = {f"{m}/{n}": tuple(x.shape) for m, ps in shapes.items() for n, x in ps.items()}
  c = 16
  assert shapes["gated_pixel_cnn/embeddings"] == (K, c)
  assert shapes["gated_pixel_cnn/label_embed/embeddings"] == (2, c)
  for layer in ("layer_a", "layer_0"):
    assert shapes[f"gated_pixel_cnn/{layer}/vertical/w"] == (2, 3, c, 2 * c)
    assert shapes[f"gated_pixel_cnn/{layer}/horizontal/w"] == (1, 2, c, 2 * c)
    assert shapes[f"gated_pixel_cnn/{layer}/cond_horizontal/w"] == (c, 2 * c)
  assert shapes["gated_pixel_cnn/layer_a/cond_vertical/w"] == (c, 2 * c)
  # The last layer's vertical output is read by nobody: no parameters for it.
  assert "gated_pixel_cnn/layer_0/cond_vertical/w" not in shapes
  assert shapes["gated_pixel_cnn/head_logits/w"] == (1, 1, c, K)


def test_one_hot_input_equals_integer_codes(pixelcnn):
  config, params = pixelcnn
  codes = jax.random.randint(jax.random.PRNGKey(1), (2, H, W), 0, K)
  apply = logits_fn(config)
  np.testing.assert_allclose(apply(params, None, jax.nn.one_hot(codes, K)),
                             apply(params, None, codes), rtol=1e-5, atol=1e-5)


def test_class_conditioning_changes_the_logits(conditional_pixelcnn):
  config, params = conditional_pixelcnn
  codes = jax.random.randint(jax.random.PRNGKey(1), (1, H, W), 0, K)
  apply = build_prior(config).apply
  zero = jax.jit(apply)(params, None, codes, jnp.array([0]))
  one = jax.jit(apply)(params, None, codes, jnp.array([1]))
  assert zero.shape == (1, H, W, K)
  assert np.abs(np.asarray(zero - one)).min() > 0  # every position, also the first
  with pytest.raises(ValueError, match="labels"):
    apply(params, None, codes)
  with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\)"):
    apply(params, None, codes, jnp.array([3]))


def test_unconditional_priors_refuse_labels(pixelcnn):
  config, params = pixelcnn
  codes = jnp.zeros((1, H, W), jnp.int32)
  with pytest.raises(ValueError, match="labels.*unconditional"):
    build_prior(config).apply(params, None, codes, jnp.array([0]))
  with pytest.raises(ValueError, match="labels.*unconditional"):
    sample_codes(config)(params, jax.random.PRNGKey(0), 1, jnp.array([0]))
  categorical = PriorConfig(kind="categorical", num_embeddings=K)
  with pytest.raises(ValueError, match="labels.*unconditional"):
    prior_bits(categorical).init(None, jnp.zeros((1,), jnp.int32), jnp.array([0]))


def test_codes_out_of_range_are_refused(pixelcnn):
  config, params = pixelcnn
  with pytest.raises(ValueError, match="codes"):
    prior_bits(config).apply(params, None, jnp.full((1, H, W), K, jnp.int32))


def greedy_reference(config, params, labels=None, num_samples=2):
  """Fills positions one at a time in Python, each with the argmax of its logits."""
  apply = logits_fn(config)
  codes = np.zeros((num_samples, *config.latent_shape), np.int32)
  flat = codes.reshape(num_samples, -1)
  for i in range(flat.shape[1]):
    logits = np.asarray(apply(params, None, jnp.asarray(codes), labels))
    flat[:, i] = logits.reshape(num_samples, flat.shape[1], -1)[:, i].argmax(-1)
  return codes


@pytest.mark.parametrize("conditional", [False, True])
def test_sampling_at_temperature_zero_is_greedy(conditional, pixelcnn, conditional_pixelcnn):
  config, params = conditional_pixelcnn if conditional else pixelcnn
  labels = jnp.array([0, 2], jnp.int32) if conditional else None
  expected = greedy_reference(config, params, labels)
  sample = sampler(config)
  for temperature in (0.0, 1e-6):
    codes = sample(params, jax.random.PRNGKey(3), 2, labels, temperature)
    np.testing.assert_array_equal(codes, expected)
  assert len(np.unique(expected)) > 1  # not a degenerate grid


@pytest.mark.parametrize("conditional", [False, True])
def test_row_logits_from_the_vertical_terms_equal_the_whole_networks(conditional, pixelcnn,
                                                                     conditional_pixelcnn):
  """The sampler's two halves, called in one user-written transform, give every row's logits."""
  config, params = conditional_pixelcnn if conditional else pixelcnn
  labels = jnp.array([0, 2], jnp.int32) if conditional else None
  codes = jax.random.randint(jax.random.PRNGKey(5), (2, H, W), 0, K)

  def rows(codes, labels):
    prior = make_prior(config)
    terms = prior.vertical_terms(codes, labels)
    assert len(terms) == config.num_layers + 1
    return [prior.row_logits(codes[:, r:r + 1], [t[:, r:r + 1] for t in terms], labels)
            for r in range(H)]

  by_row = jnp.concatenate(hk.transform(rows).apply(params, None, codes, labels), axis=1)
  whole = logits_fn(config)(params, None, codes, labels)
  np.testing.assert_allclose(by_row, whole, rtol=1e-5, atol=1e-5)


def test_sampling_draws_what_the_whole_network_draws_position_by_position(pixelcnn):
  """Row-by-row sampling is the plain loop (whole network, ``fold_in(rng, i)`` at position i)."""
  config, params = pixelcnn
  rng, num = jax.random.PRNGKey(7), 3
  codes = np.zeros((num, H, W), np.int32)
  for i in range(H * W):
    logits = np.asarray(logits_fn(config)(params, None, jnp.asarray(codes), None))
    drawn = jax.random.categorical(jax.random.fold_in(rng, i),
                                   jnp.asarray(logits.reshape(num, H * W, K)[:, i]) / 0.7)
    codes.reshape(num, -1)[:, i] = np.asarray(drawn)
  np.testing.assert_array_equal(sampler(config)(params, rng, num, temperature=0.7), codes)


def test_sampling_is_seeded_in_range_and_jit_compatible(pixelcnn):
  config, params = pixelcnn
  sample = sampler(config)
  a = sample(params, jax.random.PRNGKey(0), 4)
  b = sample(params, jax.random.PRNGKey(0), 4)
  c = sample(params, jax.random.PRNGKey(1), 4)
  assert a.shape == (4, H, W) and a.dtype == jnp.int32
  assert int(a.min()) >= 0 and int(a.max()) < K
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))
  # Traced temperature and rng inside the caller's jit, num_samples static.
  jitted = jax.jit(sample, static_argnames="num_samples")
  np.testing.assert_array_equal(
      jitted(params, jax.random.PRNGKey(0), num_samples=4, temperature=1.0), a)
  greedy = jitted(params, jax.random.PRNGKey(0), num_samples=2, temperature=0.0)
  np.testing.assert_array_equal(greedy, greedy_reference(config, params))
  for bad, match in [(dict(num_samples=0), "num_samples"),
                     (dict(num_samples=2, temperature=-1.0), "temperature")]:
    with pytest.raises(ValueError, match=match):
      sample(params, jax.random.PRNGKey(0), **bad)


def test_prior_bits_of_a_pixelcnn_sum_its_cross_entropies(pixelcnn):
  config, params = pixelcnn
  codes = jax.random.randint(jax.random.PRNGKey(2), (3, H, W), 0, K)
  logits = np.asarray(logits_fn(config)(params, None, codes), np.float64)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  picked = np.take_along_axis(log_p, np.asarray(codes)[..., None], axis=-1)[..., 0]
  expected = -picked.sum(axis=(1, 2)) / np.log(2)
  bits = jax.jit(prior_bits(config).apply)(params, None, codes)
  assert bits.shape == (3,)
  np.testing.assert_allclose(bits, expected, rtol=1e-5)


def neg_log2_softmax(logits):
  logits = np.asarray(logits, np.float64)
  return -(logits - np.log(np.exp(logits).sum(-1, keepdims=True))) / np.log(2)


def test_prior_bits_of_a_hand_set_categorical_prior():
  config = PriorConfig(kind="categorical", num_embeddings=4)
  codes = jnp.array([0, 3, 3, 1], jnp.int32)
  transformed = prior_bits(config)
  params = transformed.init(None, codes)
  assert jax.tree_util.tree_map(jnp.shape, params) == {"categorical_prior": {"logits": (4,)}}
  # Zeros at init: uniform, 2 bits each.
  np.testing.assert_allclose(transformed.apply(params, None, codes), [2.0] * 4, rtol=1e-6)
  logits = np.log(np.array([0.5, 0.25, 0.125, 0.125], np.float32)) + 1.7
  params = {"categorical_prior": {"logits": jnp.asarray(logits)}}
  np.testing.assert_allclose(transformed.apply(params, None, codes), [1.0, 3.0, 3.0, 2.0],
                             rtol=1e-5)
  np.testing.assert_allclose(transformed.apply(params, None, codes),
                             neg_log2_softmax(logits)[np.asarray(codes)], rtol=1e-5)


def test_class_conditional_categorical_prior():
  config = PriorConfig(kind="categorical", num_embeddings=3, num_classes=2)
  logits = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]], np.float32)
  params = {"categorical_prior": {"logits": jnp.asarray(logits)}}
  codes, labels = jnp.array([2, 2, 0], jnp.int32), jnp.array([0, 1, 1], jnp.int32)
  bits = prior_bits(config).apply(params, None, codes, labels)
  np.testing.assert_allclose(bits, neg_log2_softmax(logits)[[0, 1, 1], [2, 2, 0]], rtol=1e-5)
  with pytest.raises(ValueError, match="labels"):
    prior_bits(config).apply(params, None, codes)
  sample = sampler(config)
  greedy = sample(params, jax.random.PRNGKey(0), 3, labels, 0.0)
  assert greedy.shape == (3,) and greedy.dtype == jnp.int32
  np.testing.assert_array_equal(greedy, [2, 0, 0])
  drawn = sample(params, jax.random.PRNGKey(0), 3, labels)
  np.testing.assert_array_equal(drawn, sample(params, jax.random.PRNGKey(0), 3, labels))
  assert int(drawn.min()) >= 0 and int(drawn.max()) < 3


def test_categorical_samples_follow_the_distribution():
  config = PriorConfig(kind="categorical", num_embeddings=4)
  probs = np.array([0.1, 0.2, 0.3, 0.4])
  params = {"categorical_prior": {"logits": jnp.log(jnp.asarray(probs, jnp.float32))}}
  codes = np.asarray(sample_codes(config)(params, jax.random.PRNGKey(0), 20000))
  np.testing.assert_allclose(np.bincount(codes, minlength=4) / codes.size, probs, atol=0.02)


def test_make_prior_builds_the_configured_module():
  def kinds(config):
    return type(make_prior(config)).__name__
  f = hk.transform(lambda: (kinds(PriorConfig(**SMALL)),
                            kinds(PriorConfig(kind="categorical", num_embeddings=K))))
  assert f.apply({}, None) == ("GatedPixelCNN", "CategoricalPrior")
  assert issubclass(GatedPixelCNN, hk.Module) and issubclass(CategoricalPrior, hk.Module)
  with pytest.raises(TypeError, match="PriorConfig"):
    hk.transform(lambda: make_prior(SMALL)).init(None)


# ----------------------------------------------------------------------------- PriorConfig


def test_prior_config_defaults_and_round_trip():
  assert PriorConfig().latent_shape == (7, 7)
  assert PriorConfig(kind="categorical").latent_shape == ()
  for config in (PriorConfig(), PriorConfig(**SMALL, num_classes=10),
                 PriorConfig(kind="categorical", num_embeddings=512, num_classes=2)):
    data = config.to_dict()
    assert isinstance(data["latent_shape"], list)
    assert PriorConfig.from_dict(data) == config
  assert PriorConfig(latent_shape=[4, 6]).latent_shape == (4, 6)


def test_prior_config_for_model():
  conv = ModelConfig(arch="conv", image_shape=(32, 32, 3), quantizer=QuantizerConfig(64, 8))
  assert PriorConfig.for_model(conv, num_classes=10) == PriorConfig(
      kind="pixelcnn", num_embeddings=64, latent_shape=(8, 8), num_classes=10)
  assert PriorConfig.for_model(ModelConfig()) == PriorConfig(kind="categorical",
                                                              num_embeddings=512)


@pytest.mark.parametrize("kwargs, field", [
    (dict(kind="transformer"), "prior.kind"),
    (dict(num_embeddings=0), "prior.num_embeddings"),
    (dict(num_embeddings=True), "prior.num_embeddings"),
    (dict(latent_shape=(7,)), "prior.latent_shape"),
    (dict(latent_shape=(7, 0)), "prior.latent_shape"),
    (dict(latent_shape=7), "prior.latent_shape"),
    (dict(kind="categorical", latent_shape=(7, 7)), "prior.latent_shape"),
    (dict(num_classes=1), "prior.num_classes"),
    (dict(num_classes=-2), "prior.num_classes"),
    (dict(hidden=0), "prior.hidden"),
    (dict(num_layers=-1), "prior.num_layers"),
    (dict(kernel_size=4), "prior.kernel_size"),
    (dict(kernel_size=1), "prior.kernel_size"),
])
def test_prior_config_validation_names_the_field(kwargs, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    PriorConfig(**kwargs)


def test_prior_config_from_dict_refuses_unknown_keys():
  with pytest.raises(ValueError, match="temperature"):
    PriorConfig.from_dict({"kind": "pixelcnn", "temperature": 1.0})
