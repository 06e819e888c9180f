"""Real multi-process training: 2 local processes (127.0.0.1, gloo) train one model together.

Each test starts subprocesses (this file run as a script is the worker) with their own
``XLA_FLAGS`` and a timeout, so a broken run fails the test instead of hanging the suite.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _util import FAST_COMPILE, REPO, assert_trees_equal  # noqa: E402
THIS = Path(__file__).resolve()
RUN_TIMEOUT_S = 240  # per subprocess: far above a healthy run, so a hang fails, never blocks
# The worker's recipe: a few dozen steps of each model on a slice of MNIST.
STEPS, BATCH, CHECKPOINT_EVERY, IMAGES = 60, 32, 10, 4096


# ----------------------------------------------------------------------------- the worker


def _worker(argv) -> int:
  """Trains the tiny MLP and conv nets and saves each one's final params and state."""
  from vqzoo import cli_devices
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--dump", required=True, help="folder for ARCH-pPROCESS.npz")
  parser.add_argument("--arch", action="append", choices=("mlp", "conv"))
  parser.add_argument("--resume", action="store_true")
  parser.add_argument("--init", help="folder of ARCH-init.safetensors: start from it if it exists, "
                                     "else write the fresh init there")
  cli_devices.add_flags(parser)
  args = parser.parse_args(argv)
  multi_process = cli_devices.start_from_flags(args, "mlp")  # the test passes --cpu-devices
  with cli_devices.fail_fast(multi_process):  # as the entry points: a failure ends it at once
    return _train(args)


def _train(args) -> int:
  import jax
  from vqzoo.configs import (ConvConfig, MLPConfig, ModelConfig, QuantizerConfig, RunConfig,
                             TrainConfig)
  from vqzoo.pretrained import serialization
  from vqzoo.training import data, trainer
  configs = {
      "mlp": ModelConfig(mlp=MLPConfig((64, 32), (64,)),
                         quantizer=QuantizerConfig(64, 32, dead_code_threshold=0.5)),
      "conv": ModelConfig(arch="conv", conv=ConvConfig(16, 1, 8),
                          quantizer=QuantizerConfig(32, 8, ema=True, dead_code_threshold=0.5)),
  }
  images = data.load_images("mnist", "train")[:IMAGES]
  recipe = TrainConfig(steps=STEPS, batch_size=BATCH, learning_rate=2e-3, warmup_steps=5)
  for arch in args.arch or ("mlp", "conv"):
    start = time.perf_counter()
    params = state = None
    if args.init:  # a conv init is ~170 small compiles: done once, by the reference run
      path = Path(args.init) / f"{arch}-init.safetensors"
      if path.exists():
        params, state, _ = serialization.from_bytes(path.read_bytes())
      else:
        ts = trainer.init_train_state(configs[arch], trainer.make_optimizer(recipe), recipe.seed)
        params, state = jax.device_get((ts.params, ts.state))
        path.write_bytes(serialization.to_bytes(params, state))
    run = RunConfig(resume=args.resume, progress=False, log_every=CHECKPOINT_EVERY,
                    checkpoint_every=CHECKPOINT_EVERY)
    result = trainer.train(configs[arch], recipe, Path(args.workdir) / arch, images, run=run,
                           init=None if params is None else (params, state))
    leaves = jax.tree_util.tree_flatten_with_path((result.params, result.state))[0]
    np.savez(Path(args.dump) / f"{arch}-p{jax.process_index()}.npz",
             **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    print(f"process {jax.process_index()}/{jax.process_count()} {arch}: {result.step} steps in "
          f"{time.perf_counter() - start:.1f} s on {jax.device_count()} devices", flush=True)
  return 0


# ----------------------------------------------------------------------------- helpers


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def jax_cache() -> Path:
  """The suite's persistent compilation cache (conftest), which the workers share too: the
  first run compiles, the rest load."""
  return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])


