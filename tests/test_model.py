"""Shapes at every boundary, and clear errors for bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqzoo.configs import ConvConfig, ModelConfig, QuantizerConfig
from vqzoo.images import to_float_images
from vqzoo import cpu_tuning
from vqzoo.nn import build, build_codec

from _util import compiled_init

CONFIGS = {
    "mlp": ModelConfig(),
    "mlp-ema": ModelConfig(quantizer=QuantizerConfig(ema=True)),
    "conv": ModelConfig(arch="conv", conv=ConvConfig(16, 1, 8),
                        quantizer=QuantizerConfig(32, 8)),
    "conv-ema-rgb": ModelConfig(arch="conv", image_shape=(16, 12, 3), conv=ConvConfig(16, 1, 8),
                                quantizer=QuantizerConfig(32, 8, ema=True)),
}


class ShapeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_at_every_boundary(self):
    for name, config in CONFIGS.items():
      with self.subTest(name):
        b = 3
        h, w, c = config.image_shape
        k, d = config.quantizer.num_embeddings, config.quantizer.embedding_dim
        x = jax.random.uniform(jax.random.PRNGKey(0), (b, h, w, c))
        model = build(config)
        params, state = compiled_init(model, jax.random.PRNGKey(1), x, True)
        apply = self.variant(model.apply, static_argnums=(4,))
        out, new_state = apply(params, state, None, x, True)
        latent = config.latent_shape
        chex.assert_shape(out.reconstruction, (b, h, w, c))
        chex.assert_shape(out.codes, (b, *latent))
        chex.assert_shape([out.z_e, out.z_q], (b, *latent, d))
        chex.assert_shape(out.code_counts, (k,))
        chex.assert_rank([out.loss, out.reconstruction_loss, out.codebook_loss,
                          out.commitment_loss, out.perplexity], 0)
        assert out.codes.dtype == jnp.int32
        chex.assert_trees_all_equal_shapes(state, new_state)
        codec = build_codec(config)
        codes, _ = self.variant(codec.apply.encode)(params, state, None, x)
        chex.assert_trees_all_equal(codes, out.codes)
        images, _ = self.variant(codec.apply.decode)(params, state, None, codes)
        chex.assert_shape(images, (b, h, w, c))
        np.testing.assert_allclose(images, out.reconstruction, rtol=1e-5, atol=1e-6)


def test_total_loss_is_sum_of_named_terms():
  for name in ("mlp", "mlp-ema"):
    config = CONFIGS[name]
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
    model = build(config)
    params, state = compiled_init(model, jax.random.PRNGKey(1), x, True)
    out, _ = model.apply(params, state, None, x, True)
    np.testing.assert_allclose(out.reconstruction_loss, jnp.mean((x - out.reconstruction) ** 2),
                               rtol=1e-6)
    embed = 0.0 if config.quantizer.ema else out.codebook_loss
    np.testing.assert_allclose(out.loss, out.reconstruction_loss + embed + 0.25 * out.commitment_loss,
                               rtol=1e-6)


@pytest.mark.parametrize("shape, match", [
    ((2, 28, 28), r"expected shape \[B, 28, 28, 1\]"),
    ((2, 28, 28, 3), r"expected shape \[B, 28, 28, 1\]"),
    ((2, 32, 32, 1), r"expected shape \[B, 28, 28, 1\]"),
])
def test_module_refuses_wrong_shapes(shape, match):
  model = build(ModelConfig())
  with pytest.raises(ValueError, match=match):
    model.init(jax.random.PRNGKey(0), jnp.zeros(shape), True)


@pytest.mark.parametrize("images, match", [
    (np.zeros((2, 28, 28, 1, 1), np.uint8), r"expected shape \[B, 28, 28, 1\].*rank 5"),
    (np.zeros((2, 32, 32), np.uint8), "expected 28x28 pixels"),
    (np.zeros((2, 28, 28, 3), np.uint8), "expected 1 channel"),
    (np.full((2, 28, 28), 300, np.int32), "0-255"),
    (np.full((2, 28, 28), -1, np.int32), "0-255"),
    (np.full((2, 28, 28), 1.5, np.float32), r"\[0, 1\]"),
    (np.full((2, 28, 28), -0.1, np.float32), r"\[0, 1\]"),
    (np.full((2, 28, 28), np.nan, np.float32), "NaN"),
    (np.zeros((0, 28, 28), np.uint8), "empty"),
    (np.array([["a"]]), "dtype"),
])
def test_bad_images_are_refused_with_what_was_expected(images, match):
  with pytest.raises(ValueError, match=match):
    to_float_images(images, (28, 28, 1))


def test_good_images_are_accepted_in_every_layout():
  u8 = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256
  for images in (u8.astype(np.uint8), u8.astype(np.uint8)[..., None], u8[0].astype(np.uint8),
                 u8.astype(np.float32) / 255):
    x = to_float_images(images, (28, 28, 1))
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (28, 28, 1)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_depth_to_space_matches_a_numpy_pixel_shuffle():
  from vqzoo.nn.nets import depth_to_space
  x = np.arange(2 * 3 * 4 * 8, dtype=np.float32).reshape(2, 3, 4, 8)  # C = 2 * 2^2
  out = np.asarray(depth_to_space(jnp.asarray(x), 2))
  assert out.shape == (2, 6, 8, 2)
  for i in range(3):
    for j in range(4):
      for di in range(2):
        for dj in range(2):
          np.testing.assert_array_equal(out[:, 2 * i + di, 2 * j + dj],
                                        x[:, i, j, (di * 2 + dj) * 2:(di * 2 + dj + 1) * 2])


@pytest.mark.parametrize("shape, kernel, cout, stride", [
    ((3, 28, 28, 1), 4, 8, 2), ((3, 14, 14, 8), 4, 16, 2), ((3, 7, 7, 16), 3, 16, 1),
    ((3, 7, 7, 8), 1, 16, 1), ((3, 7, 7, 32), 3, 128, 1), ((3, 9, 9, 4), 3, 5, 1)])
def test_conv_as_matmul_equals_xla_convolution(shape, kernel, cout, stride):
  """Forward and both gradients of the im2col matmul equal lax.conv_general_dilated's."""
  from jax import lax
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, shape[-1], cout)), jnp.float32)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
  mine = lambda x, w: cpu_tuning.conv_as_matmul(x, w, stride)
  np.testing.assert_allclose(mine(x, w), ref(x, w), rtol=1e-4, atol=1e-4)
  loss = lambda f: (lambda x, w: jnp.sum(jnp.sin(f(x, w))))
  for a, b in zip(jax.grad(loss(mine), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_tuned_conv_layers_equal_plain_haiku_and_take_the_matmul_path():
  import haiku as hk
  x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 12, 12, 1)), jnp.float32)
  layers = lambda x: hk.Conv2D(3, 1)(hk.Conv2D(6, 4, stride=2)(x))  # fan-in 16, then 1x1
  plain = hk.transform(layers)
  params = plain.init(jax.random.PRNGKey(0), x)
  tuned = hk.transform(cpu_tuning.tuned(layers))
  np.testing.assert_allclose(tuned.apply(params, None, x), plain.apply(params, None, x),
                             rtol=1e-5, atol=1e-5)
  convs = lambda f: str(jax.make_jaxpr(lambda p: f.apply(p, None, x))(params)).count("conv_general")
  assert convs(plain) == 2 and convs(tuned) == 0
  with cpu_tuning.disabled():
    assert convs(tuned) == 2


