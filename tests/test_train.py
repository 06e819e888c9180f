"""The training loop: it learns, resumes bit-exactly, guards NaNs, writes atomically."""

import json

import jax
import numpy as np
import pytest

from _util import assert_trees_equal as _tree_equal, traces_during
from vqzoo import cpu_tuning
from vqzoo.nn import part_of, part_prefixes
from vqzoo.training import data as data_lib
from vqzoo.training import trainer as train_lib
from vqzoo.configs import ConvConfig, ModelConfig, QuantizerConfig, RunConfig, TrainConfig

ONE_DEVICE = jax.local_devices()[:1]
SMALL_CONV = ModelConfig(arch="conv", conv=ConvConfig(16, 1, 8),
                         quantizer=QuantizerConfig(32, 8, ema=True, dead_code_threshold=0.5))


RUN_FIELDS = set(RunConfig.__dataclass_fields__)


def _train(model, recipe, workdir, images, init_params=None, init_state=None, **kwargs):
  """``train_lib.train`` with the run options given as keywords."""
  run = RunConfig(**{"progress": False, **{k: v for k, v in kwargs.items() if k in RUN_FIELDS}})
  rest = {k: v for k, v in kwargs.items() if k not in RUN_FIELDS}
  init = None if init_params is None else (init_params, init_state)
  return train_lib.train(model, recipe, workdir, images, run=run, init=init, **rest)


def test_mlp_learns_on_real_mnist(tmp_path, mnist_train):
  config = ModelConfig(quantizer=QuantizerConfig(dead_code_threshold=0.05))
  recipe = TrainConfig(steps=300, batch_size=128, learning_rate=1e-3, warmup_steps=20)
  result = _train(config, recipe, tmp_path, images=mnist_train[:20000],
                           progress=False, devices=ONE_DEVICE, log_every=50)
  lines = [json.loads(l) for l in (tmp_path / train_lib.METRICS_NAME).read_text().splitlines()]
  assert lines[0]["step"] == 50 and lines[-1]["step"] == 300
  assert lines[-1]["mse"] < 0.8 * lines[0]["mse"]
  assert lines[-1]["mse"] < 0.05  # predicting the mean image gives ~0.067
  assert result.step == 300


@pytest.mark.parametrize("devices", [ONE_DEVICE, jax.local_devices()[:2]])
def test_resume_is_bit_exact(tmp_path, synthetic_train, devices):
  images = synthetic_train[:4096]
  recipe = TrainConfig(steps=8, batch_size=32, learning_rate=1e-3, warmup_steps=2)
  common = dict(images=images, progress=False, devices=devices, log_every=2)
  straight = _train(SMALL_CONV, recipe, tmp_path / "a", **common)
  _train(SMALL_CONV, recipe, tmp_path / "b", until_step=4, **common)
  resumed = _train(SMALL_CONV, recipe, tmp_path / "b", resume=True, **common)
  assert resumed.step == straight.step == 8
  _tree_equal(straight.params, resumed.params)
  _tree_equal(straight.state, resumed.state)
  ckpt_a = train_lib.load_checkpoint(tmp_path / "a" / train_lib.CHECKPOINT_NAME,
                                     _template(recipe))
  ckpt_b = train_lib.load_checkpoint(tmp_path / "b" / train_lib.CHECKPOINT_NAME,
                                     _template(recipe))
  _tree_equal(ckpt_a, ckpt_b)


def _template(recipe):
  return train_lib.init_train_state(SMALL_CONV, train_lib.make_optimizer(recipe), recipe.seed)


