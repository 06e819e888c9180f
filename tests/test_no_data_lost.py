"""Nothing already stored is lost: saves killed or out of space, and decode over a folder.

Kills: a forked child repeats the save and gets SIGKILL at a random instant; then the folder
must load, as one of the two models, and the next save must leave no leftover. Forking the
test process reuses its loaded models (starting a fresh interpreter per kill would cost
seconds); the child only writes files, which needs no JAX computation.
"""

import errno
import json
import os
import random
import signal
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vqzoo
from vqzoo import folders
from vqzoo.cli import main

KILLS = 20


@pytest.fixture(scope="module")
def two_models():
  """Two models of different sizes; both with a prior, so every file is exercised."""
  return vqzoo.load("mnist-mlp"), vqzoo.load("mnist-conv-ema")


def _leftovers(folder: Path) -> list[str]:
  return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def _digest(folder: Path) -> str:
  return vqzoo.load(folder).source["manifest_sha256"]


def _kill_while_saving(saves, rng: random.Random, seconds: float) -> tuple[int, bool]:
  """Forks a child that runs ``saves[i % len(saves)]()`` for i = 0, 1, ... and kills it after
  a random delay up to ``seconds``; returns (saves it completed, whether it was mid-save)."""
  read, write = os.pipe()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # JAX warns that a fork may deadlock; the child runs no JAX
    pid = os.fork()
  if pid == 0:  # the child: save for ever, one byte on the pipe after each save
    try:
      os.close(read)
      for i in range(1 << 30):
        saves[i % len(saves)]()
        os.write(write, b".")
    finally:
      os._exit(1)
  os.close(write)
  try:
    time.sleep(rng.uniform(0, seconds))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    done = len(os.read(read, 1 << 20))
  finally:
    os.close(read)
  return done, os.WIFSIGNALED(status)


def _save_timer(save) -> float:
  start = time.perf_counter()
  save()
  return time.perf_counter() - start


def test_save_pretrained_killed_at_random_instants_leaves_a_loadable_folder(tmp_path,
                                                                           two_models):
  a, b = two_models
  out = tmp_path / "model"
  saves = [lambda: a.save_pretrained(out), lambda: b.save_pretrained(out)]
  seconds = 2.5 * max(_save_timer(s) for s in saves)  # also warms every array's host copy
  expected = {a.source["manifest_sha256"], b.source["manifest_sha256"]}
  seed = random.randrange(1 << 32)
  rng = random.Random(seed)
  seen_leftovers = 0
  for kill in range(KILLS):
    done, killed = _kill_while_saving(saves, rng, seconds)
    assert killed, f"kill {kill} (seed {seed}): the child ended by itself"
    seen_leftovers += bool(_leftovers(out))
    assert _digest(out) in expected, f"kill {kill} (seed {seed}) after {done} saves"
  assert seen_leftovers > 0, "no kill landed inside a save; the test proves nothing"
  a.save_pretrained(out)
  assert _leftovers(out) == [] and _digest(out) == a.source["manifest_sha256"]
  assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors",
                                     "prior.json", "prior.safetensors"]


@pytest.mark.parametrize("step", range(5))
def test_a_swap_interrupted_at_each_step_leaves_the_old_or_the_new_model(tmp_path, two_models,
                                                                         step):
  """A crash 0 while writing the new folder, 1 before marking it complete, 2 before moving the
  old one aside, 3 between that and moving the new one in, 4 while deleting the old one. Up
  to 2 the old model stays; from 3 on the new one is read."""
  old, new = two_models
  out = tmp_path / "model"
  old.save_pretrained(out)
  new.save_pretrained(tmp_path / "warm")  # host copies of its arrays, before the fork
  pid = os.fork()
  if pid == 0:
    try:
      calls = {"rename": 0}
      real_rename, real_rmtree = os.rename, folders.shutil.rmtree

      def rename(src, dst):
        if calls["rename"] == step - 1:
          os._exit(9)
        calls["rename"] += 1
        real_rename(src, dst)

      def rmtree(path, **kwargs):
        if step == 4 and ".old-" in str(path):
          os._exit(9)
        real_rmtree(path, **kwargs)
      folders.os.rename, folders.shutil.rmtree = rename, rmtree
      if step == 0:
        folders.os.chmod = lambda *_: os._exit(9)  # right after the new folder is made
      new.save_pretrained(out)
    finally:
      os._exit(0)
  _, status = os.waitpid(pid, 0)
  assert os.WEXITSTATUS(status) == 9
  assert _leftovers(out), "the crash left nothing to recover from"
  wanted = old if step < 3 else new
  assert _digest(out) == wanted.source["manifest_sha256"]
  old.save_pretrained(out)
  assert _leftovers(out) == [] and _digest(out) == old.source["manifest_sha256"]


