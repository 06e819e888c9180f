"""The feature classifier (shipped weights, pins, accuracy), labels, and the Fréchet distance."""

import shutil

import numpy as np
import pytest

import vqzoo
from _util import assert_trees_equal
from vqzoo.training import classifier
from vqzoo.evaluation.frechet import (classifier_frechet_distance, feature_moments,
                                      frechet_distance, frechet_distance_from_moments)


@pytest.fixture(scope="module")
def mnist_params():
  return classifier.load_classifier("mnist")


@pytest.fixture(scope="module")
def mnist_test_labels(tfds_dir):
  from vqzoo.training.data import load_labels
  return load_labels("mnist", "test", tfds_dir)


# ----------------------------------------------------------------------------- labels


def test_load_labels(tfds_dir, mnist_test_labels):
  from vqzoo.training.data import load_labels
  assert mnist_test_labels.shape == (10000,)
  assert np.issubdtype(mnist_test_labels.dtype, np.integer)
  assert set(np.unique(mnist_test_labels)) == set(range(10))
  head = load_labels("fashion_mnist", "test[:500]", tfds_dir)
  assert head.shape == (500,) and head.min() >= 0 and head.max() <= 9


# ----------------------------------------------------------------------------- shipped classifiers


@pytest.mark.parametrize("dataset", classifier.DATASETS)
def test_shipped_files_are_small_and_recorded(dataset):
  record = classifier.read_metrics()[dataset]
  assert classifier.weights_path(dataset).stat().st_size < 1_000_000
  shape = classifier.image_shape_for(dataset)
  assert record["num_params"] == classifier.num_params(classifier.init_params(image_shape=shape))
  assert record["test_accuracy"] >= {"mnist": 0.985, "fashion_mnist": 0.89, "cifar10": 0.6}[dataset]
  params = classifier.load_classifier(dataset)
  assert classifier.num_params(params) == record["num_params"]


def test_mnist_accuracy_first_2000(mnist_params, mnist_test, mnist_test_labels):
  acc = classifier.accuracy(mnist_params, mnist_test[:2000], mnist_test_labels[:2000])
  assert acc >= 0.97


@pytest.mark.parametrize("dataset", classifier.DATASETS)
def test_full_test_accuracy_matches_metrics(dataset, tfds_dir):
  from vqzoo.training.data import load_images, load_labels
  params = classifier.load_classifier(dataset)
  acc = classifier.accuracy(params, load_images(dataset, "test", tfds_dir),
                            load_labels(dataset, "test", tfds_dir))
  # Same weights, same data: only float round-off (another backend, CPU tricks off) can move a
  # borderline image or two.
  assert abs(acc - classifier.read_metrics()[dataset]["test_accuracy"]) <= 0.002


def test_features_and_predict_shapes_and_input_forms(mnist_params, mnist_test):
  images = mnist_test[:23]
  feats = classifier.features(mnist_params, images)
  assert feats.shape == (23, classifier.FEATURE_DIM) and feats.dtype == np.float64
  assert np.all(feats >= 0)  # post-ReLU
  as_float = images[..., 0].astype(np.float32) / 255.0  # [N, 28, 28] float in [0, 1]
  np.testing.assert_allclose(classifier.features(mnist_params, as_float), feats, atol=1e-5)
  # Padded odd-sized batches give the same answers as one batch.
  np.testing.assert_allclose(classifier.features(mnist_params, images, batch_size=5), feats,
                             atol=1e-5)
  pred = classifier.predict(mnist_params, images, batch_size=5)
  assert pred.shape == (23,) and np.issubdtype(pred.dtype, np.integer)
  np.testing.assert_array_equal(pred, classifier.predict(mnist_params, images))
  with pytest.raises(ValueError):
    classifier.features(mnist_params, np.zeros((2, 32, 32, 1), np.uint8))


def test_colour_classifier_shapes_and_errors(mnist_params):
  colour = classifier.init_params(seed=3, image_shape=(32, 32, 3))
  assert classifier.image_shape_of(colour) == (32, 32, 3)
  assert classifier.image_shape_of(mnist_params) == (28, 28, 1)
  # Only the first conv differs: 3 input channels instead of 1.
  assert classifier.num_params(colour) - classifier.num_params(mnist_params) == 2 * 3 * 3 * 32
  rgb = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
  feats = classifier.features(colour, rgb, batch_size=4)
  assert feats.shape == (7, classifier.FEATURE_DIM)
  np.testing.assert_allclose(feats, classifier.features(colour, rgb), atol=1e-5)
  # Each image's features depend on that image alone.
  np.testing.assert_allclose(classifier.features(colour, rgb[2:3]), feats[2:3], atol=1e-5)
  with pytest.raises(ValueError, match="3 channel"):
    classifier.features(colour, rgb[..., :1])
  with pytest.raises(ValueError, match="1 channel"):
    classifier.predict(mnist_params, np.zeros((2, 28, 28, 3), np.uint8))
  with pytest.raises(ValueError, match="not a vqzoo classifier"):
    classifier.image_shape_of({"other": {}})
  with pytest.raises(KeyError, match="no classifier shape"):
    classifier.image_shape_for("svhn")


def test_train_classifier_flips_are_seeded_and_change_training():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, 10, 64)
  a = classifier.train_classifier(x, y, steps=2, batch_size=32, seed=1, flip=True)
  b = classifier.train_classifier(x, y, steps=2, batch_size=32, seed=1, flip=True)
  assert_trees_equal(a, b)
  assert classifier.image_shape_of(a) == (32, 32, 3)
  plain = classifier.train_classifier(x, y, steps=2, batch_size=32, seed=1)
  assert not np.allclose(plain["classifier/conv_0"]["w"], a["classifier/conv_0"]["w"])
  with pytest.raises(ValueError, match="images_u8"):
    classifier.train_classifier(x[:, :30], y, steps=1, batch_size=32)