@pytest.mark.parametrize("rows,max_rows,expected_slices", [(5, 8, 1), (20, 8, 3), (1000, 8, 16)])
def test_slices_compute_what_the_whole_batch_computes(rows, max_rows, expected_slices):
  calls = []

  def fn(x):
    calls.append(x.shape[0])
    return jnp.cumsum(x, axis=1) * 2.0  # mixes features, never rows

  x = jnp.asarray(np.random.default_rng(0).normal(size=(rows, 6)), jnp.float32)
  out = cpu_tuning.apply_in_slices(fn, x, max_rows)
  np.testing.assert_array_equal(out, fn(x))
  assert len(calls) - 1 == expected_slices and sum(calls[:-1]) == rows


def test_tuned_conv_model_equals_the_plain_model(monkeypatch):
  """Slicing, matmul convs and the two-pass search change nothing but speed."""
  config = CONFIGS["conv-ema-rgb"]
  x = jnp.asarray(np.random.default_rng(3).random((40, *config.image_shape)), jnp.float32)
  params, state = compiled_init(build(config), jax.random.PRNGKey(0), x, True)
  monkeypatch.setattr(cpu_tuning, "SLICE_BYTES", 7 * 4 * 3 * 8 * 4)  # decoder: 6 slices of 7
  monkeypatch.setattr(cpu_tuning, "MIN_SLICE_ROWS", 1)
  apply = lambda wrap: jax.jit(build(config, wrap=wrap).apply, static_argnums=4)(
      params, state, jax.random.PRNGKey(1), x, True)
  plain, tuned = apply(lambda f: f), apply(cpu_tuning.tuned)
  (whole, whole_state), (sliced, sliced_state) = plain, tuned
  np.testing.assert_allclose(sliced.reconstruction, whole.reconstruction, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(sliced.codes, whole.codes)
  chex.assert_trees_all_close(sliced_state, whole_state, rtol=1e-5, atol=1e-5)
  jaxpr = lambda wrap: str(jax.make_jaxpr(
      lambda x: build(config, wrap=wrap).apply(params, state, None, x, False))(x))
  # The encoder and the decoder each ran in slices, concatenated once.
  assert jaxpr(cpu_tuning.tuned).count("concatenate") >= jaxpr(lambda f: f).count("concatenate") + 2


def test_user_modules_plug_into_the_vqvae_with_either_quantizer():
  import haiku as hk
  from vqzoo.nn import VQVAE, VectorQuantizer, VectorQuantizerEMA, part_of, part_prefixes

  class Encoder(hk.Module):
    def __call__(self, x):
      return hk.Linear(8)(jax.nn.relu(hk.Linear(32)(hk.Flatten()(x))))

  class Decoder(hk.Module):
    def __call__(self, z):
      return jnp.reshape(hk.Linear(28 * 28)(jax.nn.relu(hk.Linear(32)(z))), (-1, 28, 28, 1))

  for quantizer in (VectorQuantizer, VectorQuantizerEMA):
    factory = lambda: VQVAE(Encoder(name="my_encoder"), Decoder(name="my_decoder"),
                            quantizer(embedding_dim=8, num_embeddings=16, commitment_cost=0.25,
                                      name="codes"), name="mine")
    model = build(factory)
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
    params, state = compiled_init(model, jax.random.PRNGKey(1), x, True)
    out, _ = model.apply(params, state, None, x, True)
    chex.assert_shape(out.reconstruction, (4, 28, 28, 1))
    chex.assert_shape(out.codes, (4,))
    prefixes = part_prefixes(factory)
    assert prefixes == {"encoder": "my_encoder", "decoder": "my_decoder", "codebook": "codes"}
    assert {part_of(m, prefixes) for m in params} == (
        {"encoder", "decoder", "codebook"} if quantizer is VectorQuantizer
        else {"encoder", "decoder"})
  with pytest.raises(ValueError, match="belongs to none"):
    part_of("somewhere/else", prefixes)


def test_old_module_names_say_where_they_went():
  import importlib
  for old, new in (("vqzoo.model", "vqzoo.nn"), ("vqzoo.train", "vqzoo.training.trainer"),
                   ("vqzoo.registry", "vqzoo.pretrained.registry"),
                   ("vqzoo.training.frechet", "vqzoo.evaluation.frechet")):
    with pytest.raises(ModuleNotFoundError, match=new.replace(".", r"\.")):
      importlib.import_module(old)