def _capture_save(monkeypatch, module) -> list:
  """Records each (model, folder, kwargs) that ``module.save_model_folder`` is called with."""
  real, calls = module.save_model_folder, []

  def spy(model, path, **kwargs):
    calls.append((model, Path(path), kwargs))
    return real(model, path, **kwargs)
  monkeypatch.setattr(module, "save_model_folder", spy)
  return calls


def _digests(calls, tmp_path: Path) -> list[str]:
  """The manifest digest of each recorded save's model."""
  out = []
  for i, (model, _, _) in enumerate(calls):
    model.save_pretrained(tmp_path / f"probe{i}")
    out.append(_digest(tmp_path / f"probe{i}"))
  return out


def _kill_repeatedly(saves, out: Path, check) -> None:
  """Kills ``saves`` (run in turn) at KILLS random instants, ``check(kill, seed)`` after each;
  then one save must leave no leftover."""
  seconds = 2.5 * max(_save_timer(s) for s in saves)
  seed = random.randrange(1 << 32)
  rng = random.Random(seed)
  interrupted = 0
  for kill in range(KILLS):
    _kill_while_saving(saves, rng, seconds)
    interrupted += bool(_leftovers(out))
    check(kill, seed)
  assert interrupted > 0, "no kill landed inside a save; the test proves nothing"
  saves[0]()
  assert _leftovers(out) == []


def _kill_the_save_of_two_runs(calls, out: Path, check) -> None:
  """Kills the final saves of two real runs, repeated, at random instants."""
  from vqzoo.pretrained.saving import save_model_folder
  _kill_repeatedly([lambda c=c: save_model_folder(c[0], c[1], **c[2]) for c in calls], out,
                   check)


def test_fit_prior_out_killed_while_saving_leaves_a_loadable_folder(tmp_path, tfds_dir,
                                                                   monkeypatch, capsys):
  import vqzoo.pretrained.saving as saving
  calls = _capture_save(monkeypatch, saving)
  out = tmp_path / "with-prior"
  for run, extra in enumerate([[], ["--unconditional"]]):  # the second run replaces the first
    assert main(["fit-prior", "mnist-mlp", "--dataset", "mnist", "--split", "train[:512]",
                 "--eval-split", "test[:64]", "--steps", "3", "--batch-size", "32", *extra,
                 "--out", str(out), "--workdir", str(tmp_path / f"w{run}"),
                 "--data-dir", tfds_dir, "--no-progress"]) == 0
  capsys.readouterr()
  monkeypatch.undo()
  runs = _digests(calls, tmp_path)
  assert len(calls) == 2 and len(set(runs)) == 2 and _digest(out) == runs[1]

  def check(kill, seed):
    model = vqzoo.load(out)
    assert model.source["manifest_sha256"] in runs, f"kill {kill} (seed {seed})"
    assert model.prior.num_classes == (10 if model.source["manifest_sha256"] == runs[0] else 0)
  _kill_the_save_of_two_runs(calls, out, check)


def test_finetune_out_killed_while_saving_keeps_model_and_metrics_together(
    tmp_path, mnist_test, monkeypatch, capsys):
  import vqzoo.training.finetuning as finetuning
  calls = _capture_save(monkeypatch, finetuning)
  images = tmp_path / "images"
  images.mkdir()
  for i in range(24):
    Image.fromarray(mnist_test[i, ..., 0]).save(images / f"{i}.png")
  out = tmp_path / "tuned"
  for seed in (1, 2):
    assert main(["finetune", "--from", "mnist-mlp", "--images", str(images), "--out", str(out),
                 "--steps", "2", "--batch-size", "8", "--warmup-steps", "1", "--seed", str(seed),
                 "--workdir", str(tmp_path / f"w{seed}"), "--no-progress"]) == 0
  capsys.readouterr()
  monkeypatch.undo()
  metrics_of = {digest: kwargs["extra_files"]["metrics.json"]  # model digest -> metrics.json
                for digest, (_, _, kwargs) in zip(_digests(calls, tmp_path), calls)}
  assert len(calls) == 2 and len(metrics_of) == 2

  def check(kill, seed):
    digest = _digest(out)
    assert (out / "metrics.json").read_bytes() == metrics_of[digest], f"kill {kill} ({seed})"
  _kill_the_save_of_two_runs(calls, out, check)


