"""Priors on loaded models: sampling, scoring, saving, the Hub, fitting, the CLI."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vqzoo
from vqzoo.cli import main as cli_main
from vqzoo.configs import PriorConfig, RunConfig, TrainConfig
from vqzoo.nn import prior_bits
from vqzoo.pretrained.generation import NoPriorError
from vqzoo.pretrained.integrity import PRIOR_WEIGHTS_NAME, manifest_digest
from vqzoo.training.prior_fitting import fit_prior, training_codes

from _util import assert_trees_equal, compiled_init, synthetic_images
from hub_server import hub  # noqa: F401  (the fixture)

BASE = "mnist-conv-ema"


def _random_prior(config, seed=0, num_classes=10):
  prior = PriorConfig.for_model(config, num_classes=num_classes, hidden=8, num_layers=1)
  labels = jnp.zeros((1,), jnp.int32) if num_classes else None
  params = compiled_init(prior_bits(prior), jax.random.PRNGKey(seed),
                         jnp.zeros((1, *prior.latent_shape), jnp.int32), labels)
  # Non-zero biases everywhere, so samples depend on the parameters.
  params = jax.tree_util.tree_map(
      lambda x: x + 0.3 * np.random.default_rng(seed).normal(size=x.shape).astype(x.dtype), params)
  return prior, params


@pytest.fixture(scope="module")
def model():
  m = vqzoo.load(BASE)
  m.set_prior(*_random_prior(m.config))
  return m


def test_model_without_a_prior_says_how_to_fit_one():
  bare = vqzoo.PretrainedVQVAE(vqzoo.get_config(BASE))
  for call in (lambda: bare.sample(4), lambda: bare.sample_codes(4),
               lambda: bare.prior_bits(np.zeros((1, 7, 7), np.int32))):
    with pytest.raises(NoPriorError, match="vqzoo fit-prior"):
      call()


def test_samples_are_images_deterministic_per_seed_and_labelled(model):
  a = model.sample(6, seed=1, label=3)
  assert a.shape == (6, 28, 28, 1) and a.dtype == np.float32
  assert 0.0 <= a.min() and a.max() <= 1.0
  np.testing.assert_array_equal(a, model.sample(6, seed=1, label=3))
  codes = model.sample_codes(6, seed=1, label=3)
  assert codes.shape == (6, 7, 7) and codes.dtype == np.int32
  assert not np.array_equal(codes, model.sample_codes(6, seed=2, label=3))
  assert not np.array_equal(codes, model.sample_codes(6, seed=1, label=4))
  np.testing.assert_array_equal(model.sample_codes(6, seed=1, label=np.full(6, 3)), codes)
  greedy = model.sample_codes(6, seed=1, temperature=0.0, label=3)
  np.testing.assert_array_equal(greedy, model.sample_codes(6, seed=9, temperature=0.0, label=3))
  with pytest.raises(ValueError, match="label"):
    model.sample(2, label=10)


def test_prior_bits_with_and_without_labels(model):
  codes = model.sample_codes(5, seed=0, label=2)
  given = model.prior_bits(codes, label=2)
  per_class = np.stack([model.prior_bits(codes, label=c) for c in range(10)])
  assert given.shape == (5,) and np.allclose(per_class[2], given)
  marginal = model.prior_bits(codes)  # -log2 of the mean over classes of p(codes | c)
  expected = -np.log2(np.mean(2.0 ** -per_class, axis=0))
  np.testing.assert_allclose(marginal, expected, rtol=1e-6)


def test_prior_is_saved_loaded_and_covered_by_the_manifest(model, tmp_path):
  model.save_pretrained(tmp_path / "m")
  loaded = vqzoo.load(str(tmp_path / "m"))
  assert loaded.prior == model.prior
  np.testing.assert_array_equal(loaded.sample_codes(4, seed=3, label=1),
                                model.sample_codes(4, seed=3, label=1))
  files = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.name != "README.md"}
  assert set(files) == {"config.json", "model.safetensors", "prior.json", "prior.safetensors"}
  import hashlib
  digests = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
  assert loaded.source["manifest_sha256"] == manifest_digest(digests)
  (tmp_path / "m" / "prior.json").unlink()
  with pytest.raises(FileNotFoundError, match="prior"):
    vqzoo.load(str(tmp_path / "m"))


def test_prior_of_the_wrong_shape_is_refused():
  mlp = vqzoo.load("mnist-mlp")
  conv = vqzoo.load(BASE)
  with pytest.raises(ValueError, match="grid"):
    mlp.set_prior(*_random_prior(conv.config))


def test_push_and_pull_carry_the_prior_and_its_pin(hub, model, tmp_path):
  model.push_to_hub("someone/with-prior")
  stored = hub.files("someone/with-prior")
  assert {"prior.json", PRIOR_WEIGHTS_NAME} <= set(stored)
  pulled = vqzoo.load("hf-hub:someone/with-prior", cache_dir=str(tmp_path / "c"))
  np.testing.assert_array_equal(pulled.sample_codes(3, seed=0, label=5),
                                model.sample_codes(3, seed=0, label=5))
  pin = pulled.source["manifest_sha256"]
  hub.alter_file("someone/with-prior", PRIOR_WEIGHTS_NAME, lambda b: b[:-1] + bytes([b[-1] ^ 1]))
  with pytest.raises(vqzoo.IntegrityError, match=pin):
    vqzoo.load(f"hf-hub:someone/with-prior#sha256={pin}", cache_dir=str(tmp_path / "d"))


def test_categorical_prior_is_fitted_exactly_by_counting():
  config = PriorConfig(kind="categorical", num_embeddings=4, num_classes=2)
  codes = np.array([0, 0, 1, 3, 3, 3, 2], np.int32)
  labels = np.array([0, 0, 0, 1, 1, 1, 1], np.int32)
  params = fit_prior(config, TrainConfig(steps=1, batch_size=1), codes, labels)
  bits = prior_bits(config).apply(params, None, jnp.asarray(codes), jnp.asarray(labels))
  counts = {0: np.array([2, 1, 0, 0]), 1: np.array([0, 0, 1, 3])}
  expected = [-math.log2((counts[l][c] + 1) / (counts[l].sum() + 4)) for c, l in zip(codes, labels)]
  np.testing.assert_allclose(bits, expected, rtol=1e-5)


def test_a_residual_models_unigram_baseline_counts_each_stage_among_its_own_codes():
  from vqzoo.training.prior_fitting import code_frequencies, sample_unigram, unigram_bits
  # [N, H, W, stages]: stage 0 only ever uses code 0, stage 1 codes 1 and 2 equally often.
  train = np.zeros((100, 2, 2, 2), np.int32)
  train[..., 1] = np.arange(400).reshape(100, 2, 2) % 2 + 1
  probs = code_frequencies(train, 4, per_stage=True)
  np.testing.assert_allclose(probs, [[401 / 404, 1 / 404, 1 / 404, 1 / 404],
                                     [1 / 404, 201 / 404, 201 / 404, 1 / 404]])
  test = train[:3]
  expected = 4 * -math.log2(401 / 404) + 4 * -math.log2(201 / 404)  # 4 positions, 2 stages
  np.testing.assert_allclose(unigram_bits(train, test, 4, per_stage=True), [expected] * 3)
  pooled = unigram_bits(train, test, 4)  # one histogram over both codebooks' indices
  assert np.all(pooled > expected + 4)  # code 0 pooled is ~1/2, not ~1: a weaker baseline
  drawn = sample_unigram(train, 200, 4, seed=0, per_stage=True)
  assert drawn.shape == (200, 2, 2, 2) and drawn.dtype == np.int32
  assert np.mean(drawn[..., 0] == 0) > 0.95 and set(np.unique(drawn[..., 1])) <= {0, 1, 2, 3}
  assert np.mean(np.isin(drawn[..., 1], (1, 2))) > 0.95
  single = sample_unigram(train[..., 0], 50, 4, seed=0)  # a one-stage model's codes [N, H, W]
  assert single.shape == (50, 2, 2) and np.mean(single == 0) > 0.95


def test_mirrored_training_codes_follow_the_originals_with_their_labels(model):
  images = synthetic_images(6)
  labels = np.arange(6, dtype=np.int32)
  codes, same = training_codes(model, images, labels, progress=False)
  assert same is labels and codes.shape == (6, 7, 7)
  both, repeated = training_codes(model, images, labels, mirrored=True, progress=False)
  np.testing.assert_array_equal(both[:6], codes)
  np.testing.assert_array_equal(both[6:], model.encode(images[:, :, ::-1]))
  np.testing.assert_array_equal(repeated, np.concatenate([labels, labels]))
  assert not np.array_equal(both[6:], codes)  # the mirror is other data
  assert training_codes(model, images, None, mirrored=True, progress=False)[1] is None


def test_pixelcnn_fit_learns_and_resumes_bit_exactly(tmp_path, mnist_test):
  m = vqzoo.load(BASE)
  codes = m.encode(mnist_test[:512])
  config = PriorConfig.for_model(m.config, hidden=8, num_layers=1)
  recipe = TrainConfig(steps=30, batch_size=64, learning_rate=5e-3, warmup_steps=2)
  straight = fit_prior(config, recipe, codes, workdir=tmp_path / "a",
                       run=RunConfig(progress=False, log_every=10))
  lines = [json.loads(l) for l in (tmp_path / "a" / "prior_metrics.jsonl").read_text().split("\n")
           if l]
  assert lines[-1]["bits_per_image"] < lines[0]["bits_per_image"]
  fit_prior(config, recipe, codes, workdir=tmp_path / "b",
            run=RunConfig(progress=False, until_step=10))
  with pytest.raises(FileExistsError, match="resume=True"):  # the one resume rule
    fit_prior(config, recipe, codes, workdir=tmp_path / "b", run=RunConfig(progress=False))
  with pytest.raises(ValueError, match="learning_rate"):
    fit_prior(config, dataclasses.replace(recipe, learning_rate=1e-2), codes,
              workdir=tmp_path / "b", run=RunConfig(progress=False, resume=True))
  resumed = fit_prior(config, recipe, codes, workdir=tmp_path / "b",
                      run=RunConfig(progress=False, resume=True))
  assert_trees_equal(straight, resumed)


def test_cli_fit_prior_then_sample(tmp_path, tfds_dir, capsys):
  out = tmp_path / "with-prior"
  assert cli_main(["fit-prior", BASE, "--dataset", "mnist", "--split", "train[:1000]",
                   "--eval-split", "test[:300]", "--steps", "8", "--batch-size", "32",
                   "--hidden", "8", "--layers", "1", "--out", str(out), "--data-dir", tfds_dir,
                   "--mirror", "--no-progress", "--json"]) == 0
  metrics = json.loads(capsys.readouterr().out)
  assert metrics["uniform_bits"] == pytest.approx(49 * 7)
  assert metrics["eval_split"] == "test[:300]"
  model = vqzoo.load(str(out))
  from vqzoo.training.data import load_images, load_labels
  from vqzoo.training.prior_fitting import encode_images
  codes = encode_images(model, load_images("mnist", "test[:300]", tfds_dir), progress=False)
  assert metrics["prior_bits"] == pytest.approx(
      model.prior_bits(codes, load_labels("mnist", "test[:300]", tfds_dir)).mean(), rel=1e-5)
  assert vqzoo.load(str(out)).prior.num_classes == 10
  # --mirror adds the mirrored images' codes to the fit; the unigram baseline stays the images'.
  from vqzoo.training.prior_fitting import unigram_bits
  train_codes = encode_images(model, load_images("mnist", "train[:1000]", tfds_dir), progress=False)
  assert metrics["unigram_bits"] == pytest.approx(unigram_bits(train_codes, codes, 128).mean())
  assert "`mnist` split `train[:1000]` and of those images mirrored left-right" in model.card
  grid = tmp_path / "s.png"
  assert cli_main(["sample", str(out), "--n", "8", "--label", "3", "--out", str(grid)]) == 0
  from PIL import Image
  with Image.open(grid) as im:
    assert im.size[0] > 0
  with pytest.raises(SystemExit):
    cli_main(["sample", str(out), "--n", "0"])


def test_a_prior_batch_that_does_not_split_over_the_devices_is_refused_clearly():
  """The suite runs 8 CPU devices (conftest): 100 codes a batch cannot be split over them."""
  config = PriorConfig(num_embeddings=4, hidden=4, num_layers=0)
  with pytest.raises(ValueError, match="batch_size: expected a multiple of 8"):
    fit_prior(config, TrainConfig(steps=1, batch_size=100), np.zeros((100, 7, 7), np.int32),
              run=RunConfig(progress=False))


def test_a_residual_models_prior_covers_every_stage_in_raster_order(tmp_path):
  """A residual model's [H, W, N] codes lie on the prior's (H, W*N) grid by a plain reshape:
  sampling gives [n, H, W, N] codes, fitting takes them as encode gives them, scoring agrees."""
  from vqzoo.configs import ConvConfig, ModelConfig, QuantizerConfig
  config = ModelConfig(arch="conv", conv=ConvConfig(num_hiddens=8, num_residual_layers=1,
                                                    num_residual_hiddens=4),
                       quantizer=QuantizerConfig(kind="rvq", num_stages=3, num_embeddings=16,
                                                 embedding_dim=4))
  assert config.prior_shape == (7, 21)
  model = vqzoo.PretrainedVQVAE(config)
  model.set_prior(*_random_prior(config, num_classes=0))
  codes = model.sample_codes(4, seed=0)
  assert codes.shape == (4, 7, 7, 3) and codes.max() < 16
  flat = codes.reshape(4, 7, 21)
  np.testing.assert_array_equal(flat[:, :, 3:6], codes[:, :, 1, :])  # position 1's 3 stages
  np.testing.assert_allclose(model.prior_bits(codes),
                             model._require_prior().bits(model.prior_params, flat, None))
  assert model.sample(2, seed=0).shape == (2, 28, 28, 1)
  # Fitting takes the codes as encode gives them, and learns them: the bits fall.
  data = np.tile(codes, (16, 1, 1, 1))
  prior = PriorConfig.for_model(config, hidden=8, num_layers=1)
  params = fit_prior(prior, TrainConfig(steps=60, batch_size=16, learning_rate=1e-2,
                                        warmup_steps=0), data, run=RunConfig(progress=False))
  before = float(np.mean(model.prior_bits(codes)))
  model.set_prior(prior, params)
  assert float(np.mean(model.prior_bits(codes))) < before
  # Measured by stage: stage s is every N-th column of the grid, and the stages sum to the whole.
  from vqzoo.nn import build_prior, position_bits
  from vqzoo.training.prior_fitting import prior_nll
  m = prior_nll(model, codes, None, data)
  per_position = np.asarray(position_bits(build_prior(prior).apply(params, None, flat, None), flat))
  assert m["prior_bits_by_stage"] == pytest.approx(
      [per_position[:, :, s::3].sum(axis=(1, 2)).mean() for s in range(3)], rel=1e-5)
  assert sum(m["prior_bits_by_stage"]) == pytest.approx(m["prior_bits"], rel=1e-5)
  assert len(m["unigram_bits_by_stage"]) == 3
  assert sum(m["unigram_bits_by_stage"]) == pytest.approx(m["unigram_bits"])
  with pytest.raises(ValueError, match="grid"):
    model.set_prior(*_random_prior(vqzoo.get_config(BASE)))