def _env(cache: Path, cpu_devices: int | None = None) -> dict:
  """The worker's environment: its own XLA_FLAGS (not the suite's 8 devices), a shared cache."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_cpu_collective_call_terminate_timeout_seconds=600"
                       f" --xla_cpu_collective_timeout_seconds=600 {FAST_COMPILE}",
             JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("JAX_NUM_CPU_DEVICES", None)
  if cpu_devices is not None:
    env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={cpu_devices}"
  return env


def _start(cmd, log: Path, env: dict) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *map(str, cmd)], cwd=REPO, env=env,
                          stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, log: Path) -> int:
  try:
    return proc.wait(timeout=RUN_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    pytest.fail(f"{proc.args} did not finish in {RUN_TIMEOUT_S} s; log:\n{log.read_text()[-3000:]}")


def _pair(cmd, tmp: Path, name: str, cache: Path) -> list[subprocess.Popen]:
  """Starts ``cmd`` as processes 0 and 1 of a 2-process run on 127.0.0.1 (1 CPU device each)."""
  address = f"127.0.0.1:{_free_port()}"
  return [_start([*cmd, "--coordinator-address", address, "--num-processes", 2, "--process-id",
                  i, "--cpu-devices", 1], tmp / f"{name}-{i}.log", _env(cache))
          for i in range(2)]


def _check_all(procs, tmp: Path, name: str, expected=None) -> None:
  """Waits for ``procs`` (logs ``NAME-I.log``); fails unless they exit with ``expected`` (0s)."""
  codes = [_wait(p, tmp / f"{name}-{i}.log") for i, p in enumerate(procs)]
  expected = [0] * len(procs) if expected is None else expected
  if tuple(codes) != tuple(expected):
    logs = "\n".join(f"--- {name}-{i}.log\n{(tmp / f'{name}-{i}.log').read_text()[-3000:]}"
                     for i in range(len(procs)))
    pytest.fail(f"{name}: exit codes {codes}, expected {list(expected)}\n{logs}")


def _load(path: Path) -> dict:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


_assert_equal = assert_trees_equal


# ----------------------------------------------------------------------------- set-up, in-process


@pytest.fixture
def fake_jax_distributed(monkeypatch):
  """Records what would reach ``jax.distributed.initialize`` and the config updates before it."""
  import jax
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)

  def initialize(coordinator_address=None, num_processes=None, process_id=None,
                 local_device_ids=None, cluster_detection_method=None,
                 initialization_timeout=300, coordinator_bind_address=None,
                 heartbeat_timeout_seconds=100, shutdown_timeout_seconds=300):
    calls.append(("initialize", dict(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        shutdown_timeout_seconds=shutdown_timeout_seconds)))
  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  monkeypatch.setattr(jax.config, "update", lambda name, value: calls.append((name, value)))
  for family in ("VQZOO", "JAX"):
    for name in ("COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID"):
      monkeypatch.delenv(f"{family}_{name}", raising=False)
  monkeypatch.delenv("JAX_CPU_COLLECTIVES_IMPLEMENTATION", raising=False)
  return calls


def test_initialize_reads_the_jax_variables_itself_and_bounds_every_wait(fake_jax_distributed,
                                                                         monkeypatch):
  from vqzoo.training import distributed
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  cluster = distributed.initialize()
  assert cluster == ("10.0.0.1:1234", 4, 3, "JAX_* environment variables")
  # gloo first, then every setting passed explicitly, with bounded timeouts.
  assert fake_jax_distributed == [
      ("jax_cpu_collectives_implementation", "gloo"),
      ("initialize", dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3,
                          initialization_timeout=distributed.INITIALIZATION_TIMEOUT_S,
                          heartbeat_timeout_seconds=distributed.HEARTBEAT_TIMEOUT_S,
                          shutdown_timeout_seconds=distributed.SHUTDOWN_TIMEOUT_S))]


def test_initialize_prefers_arguments_then_vqzoo_then_jax_then_auto_detection(
    fake_jax_distributed, monkeypatch):
  from vqzoo.training import distributed
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "jax:1")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  assert distributed.resolve("arg:1", 3, 2).source == "arguments"
  monkeypatch.setenv("VQZOO_COORDINATOR_ADDRESS", "vq:1")
  monkeypatch.setenv("VQZOO_NUM_PROCESSES", "5")
  monkeypatch.setenv("VQZOO_PROCESS_ID", "0")
  assert distributed.resolve() == ("vq:1", 5, 0, "VQZOO_* environment variables")
  assert distributed.resolve(environ={}).source == "auto-detection"
  for name in ("VQZOO_COORDINATOR_ADDRESS", "VQZOO_NUM_PROCESSES", "VQZOO_PROCESS_ID",
               "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name)
  distributed.initialize(timeout_s=7)  # nothing given: JAX's own cluster auto-detection
  assert fake_jax_distributed[-1] == ("initialize", dict(
      coordinator_address=None, num_processes=None, process_id=None, initialization_timeout=7,
      heartbeat_timeout_seconds=distributed.HEARTBEAT_TIMEOUT_S,
      shutdown_timeout_seconds=distributed.SHUTDOWN_TIMEOUT_S))


@pytest.mark.parametrize("args, env, match", [
    (("127.0.0.1:5", None, None), {}, "num_processes, process_id"),
    ((None, None, None), {"VQZOO_NUM_PROCESSES": "2"}, "VQZOO_COORDINATOR_ADDRESS"),
    (("127.0.0.1", 2, 0), {}, "host:port"),
    (("127.0.0.1:70000", 2, 0), {}, "host:port"),
    (("127.0.0.1:5", 2, 2), {}, "process id < 2"),
    (("127.0.0.1:5", 0, 0), {}, "num_processes: expected an integer >= 1"),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two",
                          "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES: expected an integer"),
])
def test_bad_settings_are_named(fake_jax_distributed, monkeypatch, args, env, match):
  from vqzoo.training import distributed
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(ValueError, match=match):
    distributed.initialize(*args)
  assert not [c for c in fake_jax_distributed if c[0] == "initialize"]


def test_entry_point_flags(fake_jax_distributed, monkeypatch):
  from vqzoo import cli_devices
  from vqzoo.training import distributed
  counts = []
  monkeypatch.setattr(distributed, "set_cpu_devices", counts.append)
  parser = argparse.ArgumentParser()
  cli_devices.add_flags(parser)
  assert cli_devices.start_from_flags(parser.parse_args(["--cpu-devices", "3"]), "conv") is False
  assert counts == [3] and not fake_jax_distributed  # no flags: a single process
  monkeypatch.setattr(distributed, "cpu_devices_configured", lambda: False)
  cli_devices.start_from_flags(parser.parse_args([]), "conv")
  cli_devices.start_from_flags(parser.parse_args([]), "mlp")
  assert counts[1:] == [1, 1]  # the measured defaults (BENCHMARKS.md)
  with pytest.raises(ValueError, match="--process-id: needed"):
    cli_devices.start_from_flags(parser.parse_args(
        ["--coordinator-address", "127.0.0.1:5", "--num-processes", "2"]), "mlp")
  assert cli_devices.start_from_flags(parser.parse_args(
      ["--coordinator-address", "127.0.0.1:5", "--num-processes", "2", "--process-id", "1"]),
      "mlp") is True
  assert fake_jax_distributed[-1][1]["process_id"] == 1


# ----------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, jax_cache):
  """The worker as 1 process x 2 devices (the reference), then as 2 processes x 1 device."""
  tmp = tmp_path_factory.mktemp("distributed")
  for d in ("two", "one", "dump-two", "dump-one"):
    (tmp / d).mkdir()
  # The pair starts from the reference's init; an own init is the same (the kill test's run
  # inits itself and must end equal to this pair).
  init = ["--init", tmp]
  one = _start([THIS, "--workdir", tmp / "one", "--dump", tmp / "dump-one", *init],
               tmp / "one-0.log", _env(jax_cache, cpu_devices=2))
  _check_all([one], tmp, "one")
  # Then, not alongside (2 cores).
  pair = _pair([THIS, "--workdir", tmp / "two", "--dump", tmp / "dump-two", *init], tmp, "two",
               jax_cache)
  _check_all(pair, tmp, "two")
  return tmp


@pytest.mark.heavy
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_two_processes_train_one_model(runs, arch):
  p0, p1 = _load(runs / "dump-two" / f"{arch}-p0.npz"), _load(runs / "dump-two" / f"{arch}-p1.npz")
  _assert_equal(p0, p1)  # (a) bit for bit the same model in both processes
  one = _load(runs / "dump-one" / f"{arch}-p0.npz")
  for k in one:  # (b) what one process computes on the same global batches over 2 devices
    np.testing.assert_allclose(p0[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # Only process 0 wrote: one metrics line per logged step, equal to the reference's.
  lines, ref = ([json.loads(line) for line in (runs / d / arch / "metrics.jsonl").read_text()
                 .splitlines()] for d in ("two", "one"))
  assert [line["step"] for line in lines] == list(range(CHECKPOINT_EVERY, STEPS + 1,
                                                        CHECKPOINT_EVERY))
  assert len(lines) == len(ref)
  for a, b in zip(lines, ref):
    np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(a)], rtol=1e-4)
  for i in range(2):
    assert "2 devices" in (runs / f"two-{i}.log").read_text()


@pytest.mark.heavy
def test_a_killed_process_fails_the_other_fast_and_resume_is_bit_exact(runs, tmp_path,
                                                                        jax_cache):
  for d in ("work", "dump"):
    (tmp_path / d).mkdir()
  cmd = [THIS, "--workdir", tmp_path / "work", "--dump", tmp_path / "dump", "--arch", "mlp"]
  ckpt = tmp_path / "work" / "mlp" / "checkpoint.safetensors"
  pair = _pair(cmd, tmp_path, "killed", jax_cache)
  deadline = time.monotonic() + RUN_TIMEOUT_S
  while not ckpt.exists():  # the first checkpoint (step 10 of 60): mid-run
    if time.monotonic() > deadline or any(p.poll() is not None for p in pair):
      for p in pair:
        p.kill()
      pytest.fail("no checkpoint before the run ended: "
                  + (tmp_path / "killed-0.log").read_text()[-3000:])
    time.sleep(0.02)
  pair[1].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  code = _wait(pair[0], tmp_path / "killed-0.log")
  survived_s = time.monotonic() - killed_at
  pair[1].wait()
  log = (tmp_path / "killed-0.log").read_text()
  assert code != 0, log[-3000:]
  print(f"process 0 failed {survived_s:.1f} s after process 1 was killed")
  assert survived_s < 60, f"the survivor took {survived_s:.0f} s to fail"
  assert "another process most likely died" in log and "--resume" in log, log[-3000:]
  assert not (tmp_path / "dump" / "mlp-p0.npz").exists()  # it did stop mid-run
  # The checkpoint is intact (atomic writes) and mid-run; two processes resume it together.
  from vqzoo.training import trainer
  step = trainer.checkpoint_step(ckpt)
  assert step is not None and CHECKPOINT_EVERY <= step < STEPS
  resumed = _pair([*cmd, "--resume"], tmp_path, "resumed", jax_cache)
  _check_all(resumed, tmp_path, "resumed")
  straight = _load(runs / "dump-two" / "mlp-p0.npz")
  for i in range(2):
    _assert_equal(_load(tmp_path / "dump" / f"mlp-p{i}.npz"), straight)


def test_the_readme_two_process_command(tmp_path, jax_cache):
  """README "Scaling out": two processes on one machine, as written there (fewer steps)."""
  readme = (REPO / "README.md").read_text()
  port = _free_port()
  common = ["scripts/train.py", "--variant", "mnist-mlp", "--steps", "20", "--workdir",
            tmp_path / "two", "--out", tmp_path / "two-model", "--no-progress",
            "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2"]
  assert ("python scripts/train.py --variant mnist-mlp --workdir runs/two --out runs/two-model "
          "--no-progress \\\n    --coordinator-address 127.0.0.1:12355 --num-processes 2 "
          "--process-id 0 &") in readme
  procs = [_start([*common, "--process-id", i], tmp_path / f"readme-{i}.log", _env(jax_cache))
           for i in range(2)]
  _check_all(procs, tmp_path, "readme", expected=(1, 0))  # 20 steps miss the bar: status 1
  log0 = (tmp_path / "readme-0.log").read_text()
  assert '"variant": "mnist-mlp"' in log0 and "misses its bar" in log0
  assert '"variant"' not in (tmp_path / "readme-1.log").read_text()  # process 0 reports
  import vqzoo
  from vqzoo.training import trainer
  model = vqzoo.load(tmp_path / "two-model")
  assert model.config.arch == "mlp"
  assert trainer.checkpoint_step(tmp_path / "two" / trainer.CHECKPOINT_NAME) == 20
  assert len((tmp_path / "two" / trainer.METRICS_NAME).read_text().splitlines()) == 1


if __name__ == "__main__":
  sys.exit(_worker(sys.argv[1:]))