def test_a_full_disk_while_saving_keeps_the_old_model(tmp_path, two_models, monkeypatch):
  """Always runs: the second file written fails with ENOSPC, as on a full disk."""
  old, new = two_models
  out = tmp_path / "model"
  old.save_pretrained(out)
  from vqzoo.pretrained import model as model_module
  real, written = model_module.atomic_write_bytes, []

  def write(path, data):
    if written:
      raise OSError(errno.ENOSPC, "No space left on device", str(path))
    written.append(path)
    return real(path, data)
  monkeypatch.setattr(model_module, "atomic_write_bytes", write)
  with pytest.raises(OSError) as e:
    new.save_pretrained(out)
  assert e.value.errno == errno.ENOSPC and written
  assert _digest(out) == old.source["manifest_sha256"] and _leftovers(out) == []


@pytest.fixture
def small_disk(tmp_path):
  """A 1200 KiB tmpfs: one small model fits, a second beside it does not."""
  where = tmp_path / "small"
  where.mkdir()
  if os.geteuid() != 0:
    pytest.skip("mounting a small tmpfs needs root; the simulated full disk test still runs")
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(where)],
                        capture_output=True, text=True)
  if done.returncode != 0:
    pytest.skip(f"this platform allows no tmpfs mount ({done.stderr.strip()}); the simulated "
                "full disk test still runs")
  yield where
  subprocess.run(["umount", str(where)], check=True)


def test_a_really_full_disk_while_saving_keeps_the_old_model(small_disk, two_models):
  small, big = two_models
  out = small_disk / "model"
  small.save_pretrained(out)
  with pytest.raises(OSError) as e:
    big.save_pretrained(out)
  assert e.value.errno == errno.ENOSPC
  assert _digest(out) == small.source["manifest_sha256"] and _leftovers(out) == []
  with pytest.raises(OSError):
    small.save_pretrained(out)  # even the same model does not fit twice: still the old one
  assert _digest(out) == small.source["manifest_sha256"] and _leftovers(out) == []


def test_saving_never_deletes_files_that_are_not_a_models(tmp_path, two_models):
  a, _ = two_models
  folder = tmp_path / "notes"
  folder.mkdir()
  (folder / "thesis.tex").write_text("mine")
  with pytest.raises(FileExistsError, match="thesis.tex"):
    a.save_pretrained(folder)
  assert os.listdir(folder) == ["thesis.tex"]
  assert main(["fit-prior", "mnist-mlp", "--dataset", "mnist", "--out", str(folder)]) == 2


def test_saving_replaces_an_old_folder_with_stale_temporary_files(tmp_path, two_models,
                                                                  monkeypatch):
  a, _ = two_models
  out = tmp_path / "model"
  a.save_pretrained(out)
  for stale in (".config.json.k2j4_x.tmp", ".model.safetensors.0a9z.tmp"):  # earlier kills
    (out / stale).write_bytes(b"partial")
  a.save_pretrained(out)
  assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors",
                                     "prior.json", "prior.safetensors"]
  monkeypatch.chdir(out)
  with pytest.raises(ValueError, match="working directory"):
    a.save_pretrained(".")
  with pytest.raises(NotADirectoryError, match="not a folder"):
    a.save_pretrained(out / "config.json")
  assert _digest(out) == a.source["manifest_sha256"]


# ---------------------------------------------------------------------------- decode

NAMES = ["a.png", "a.jpg", "sub/b.png", "sub_b.png"]


@pytest.fixture
def encoded(tmp_path, mnist_test):
  """A folder of 4 images whose output names collide, and its codes file."""
  folder = tmp_path / "photos"
  (folder / "sub").mkdir(parents=True)
  for i, name in enumerate(NAMES):
    Image.fromarray(mnist_test[i, ..., 0]).save(folder / name, quality=95)
  codes = tmp_path / "codes.npz"
  assert main(["encode", "mnist-mlp", "--images", str(folder), "--out", str(codes),
               "--no-progress"]) == 0
  return folder, codes


