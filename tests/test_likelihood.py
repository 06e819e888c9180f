"""The bits-per-dimension bound: a discretised Gaussian decoder plus the prior's code length."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr

import vqzoo
from vqzoo.configs import PriorConfig
from vqzoo.evaluation import likelihood

from _util import compiled_init

TINY = dict(num_embeddings=16, embedding_dim=8, num_hiddens=16, num_residual_hiddens=8)


def _numpy_decoder_bits(levels: np.ndarray, mean: np.ndarray, sigma: float) -> np.ndarray:
  """Independent float64 reference: -log2 (Phi(hi) - Phi(lo)), end bins open, per image."""
  k = levels.astype(np.float64)
  mean = mean.astype(np.float64)
  hi = np.where(k == 255, np.inf, ((k + 0.5) / 255 - mean) / sigma)
  lo = np.where(k == 0, -np.inf, ((k - 0.5) / 255 - mean) / sigma)
  # Above the mean, 1 - Phi rounds to 0 in the far tail: take the mirror image's mass there.
  upper = np.where(k == 0, False, np.where(k == 255, True, lo > -hi))
  p = np.where(upper, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))
  return -np.log2(p).reshape(len(k), -1).sum(axis=1)


@pytest.fixture(scope="module")
def colour_model():
  return vqzoo.create_model("mnist-conv-ema", image_shape=(32, 32, 3), **TINY)


def _images(n=5, seed=0):
  x = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  x[0, 0, 0] = [0, 255, 128]  # both end bins
  return x


def test_decoder_bits_match_numpy():
  rng = np.random.default_rng(1)
  levels = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
  levels[0, 0, 0] = [0, 255, 7]
  mean = np.clip(levels / 255 + rng.normal(0, 0.05, levels.shape), 0, 1).astype(np.float32)
  for sigma in (0.02, 0.05, 0.3):
    got = likelihood.decoder_bits(levels, mean, sigma)
    assert got.shape == (4,) and got.dtype == np.float64
    np.testing.assert_allclose(got, _numpy_decoder_bits(levels, mean, sigma), rtol=2e-5)
  # Floats on the k/255 grid are the same data.
  np.testing.assert_allclose(likelihood.decoder_bits(levels / 255.0, mean, 0.05),
                             likelihood.decoder_bits(levels, mean, 0.05), rtol=1e-12)


def test_the_256_levels_of_a_pixel_sum_to_one():
  levels = np.arange(256, dtype=np.uint8).reshape(256, 1, 1, 1)
  for mu, sigma in ((0.5, 0.04), (0.0, 0.1), (1.0, 0.01), (0.3, 2.0)):
    bits = likelihood.decoder_bits(levels, np.full((256, 1, 1, 1), mu, np.float32), sigma)
    assert np.sum(2.0 ** -bits) == pytest.approx(1.0, abs=1e-5)


def test_far_tails_stay_finite():
  # A pixel ~25 sigma from the mean: a naive Phi(hi) - Phi(lo) in float32 gives 0 (inf bits).
  levels = np.array([[[[250]]], [[[3]]]], np.uint8)
  mean = np.array([[[[0.0]]], [[[1.0]]]], np.float32)
  bits = likelihood.decoder_bits(levels, mean, 0.04)
  ref = _numpy_decoder_bits(levels, mean, 0.04)
  assert np.all(np.isfinite(bits)) and np.all(bits > 100)
  np.testing.assert_allclose(bits, ref, rtol=1e-4)


def test_decoder_bits_errors():
  levels = np.zeros((2, 4, 4, 3), np.uint8)
  mean = np.zeros((2, 4, 4, 3), np.float32)
  with pytest.raises(ValueError, match="k/255 grid"):
    likelihood.decoder_bits(np.full((2, 4, 4, 3), 0.1234), mean, 0.1)
  with pytest.raises(ValueError, match="sigma"):
    likelihood.decoder_bits(levels, mean, 0.0)
  with pytest.raises(ValueError, match="3 channel"):
    likelihood.decoder_bits(levels[..., :1], mean, 0.1)
  with pytest.raises(ValueError, match="one mean per image"):
    likelihood.decoder_bits(levels[:1], mean, 0.1)


def test_bound_with_the_uniform_prior(colour_model):
  x = _images()
  sigma = likelihood.fit_sigma(colour_model, x)
  recon = colour_model.reconstruct(x).astype(np.float64)
  assert sigma == pytest.approx(math.sqrt(np.mean((recon - x / 255.0) ** 2)), rel=1e-5)
  got = likelihood.likelihood_bound(colour_model, x, sigma, batch_size=2)
  decoder = _numpy_decoder_bits(x, recon, sigma)
  prior = 8 * 8 * math.log2(16)  # the uniform prior over an 8x8 grid of K=16 codes
  assert got["prior"] == "uniform" and got["num_images"] == 5
  assert got["total_bits"] == pytest.approx(got["prior_bits"] + got["decoder_bits"])
  assert got["prior_bits"] == pytest.approx(prior)
  assert got["decoder_bits"] == pytest.approx(decoder.mean(), rel=2e-5)
  assert got["bits_per_dim"] == pytest.approx((prior + decoder.mean()) / (32 * 32 * 3), rel=2e-5)
  assert got["paper_cifar10_bits_per_dim"] == 4.67
  # A worse sigma gives a worse (larger) bound: the fitted one is near the optimum.
  assert likelihood.likelihood_bound(colour_model, x, 3 * sigma)["bits_per_dim"] > \
      got["bits_per_dim"]
  assert likelihood.likelihood_bound(colour_model, x, sigma / 3)["bits_per_dim"] > \
      got["bits_per_dim"]


def test_bound_uses_the_models_prior():
  from vqzoo.nn import prior_bits
  model = vqzoo.create_model("mnist-conv-ema", image_shape=(32, 32, 3), **TINY)
  prior = PriorConfig.for_model(model.config, num_classes=10, hidden=8, num_layers=1)
  params = compiled_init(prior_bits(prior), jax.random.PRNGKey(0),
                         jnp.zeros((1, 8, 8), jnp.int32), jnp.zeros((1,), jnp.int32))
  model.set_prior(prior, params)
  x, labels = _images(4), np.array([0, 3, 3, 9])
  codes = model.encode(x)
  conditional = likelihood.likelihood_bound(model, x, 0.1, labels=labels, batch_size=3)
  marginal = likelihood.likelihood_bound(model, x, 0.1)
  assert conditional["conditional"] and not marginal["conditional"]
  assert conditional["prior_bits"] == pytest.approx(model.prior_bits(codes, labels).mean())
  assert marginal["prior_bits"] == pytest.approx(model.prior_bits(codes).mean())
  assert conditional["decoder_bits"] == pytest.approx(marginal["decoder_bits"])
  assert marginal["bits_per_dim"] == pytest.approx(
      (marginal["prior_bits"] + marginal["decoder_bits"]) / 3072)
  with pytest.raises(ValueError, match="labels"):
    likelihood.likelihood_bound(model, x, 0.1, labels=labels[:2])