def test_nan_loss_stops_the_run_and_leaves_the_last_checkpoint(tmp_path, synthetic_train):
  images = synthetic_train[:2048]
  recipe = TrainConfig(steps=6, batch_size=32, learning_rate=1e-3, warmup_steps=0)
  _train(SMALL_CONV, recipe, tmp_path, images=images, progress=False,
                  devices=ONE_DEVICE, until_step=2)
  before = (tmp_path / train_lib.CHECKPOINT_NAME).read_bytes()
  bad = dict(train_lib.load_checkpoint(tmp_path / train_lib.CHECKPOINT_NAME,
                                       _template(recipe))._asdict())
  # A model whose weights hold NaN produces a NaN loss at the next step.
  bad_params = jax.tree_util.tree_map(lambda x: np.full_like(x, np.nan), bad["params"])
  with pytest.raises(FloatingPointError, match="non-finite"):
    _train(SMALL_CONV, recipe, tmp_path / "nan", images=images, progress=False,
                    devices=ONE_DEVICE, init_params=bad_params, init_state=bad["state"],
                    log_every=1)
  assert not (tmp_path / "nan" / train_lib.CHECKPOINT_NAME).exists()
  assert (tmp_path / train_lib.CHECKPOINT_NAME).read_bytes() == before


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
  recipe = TrainConfig(steps=2, batch_size=8)
  ts = _template(recipe)
  path = tmp_path / train_lib.CHECKPOINT_NAME
  train_lib.save_checkpoint(path, ts)
  good = path.read_bytes()

  def broken_write(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr("os.fsync", broken_write)
  with pytest.raises(OSError, match="disk full"):
    train_lib.save_checkpoint(path, ts._replace(step=ts.step + 5))
  assert path.read_bytes() == good
  assert [p.name for p in tmp_path.iterdir()] == [train_lib.CHECKPOINT_NAME]


def test_frozen_parts_do_not_move(tmp_path, synthetic_train):
  recipe = TrainConfig(steps=5, batch_size=32, learning_rate=1e-2, warmup_steps=0)
  init = _template(recipe)
  result = _train(SMALL_CONV, recipe, tmp_path, images=synthetic_train[:1024],
                           progress=False, devices=ONE_DEVICE, init_params=init.params,
                           init_state=init.state, frozen=("encoder", "codebook"))
  for module, leaves in result.params.items():
    for name, value in leaves.items():
      same = np.array_equal(value, init.params[module][name])
      assert same == (part_of(module, part_prefixes(SMALL_CONV)) != "decoder"), module
  _tree_equal(result.state, init.state)


def test_batches_are_seeded_and_resumable(mnist_train):
  images = mnist_train[:1000]
  a = data_lib.batches(images, 64, seed=3)
  seq = [next(a) for _ in range(20)]
  b = data_lib.batches(images, 64, seed=3, start_step=17)
  np.testing.assert_array_equal(next(b), seq[17])
  assert not np.array_equal(next(data_lib.batches(images, 64, seed=4)), seq[0])


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="not prepared.*download_and_prepare"):
    data_lib.load_images("mnist", "test", data_dir=tmp_path)