def test_decode_never_writes_over_the_images_that_were_encoded(encoded, capsys):
  folder, codes = encoded
  before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
  capsys.readouterr()
  for extra in ([], ["--overwrite"]):
    assert main(["decode", "mnist-mlp", str(codes), "--out", str(folder), "--no-progress",
                 *extra]) == 2
    err = capsys.readouterr().err
    assert "looks like the folder that was encoded" in err and len(err.splitlines()) == 1
  assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_decode_gives_every_image_its_own_file(encoded, tmp_path, capsys):
  folder, codes = encoded
  out = tmp_path / "decoded"
  capsys.readouterr()
  assert main(["decode", "mnist-mlp", str(codes), "--out", str(out), "--no-progress",
               "--json"]) == 0
  captured = capsys.readouterr()
  summary = json.loads(captured.out)
  assert summary["images"] == 4 and len(os.listdir(out)) == 4
  assert "a.jpg -> a-2.png" in captured.err and "sub/b.png -> sub_b-2.png" in captured.err
  model = vqzoo.load("mnist-mlp")
  from vqzoo.image_folder import load_image_folder
  images, paths = load_image_folder(folder, model.config.image_shape)
  by_name = {os.path.relpath(p, folder): image for p, image in zip(paths, images)}
  for source, written in [("a.png", "a.png"), ("a.jpg", "a-2.png"), ("sub_b.png", "sub_b.png"),
                          ("sub/b.png", "sub_b-2.png")]:
    expected = np.round(model.reconstruct(by_name[source][None])[0, ..., 0] * 255)
    np.testing.assert_allclose(np.asarray(Image.open(out / written)), expected, atol=1)
  # A second decode refuses to overwrite them unless told to.
  assert main(["decode", "mnist-mlp", str(codes), "--out", str(out), "--no-progress"]) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert main(["decode", "mnist-mlp", str(codes), "--out", str(out), "--no-progress",
               "--overwrite"]) == 0
  assert len(os.listdir(out)) == 4


def test_decode_of_codes_that_share_one_name_writes_every_image(tmp_path, capsys):
  from vqzoo.pretrained.tokenizing import encode_to_file
  model = vqzoo.load("mnist-mlp")
  codes = tmp_path / "same.npz"
  digits = np.asarray(vqzoo.cli._bundled_digits()[:10])
  encode_to_file(model, "mnist-mlp", digits, codes, names=["same.png"] * 10, progress=False)
  out = tmp_path / "out"
  assert main(["decode", "mnist-mlp", str(codes), "--out", str(out), "--no-progress"]) == 0
  assert len(os.listdir(out)) == 10
  assert "9 images would have shared a file name" in capsys.readouterr().err


def test_bundle_killed_at_random_instants_keeps_weights_and_metrics_together(tmp_path,
                                                                            monkeypatch):
  """``scripts/train.py --bundle`` writes the variant's folder (model + metrics.json) whole."""
  from vqzoo.pretrained import registry
  monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "scripts"))
  import zoo_tools
  entry = registry.get_entry("mnist-mlp")
  metrics = [{**entry.metrics, "run": i} for i in range(2)]
  models = [vqzoo.load("mnist-mlp"), vqzoo.load("mnist-mlp-ema")]
  monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
  saves = [lambda i=i: zoo_tools.bundle_variant("mnist-mlp", models[i], metrics[i], tmp_path)
           for i in range(2)]
  folder = tmp_path / "weights" / "mnist-mlp"
  runs = {m.source["manifest_sha256"]: i for i, m in enumerate(models)}

  def check(kill, seed):
    run = runs[_digest(folder)]
    assert entry.metrics["run"] == run, f"{kill} ({seed})"  # read as load reads the weights
  _kill_repeatedly(saves, folder, check)


def test_a_failed_encode_keeps_the_old_codes_file(tmp_path, monkeypatch, capsys):
  codes = tmp_path / "codes.npz"
  assert main(["encode", "mnist-mlp", "--dataset", "mnist:test[:8]", "--out", str(codes),
               "--no-progress"]) == 0
  before = codes.read_bytes()
  from vqzoo import io as vqzoo_io

  def no_space(fd):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(vqzoo_io.os, "fsync", no_space)
  assert main(["encode", "mnist-mlp", "--dataset", "mnist:test[:16]", "--out", str(codes),
               "--no-progress"]) == 2
  assert "No space left" in capsys.readouterr().err
  assert codes.read_bytes() == before and os.listdir(tmp_path) == ["codes.npz"]


def test_a_bundles_metrics_are_read_from_the_copy_a_crash_between_the_renames_left(
    tmp_path, monkeypatch):
  """Between the two renames of a replacement the folder is missing and its complete copies sit
  beside it; the registry's metrics come from the same copy that ``load`` reads."""
  from vqzoo.pretrained import registry
  ready = tmp_path / ".mnist-mlp.ready-abc"
  vqzoo.load("mnist-mlp").save_pretrained(ready)
  monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
  entry = registry.get_entry("mnist-mlp")
  (ready / "metrics.json").write_text(json.dumps({"run": 1}))
  assert not entry.bundled_dir.exists() and entry.metrics == {"run": 1}
  assert vqzoo.load("mnist-mlp", local_files_only=True).source["bundled"]