def test_tampered_weights_raise_integrity_error(tmp_path):
  for name in ("mnist.safetensors", classifier.METRICS_NAME):
    shutil.copy(classifier.CLASSIFIERS_DIR / name, tmp_path / name)
  classifier.load_classifier("mnist", tmp_path)  # an intact copy loads
  path = tmp_path / "mnist.safetensors"
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))
  with pytest.raises(vqzoo.IntegrityError, match="sha256"):
    classifier.load_classifier("mnist", tmp_path)
  with pytest.raises(KeyError, match="no classifier"):
    classifier.load_classifier("svhn", tmp_path)


def test_train_classifier_is_seeded(mnist_test, mnist_test_labels):
  x, y = mnist_test[:256], mnist_test_labels[:256]
  a = classifier.train_classifier(x, y, steps=3, batch_size=64, seed=1)
  b = classifier.train_classifier(x, y, steps=3, batch_size=64, seed=1)
  assert_trees_equal(a, b)
  with pytest.raises(ValueError, match="labels"):
    classifier.train_classifier(x, y[:10], steps=1)


# ----------------------------------------------------------------------------- Fréchet distance


def _hadamard(n: int) -> np.ndarray:
  h = np.ones((1, 1))
  while len(h) < n:
    h = np.block([[h, h], [h, -h]])
  return h


def test_frechet_matches_closed_form_for_diagonal_gaussians():
  # Columns of a Hadamard matrix (all but the constant one) are zero-mean and orthogonal, so
  # these feature sets have exactly the given means and diagonal sample covariances.
  n, d = 16, 5
  h = _hadamard(n)[:, 1:d + 1]
  mu_a, mu_b = np.array([0.0, 1.0, -2.0, 0.5, 3.0]), np.array([0.5, 1.0, 0.0, 0.5, -1.0])
  sd_a, sd_b = np.array([1.0, 2.0, 0.5, 0.0, 1.5]), np.array([2.0, 2.0, 1.0, 3.0, 0.1])
  feats_a, feats_b = mu_a + h * sd_a, mu_b + h * sd_b
  var_a, var_b = sd_a ** 2 * n / (n - 1), sd_b ** 2 * n / (n - 1)  # unbiased sample variances
  expected = np.sum((mu_a - mu_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
  assert frechet_distance(feats_a, feats_b) == pytest.approx(expected, rel=1e-10)
  got = frechet_distance_from_moments(mu_a, np.diag(sd_a ** 2), mu_b, np.diag(sd_b ** 2))
  assert got == pytest.approx(np.sum((mu_a - mu_b) ** 2) + np.sum((sd_a - sd_b) ** 2), rel=1e-10)


def test_frechet_general_covariance_matches_sqrtm():
  import scipy.linalg as scipy_linalg  # installed with jax, which depends on it
  rng = np.random.default_rng(0)
  a = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
  b = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 0.3
  (mu_a, cov_a), (mu_b, cov_b) = feature_moments(a), feature_moments(b)
  expected = (np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b)
              - 2 * np.trace(scipy_linalg.sqrtm(cov_a @ cov_b).real))
  assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_frechet_properties():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))
  b = rng.normal(size=(400, 8)) * 2.0
  scale = frechet_distance(a, b)
  assert scale > 0
  assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9 * scale)
  assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
  # A shift by c in every dimension leaves the covariances, and adds exactly D c^2.
  assert frechet_distance(a, a + 0.5) == pytest.approx(8 * 0.25, rel=1e-9)
  assert frechet_distance(a, a + 0.1) < frechet_distance(a, a + 0.5)
  # Rank-deficient covariances (dimensions that are always 0, like dead ReLUs) are fine.
  padded_a = np.concatenate([a, np.zeros((500, 3))], axis=1)
  padded_b = np.concatenate([b, np.zeros((400, 3))], axis=1)
  assert frechet_distance(padded_a, padded_b) == pytest.approx(scale, rel=1e-8)
  with pytest.raises(ValueError):
    frechet_distance(a[:1], b)


def test_classifier_frechet_distance_on_mnist(mnist_params, mnist_test, mnist_train):
  rng = np.random.default_rng(0)
  real = classifier_frechet_distance(mnist_test, mnist_train[:10000], "mnist", mnist_params)
  flat = mnist_test.reshape(len(mnist_test), -1)
  shuffled = rng.permuted(flat, axis=1).reshape(mnist_test.shape)  # each image's own shuffle
  noise = classifier_frechet_distance(mnist_test, shuffled, "mnist", mnist_params)
  assert real < 0.05 * noise
  assert classifier_frechet_distance(mnist_test[:2000], mnist_test[:2000], "mnist") < 1e-6


def test_classifier_frechet_distance_on_cifar10(tfds_dir):
  from vqzoo.training.data import load_images
  test = load_images("cifar10", "test[:2000]", tfds_dir)
  train = load_images("cifar10", "train[:2000]", tfds_dir)
  params = classifier.load_classifier("cifar10")
  real = classifier_frechet_distance(test, train, "cifar10", params)
  flat = test.reshape(len(test), -1, 3)
  shuffled = np.random.default_rng(0).permuted(flat, axis=1).reshape(test.shape)  # pixels moved
  noise = classifier_frechet_distance(test, shuffled, "cifar10", params)
  assert real < 0.1 * noise
  with pytest.raises(ValueError, match="3 channel"):
    classifier_frechet_distance(test[..., :1], train, "cifar10", params)