def test_cached_split_equals_decoded_split(tfds_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("VQZOO_CACHE", str(tmp_path))
  first = data_lib.load_images("mnist", "test[:500]", tfds_dir)
  assert list(tmp_path.rglob("*.npy"))
  second = data_lib.load_images("mnist", "test[:500]", tfds_dir)
  np.testing.assert_array_equal(first, second)
  assert first.shape == (500, 28, 28, 1) and first.dtype == np.uint8


def test_atomic_writes_get_the_usual_file_permissions(tmp_path):
  import os
  import stat
  from vqzoo.io import atomic_write_bytes
  path = atomic_write_bytes(tmp_path / "f.bin", b"data")
  mask = os.umask(0)
  os.umask(mask)
  assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
  assert path.read_bytes() == b"data"


@pytest.mark.parametrize("ema", [False, True])
def test_user_defined_encoder_and_decoder_train_through_the_public_api(tmp_path, mnist_train, ema):
  """A 2-layer MLP pair written here, either quantizer, trained by vqzoo.training.train."""
  import haiku as hk
  import jax.numpy as jnp
  from vqzoo.nn import VQVAE, VectorQuantizer, VectorQuantizerEMA

  class TwoLayerEncoder(hk.Module):
    def __call__(self, x):
      return hk.Linear(16)(jax.nn.relu(hk.Linear(64)(hk.Flatten()(x))))

  class TwoLayerDecoder(hk.Module):
    def __call__(self, z):
      return jnp.reshape(jax.nn.sigmoid(hk.Linear(784)(jax.nn.relu(hk.Linear(64)(z)))),
                         (-1, 28, 28, 1))

  quantizer = VectorQuantizerEMA if ema else VectorQuantizer

  def factory():
    return VQVAE(TwoLayerEncoder(name="enc"), TwoLayerDecoder(name="dec"),
                 quantizer(embedding_dim=16, num_embeddings=64, commitment_cost=0.25,
                           dead_code_threshold=0.5, cross_replica_axis="batch"))

  recipe = TrainConfig(steps=120, batch_size=64, learning_rate=2e-3, warmup_steps=10)
  result = _train(factory, recipe, tmp_path, images=mnist_train[:8192], progress=False,
                 devices=jax.local_devices()[:2], log_every=20, frozen=("encoder",) if ema else ())
  lines = [json.loads(l) for l in (tmp_path / train_lib.METRICS_NAME).read_text().splitlines()]
  assert result.step == 120 and lines[-1]["mse"] < 0.8 * lines[0]["mse"]
  assert {m.split("/")[0] for m in result.params} == {"enc", "dec"} | (
      set() if ema else {"vector_quantizer"})  # the EMA codebook is state


# ----------------------------------------------------------------------------- workdir rules

TINY = TrainConfig(steps=6, batch_size=32, learning_rate=1e-3, warmup_steps=2)


def _run(workdir, images, recipe=TINY, **kwargs):
  kwargs = {"devices": ONE_DEVICE, **kwargs}
  return _train(SMALL_CONV, recipe, workdir, images=images, **kwargs)


def _logged_steps(workdir):
  lines = (workdir / train_lib.METRICS_NAME).read_text().splitlines()
  return [json.loads(line)["step"] for line in lines]


def test_a_run_removes_stale_checkpoint_temp_files_and_nothing_else(tmp_path, synthetic_train):
  stale = [tmp_path / ".checkpoint.safetensors.x1y2z3ab.tmp",
           tmp_path / ".checkpoint.safetensors.k_9q0w4e.tmp"]
  kept = [tmp_path / "notes.txt", tmp_path / ".checkpoint.safetensors.keep",
          tmp_path / ".model.safetensors.x1y2z3ab.tmp", tmp_path / "checkpoint.safetensors.tmp",
          tmp_path / "sub" / ".checkpoint.safetensors.x1y2z3ab.tmp"]
  for path in stale + kept:
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"half a checkpoint")
  _run(tmp_path, synthetic_train[:2048], until_step=1)
  assert not any(path.exists() for path in stale)
  assert all(path.read_bytes() == b"half a checkpoint" for path in kept)


def test_resume_truncates_metrics_logged_after_the_checkpoint(tmp_path, synthetic_train, monkeypatch):
  images = synthetic_train[:2048]
  _run(tmp_path / "straight", images, log_every=1)
  _run(tmp_path / "w", images, log_every=1, until_step=2)
  from vqzoo.training import checkpoint
  real_save = checkpoint.save

  def killed_at_step_4(path, ts, *args, **kwargs):
    if int(ts.step) >= 4:
      raise KeyboardInterrupt  # a run killed after logging steps 3 and 4, before saving 4
    return real_save(path, ts, *args, **kwargs)
  monkeypatch.setattr(checkpoint, "save", killed_at_step_4)
  with pytest.raises(KeyboardInterrupt):
    _run(tmp_path / "w", images, log_every=1, checkpoint_every=4, resume=True)
  assert _logged_steps(tmp_path / "w") == [1, 2, 3, 4]
  monkeypatch.setattr(checkpoint, "save", real_save)
  _run(tmp_path / "w", images, log_every=1, resume=True)
  assert _logged_steps(tmp_path / "w") == [1, 2, 3, 4, 5, 6]
  assert ((tmp_path / "w" / train_lib.METRICS_NAME).read_text()
          == (tmp_path / "straight" / train_lib.METRICS_NAME).read_text())


def test_a_fresh_run_refuses_to_clobber_a_checkpoint_unless_told(tmp_path, synthetic_train):
  images = synthetic_train[:2048]
  _run(tmp_path, images, until_step=2, log_every=1)
  before = (tmp_path / train_lib.CHECKPOINT_NAME).read_bytes()
  with pytest.raises(FileExistsError, match=r"resume=True.*--resume.*overwrite=True.*--overwrite"):
    _run(tmp_path, images, until_step=3)
  assert (tmp_path / train_lib.CHECKPOINT_NAME).read_bytes() == before
  assert _logged_steps(tmp_path) == [1, 2]
  result = _run(tmp_path, images, until_step=1, log_every=1, overwrite=True)
  assert result.step == 1 and _logged_steps(tmp_path) == [1]
  ckpt = train_lib.load_checkpoint(tmp_path / train_lib.CHECKPOINT_NAME, _template(TINY))
  assert int(ckpt.step) == 1


def test_resume_without_a_checkpoint_is_an_error(tmp_path, synthetic_train):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    _run(tmp_path, synthetic_train[:2048], resume=True)
  assert not (tmp_path / train_lib.CHECKPOINT_NAME).exists()


def test_resume_checks_the_step_count_and_the_recipe(tmp_path, synthetic_train):
  images = synthetic_train[:2048]
  _run(tmp_path, images, until_step=4)
  with pytest.raises(ValueError, match="checkpoint is at step 4, beyond --steps 3"):
    _run(tmp_path, images, TrainConfig(**{**TINY.to_dict(), "steps": 3}), resume=True,
         extend_schedule=True)
  longer = TrainConfig(**{**TINY.to_dict(), "steps": 8})
  with pytest.raises(ValueError, match=r"steps 6 -> 8.*extend_schedule=True"):
    _run(tmp_path, images, longer, resume=True)
  other_lr = TrainConfig(**{**TINY.to_dict(), "learning_rate": 3e-3})
  with pytest.raises(ValueError, match="learning_rate"):
    _run(tmp_path, images, other_lr, resume=True, extend_schedule=True)
  result = _run(tmp_path, images, longer, resume=True, extend_schedule=True)
  assert result.step == 8
  # The checkpoint now records the extended recipe: resuming it needs no flag.
  assert _run(tmp_path, images, longer, resume=True).step == 8


def test_a_second_run_of_the_same_model_and_recipe_compiles_nothing(tmp_path, synthetic_train):
  """Init and step are compiled once per process (a resume, a second run in a notebook), and
  a run with the CPU tricks off never reuses the tricks' programs."""
  images = synthetic_train[:512]
  first = _run(tmp_path / "a", images)
  _, traced = traces_during(lambda: _run(tmp_path / "b", images, until_step=3))
  assert traced == 0
  resumed, traced = traces_during(lambda: _run(tmp_path / "b", images, resume=True))
  assert traced == 0 and resumed.step == TINY.steps
  _tree_equal(first.params, resumed.params)
  with cpu_tuning.disabled():
    _, traced = traces_during(lambda: _run(tmp_path / "c", images))
  assert traced >= 2  # its own init and step


def test_extend_schedule_recomputes_the_schedule_from_the_resumed_step(tmp_path, synthetic_train):
  """Extending equals a run on the new schedule whose first steps followed the old one."""
  images = synthetic_train[:2048]
  longer = TrainConfig(**{**TINY.to_dict(), "steps": 10})
  _run(tmp_path / "a", images, until_step=3)
  extended = _run(tmp_path / "a", images, longer, resume=True, extend_schedule=True)
  ckpt = train_lib.load_checkpoint(tmp_path / "a" / train_lib.CHECKPOINT_NAME,
                                   _template(longer))
  _run(tmp_path / "b", images, until_step=3)
  base = train_lib.load_checkpoint(tmp_path / "b" / train_lib.CHECKPOINT_NAME, _template(TINY))
  train_lib.save_checkpoint(tmp_path / "b" / train_lib.CHECKPOINT_NAME, base, longer)
  reference = _run(tmp_path / "b", images, longer, resume=True)
  assert extended.step == reference.step == int(ckpt.step) == 10
  _tree_equal(extended.params, reference.params)


def test_nan_error_says_when_and_that_no_checkpoint_exists(tmp_path, synthetic_train):
  recipe = TINY
  bad = _template(recipe)
  bad_params = jax.tree_util.tree_map(lambda x: np.full_like(x, np.nan), bad.params)
  with pytest.raises(FloatingPointError) as e:
    _run(tmp_path, synthetic_train[:2048], init_params=bad_params, init_state=bad.state,
         log_every=3)
  message = str(e.value)
  assert "step 1" in message and "step 3" in message, message
  assert "no checkpoint" in message.lower(), message
  assert not (tmp_path / train_lib.CHECKPOINT_NAME).exists()


def test_nan_error_names_the_earlier_checkpoint(tmp_path, synthetic_train):
  images = synthetic_train[:2048]
  _run(tmp_path, images, until_step=2)
  ckpt_path = tmp_path / train_lib.CHECKPOINT_NAME
  ts = train_lib.load_checkpoint(ckpt_path, _template(TINY))
  nan = ts._replace(params=jax.tree_util.tree_map(lambda x: np.full_like(x, np.nan), ts.params))
  train_lib.save_checkpoint(ckpt_path, nan, TINY)
  before = ckpt_path.read_bytes()
  with pytest.raises(FloatingPointError) as e:
    _run(tmp_path, images, resume=True, log_every=1)
  message = str(e.value)
  assert "at step 3" in message and f"{ckpt_path}" in message and "step 2" in message, message
  assert "no checkpoint" not in message.lower(), message
  assert ckpt_path.read_bytes() == before


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_corrupt_checkpoint_is_named_on_resume(tmp_path, synthetic_train, damage):
  images = synthetic_train[:2048]
  _run(tmp_path, images, until_step=2)
  path = tmp_path / train_lib.CHECKPOINT_NAME
  data = path.read_bytes()
  path.write_bytes({"truncate": data[:len(data) // 2], "garbage": b"\x13" * 4096,
                    "empty": b""}[damage])
  with pytest.raises(ValueError, match=f"{path}.*(truncated|corrupt)"):
    _run(tmp_path, images, resume=True)
  with pytest.raises(ValueError, match=str(path)):
    train_lib.load_checkpoint(path, _template(TINY))


def test_a_wrong_split_name_is_not_reported_as_a_missing_dataset(tfds_dir):
  with pytest.raises(ValueError, match="no split 'validation'.*test, train"):
    data_lib.load_images("mnist", "validation", tfds_dir)
  with pytest.raises(ValueError, match="no split"):
    data_lib.load_labels("mnist", "valid[:10]", tfds_dir)


def test_the_progress_bar_counts_completed_steps(tmp_path, synthetic_train, monkeypatch):
  """Each tick of the bar comes after that step's results were waited for, not at dispatch."""
  import tqdm.auto
  waited = []  # every block_until_ready the loop makes
  ticks = []  # (bar position after the tick, waits made before it)
  real_wait = jax.block_until_ready

  def wait(tree):
    waited.append(1)
    return real_wait(tree)

  class Bar:
    def __init__(self, *args, total=None, initial=0, **kwargs):
      self.n, self.total = initial, total

    def update(self, k=1):
      self.n += k
      ticks.append((self.n, len(waited)))

    def set_postfix(self, *args, **kwargs):
      pass

    def set_postfix_str(self, *args, **kwargs):
      pass

    def close(self):
      pass

  monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
  monkeypatch.setattr(jax, "block_until_ready", wait)
  _run(tmp_path, synthetic_train[:2048], progress=True)
  assert [n for n, _ in ticks] == list(range(1, TINY.steps + 1))
  assert all(waits >= n for n, waits in ticks), ticks
