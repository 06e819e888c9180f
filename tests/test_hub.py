"""vqzoo's Hub code driven through the real ``huggingface_hub`` client against a local Hub.

The server (``tests/hub_server.py``) speaks the endpoints the client uses to create a
repo, preupload, commit, read model info and resolve files; nothing leaves 127.0.0.1.
"""

import hashlib
import importlib.util
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from huggingface_hub import constants

import vqzoo
from vqzoo.cli import main as cli_main
from vqzoo.pretrained import registry, serialization
from vqzoo.pretrained.hub import HubError
from vqzoo.pretrained.integrity import manifest_digest
from vqzoo.pretrained import WEIGHTS_NAME, PretrainedVQVAE

from _util import REPO, compiled_init
from hub_server import hub  # noqa: F401  (the fixture)

DIGITS = Path(vqzoo.__file__).parent / "assets" / "mnist_test_digits.npy"
COMMIT_LEN = 40


# ---------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
  x = np.load(DIGITS, allow_pickle=False)
  assert x.shape == (32, 28, 28, 1) and x.dtype == np.uint8
  return x


@pytest.fixture(scope="module")
def model_a() -> PretrainedVQVAE:
  """A real (randomly initialised, seed 0) MLP VQ-VAE."""
  return PretrainedVQVAE(vqzoo.ModelConfig())


@pytest.fixture(scope="module")
def model_b() -> PretrainedVQVAE:
  """The same architecture from another init seed: every tensor differs from ``model_a``."""
  config = vqzoo.ModelConfig()
  params, state = compiled_init(vqzoo.build(config), jax.random.PRNGKey(1),
                                jnp.zeros((1, *config.image_shape)), True)
  return PretrainedVQVAE(config, params, state)


def flat(model) -> dict[str, np.ndarray]:
  return {**serialization.flatten(model.params, "params"), **serialization.flatten(model.state, "state")}


def assert_same_weights(a, b) -> None:
  fa, fb = flat(a), flat(b)
  assert sorted(fa) == sorted(fb)
  for key in fa:
    assert fa[key].dtype == fb[key].dtype and fa[key].shape == fb[key].shape, key
    assert fa[key].tobytes() == fb[key].tobytes(), f"{key} differs"


def assert_different_weights(a, b) -> None:
  fa, fb = flat(a), flat(b)
  assert any(fa[k].tobytes() != fb[k].tobytes() for k in fa)


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def cache_files(cache_dir) -> list[Path]:
  return [p for p in Path(cache_dir).rglob("*") if p.is_file() or p.is_symlink()]


def assert_no_partial_weights(cache_dir, weights_sha256: str) -> None:
  """No ``*.incomplete`` file, no weights blob and no weights snapshot entry in the cache."""
  files = cache_files(cache_dir)
  assert not [p for p in files if p.name.endswith(".incomplete")], files
  assert not [p for p in files if p.name == weights_sha256], files  # blobs are named by ETag
  assert not [p for p in files if p.name == WEIGHTS_NAME], files


def load_script(name: str):
  path = REPO / "scripts" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ---------------------------------------------------------------------- push and pull


def test_push_then_pull_into_empty_cache_is_bitwise_identical(hub, tmp_path, model_a, digits):
  info = model_a.push_to_hub("someone/tiny")
  assert len(info.oid) == COMMIT_LEN and info.oid == hub.head("someone/tiny")
  assert info.commit_url == f"{hub.url}/someone/tiny/commit/{info.oid}"
  stored = hub.files("someone/tiny")
  assert {"config.json", WEIGHTS_NAME, "README.md"} <= set(stored)
  assert json.loads(stored["config.json"]) == model_a.config.to_dict()
  commits = [r for r in hub.requests if r[0] == "POST" and "/commit/" in r[1]]
  assert commits and all(h.get("authorization") == "Bearer dummy" for _, _, h in commits)

  cache = tmp_path / "empty-cache"
  cache.mkdir()
  loaded = vqzoo.load("hf-hub:someone/tiny", cache_dir=str(cache))
  assert loaded is not model_a
  assert loaded.source == {
      "repo_id": "someone/tiny", "revision": "main", "commit": info.oid,
      "sha256": sha256(stored[WEIGHTS_NAME]),
      "manifest_sha256": manifest_digest({n: sha256(stored[n]) for n in ("config.json",
                                                                       WEIGHTS_NAME)}),
      "codec_sha256": manifest_digest({n: sha256(stored[n]) for n in ("config.json",
                                                                    WEIGHTS_NAME)})}
  assert loaded.config == model_a.config
  assert loaded.card == stored["README.md"].decode()
  assert_same_weights(loaded, model_a)
  recon = loaded.reconstruct(digits)
  assert recon.shape == (32, 28, 28, 1) and np.isfinite(recon).all()
  np.testing.assert_array_equal(recon, model_a.reconstruct(digits))
  np.testing.assert_array_equal(loaded.encode(digits), model_a.encode(digits))
  # Everything came over HTTP into the empty cache, under the pushed commit.
  snapshot = cache / "models--someone--tiny" / "snapshots" / info.oid
  assert (snapshot / WEIGHTS_NAME).read_bytes() == stored[WEIGHTS_NAME]


def test_each_pushed_revision_loads_by_commit_id(hub, tmp_path, model_a, model_b):
  assert_different_weights(model_a, model_b)
  first = model_a.push_to_hub("someone/tiny").oid
  second = model_b.push_to_hub("someone/tiny", commit_message="retrain").oid
  assert first != second and len(first) == len(second) == COMMIT_LEN
  assert hub.commits("someone/tiny")[-2:] == [first, second]
  # Unchanged config/card were skipped by the client, yet each commit keeps the full file set.
  assert hub.files("someone/tiny", first).keys() == hub.files("someone/tiny", second).keys()
  assert (hub.files("someone/tiny", first)[WEIGHTS_NAME]
          != hub.files("someone/tiny", second)[WEIGHTS_NAME])

  cache = str(tmp_path / "cache")  # one cache holding both snapshots
  old = vqzoo.load(f"hf-hub:someone/tiny@{first}", cache_dir=cache)
  new = vqzoo.load(f"hf-hub:someone/tiny@{second}", cache_dir=cache)
  latest = vqzoo.load("hf-hub:someone/tiny", cache_dir=cache)
  assert (old.source["revision"], old.source["commit"]) == (first, first)
  assert (new.source["revision"], new.source["commit"]) == (second, second)
  assert latest.source["commit"] == second
  assert_same_weights(old, model_a)
  assert_same_weights(new, model_b)
  assert_same_weights(latest, model_b)
  # `revision=` overrides `@rev`.
  assert_same_weights(vqzoo.load(f"hf-hub:someone/tiny@{second}", revision=first, cache_dir=cache),
                      model_a)


def test_cached_model_loads_offline_after_the_server_stops(hub, tmp_path, monkeypatch, model_a):
  commit = model_a.push_to_hub("someone/tiny").oid
  cache = str(tmp_path / "cache")
  vqzoo.load("hf-hub:someone/tiny", cache_dir=cache)
  hub.stop()

  # Server gone, not offline: the client falls back to the cached main ref, at once (the
  # prior files the repo lacks are known absent at that commit, not retried for ~20 s each).
  t0 = time.monotonic()
  assert_same_weights(vqzoo.load("hf-hub:someone/tiny", cache_dir=cache), model_a)
  assert time.monotonic() - t0 < 10
  by_flag = vqzoo.load("hf-hub:someone/tiny", cache_dir=cache, local_files_only=True)
  assert by_flag.source["commit"] == commit
  assert_same_weights(by_flag, model_a)

  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import time
  for spec in ("hf-hub:someone/tiny", f"hf-hub:someone/tiny@{commit}"):
    offline = vqzoo.load(spec, cache_dir=cache)
    assert offline.source["commit"] == commit
    assert_same_weights(offline, model_a)
  t0 = time.monotonic()
  with pytest.raises(HubError, match="not in the local cache"):  # never cached: at once
    vqzoo.load("hf-hub:someone/never-pulled", cache_dir=cache)
  assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------------- integrity


def test_file_altered_on_the_server_is_refused_by_the_sha256_pin(hub, tmp_path, model_a):
  model_a.push_to_hub("someone/tiny")
  original = hub.files("someone/tiny")[WEIGHTS_NAME]
  pin = sha256(original)
  ok = PretrainedVQVAE.from_pretrained("someone/tiny", expected_sha256=pin,
                                       cache_dir=str(tmp_path / "c1"))
  assert ok.source["sha256"] == pin

  # Flip one bit of the last float: still a valid safetensors file, different weights.
  hub.alter_file("someone/tiny", WEIGHTS_NAME, lambda b: b[:-1] + bytes([b[-1] ^ 1]))
  altered = sha256(hub.files("someone/tiny")[WEIGHTS_NAME])
  assert altered != pin
  with pytest.raises(vqzoo.IntegrityError) as e:
    PretrainedVQVAE.from_pretrained("someone/tiny", expected_sha256=pin,
                                    cache_dir=str(tmp_path / "c2"))
  assert pin in str(e.value) and altered in str(e.value)
  assert_no_partial_weights(tmp_path / "c2", altered)  # the refused file is not kept in the cache
  # Without the pin the altered file loads silently: only the pin catches it.
  unpinned = PretrainedVQVAE.from_pretrained("someone/tiny", cache_dir=str(tmp_path / "c3"))
  assert unpinned.source["sha256"] == altered
  assert_different_weights(unpinned, model_a)


# ---------------------------------------------------------------------- a failing Hub

ALL = None


def weights_get(method, path):
  return method == "GET" and path.endswith("/" + WEIGHTS_NAME)


@pytest.mark.parametrize("mode,match,deadline", [
    ("500", ALL, None),  # every request: 500 (retried until the deadline, then reported)
    ("500", weights_get, None),  # metadata fine, the weights download answers 500
    ("hang", ALL, None),  # every request hangs: the worst case, under the default deadline
    ("hang", weights_get, "3"),  # the weights download hangs
], ids=["500-all", "500-weights-get", "hang-all", "hang-weights-get"])
def test_failing_hub_fails_within_30_s_with_the_default_timeouts(hub, tmp_path, model_a, mode,
                                                                 match, deadline, monkeypatch):
  """vqzoo's own defaults bound every Hub operation (the hang-weights-get case, which fails
  like hang-all past the deadline, runs under a 3 s one to keep the suite short)."""
  model_a.push_to_hub("someone/tiny")
  weights_sha = sha256(hub.files("someone/tiny")[WEIGHTS_NAME])
  cache = tmp_path / "cache"
  hub.set_failure(mode, match)
  if deadline is not None:
    monkeypatch.setenv("VQZOO_HUB_DEADLINE", deadline)
  t0 = time.monotonic()
  with pytest.raises(HubError) as e:
    vqzoo.load("hf-hub:someone/tiny", cache_dir=str(cache))
  elapsed = time.monotonic() - t0
  assert elapsed < 30, f"took {elapsed:.1f} s"
  message = str(e.value)
  assert "\n" not in message and "someone/tiny" in message
  if mode == "500":
    assert "500" in message, message
  else:  # a timeout, the deadline, or (retries used up) an unreachable Hub
    assert any(w in message.lower() for w in ("within", "time", "could not be reached")), message
  if match is weights_get:
    assert any(m == "GET" and p.endswith(WEIGHTS_NAME) for m, p, _ in hub.requests)
  # No complete weights file was stored (a hung download may leave an *.incomplete part).
  files = cache_files(cache)
  assert not [p for p in files if p.name in (weights_sha, WEIGHTS_NAME)], files

  # Once the Hub recovers, the same cache loads cleanly: nothing half-written is reused.
  hub.set_failure(None)
  monkeypatch.delenv("VQZOO_HUB_DEADLINE", raising=False)
  assert_same_weights(vqzoo.load("hf-hub:someone/tiny", cache_dir=str(cache)), model_a)


def test_pull_under_a_dropped_connection_is_one_line_and_exit_2(hub, model_a, capsys):
  model_a.push_to_hub("someone/tiny")
  hub.set_failure("drop", weights_get)
  t0 = time.monotonic()
  assert cli_main(["pull", "someone/tiny"]) == 2
  assert time.monotonic() - t0 < 30
  err = capsys.readouterr().err.strip()
  assert err.startswith("vqzoo pull: error:") and len(err.splitlines()) == 1, err


def test_push_to_a_hung_commit_endpoint_fails_within_30_s(hub, model_a, capsys, tmp_path,
                                                          monkeypatch):
  hub.set_failure("hang", lambda method, path: method == "POST" and "/commit/" in path)
  t0 = time.monotonic()
  with pytest.raises(HubError, match="push to someone/hung"):
    model_a.push_to_hub("someone/hung")
  assert time.monotonic() - t0 < 30
  model_a.save_pretrained(tmp_path / "m")
  monkeypatch.setenv("VQZOO_HUB_DEADLINE", "2")  # the bound is checked above; here the message
  assert cli_main(["push", str(tmp_path / "m"), "someone/hung"]) == 2  # one line, no traceback
  err = capsys.readouterr().err.strip()
  assert err.startswith("vqzoo push: error:") and len(err.splitlines()) == 1


def test_push_to_a_stopped_server_fails_within_30_s(hub, model_a):
  hub.stop()
  t0 = time.monotonic()
  with pytest.raises(HubError, match="push to someone/gone"):
    model_a.push_to_hub("someone/gone")
  assert time.monotonic() - t0 < 30


def test_cache_blob_altered_after_a_pull_is_refused_and_evicted(hub, tmp_path, model_a):
  model_a.push_to_hub("someone/tiny")
  cache = tmp_path / "cache"
  vqzoo.load("hf-hub:someone/tiny", cache_dir=str(cache))
  blob = next(p for p in cache_files(cache) if p.parent.name == "blobs"
              and p.name == sha256(hub.files("someone/tiny")[WEIGHTS_NAME]))
  data = bytearray(blob.read_bytes())
  data[-1] ^= 1
  blob.write_bytes(bytes(data))
  for kwargs in ({"local_files_only": True}, {}):
    with pytest.raises(vqzoo.IntegrityError, match="announced"):
      vqzoo.load("hf-hub:someone/tiny", cache_dir=str(cache), **kwargs)
    assert not blob.exists()  # evicted: the next online load fetches it again
    if not kwargs:
      break
    vqzoo.load("hf-hub:someone/tiny", cache_dir=str(cache))  # re-downloaded, verified
    blob.write_bytes(bytes(data))


def test_server_sending_altered_bytes_under_the_original_etag_is_refused(hub, tmp_path, model_a):
  model_a.push_to_hub("someone/tiny")
  hub.alter_file("someone/tiny", WEIGHTS_NAME, lambda b: b[:-1] + bytes([b[-1] ^ 1]),
                 keep_etag=True)
  with pytest.raises(vqzoo.IntegrityError, match="announced"):
    vqzoo.load("hf-hub:someone/tiny", cache_dir=str(tmp_path / "c"))
  assert not [p for p in cache_files(tmp_path / "c") if p.parent.name == "blobs"
              and p.name.endswith(sha256(hub.files("someone/tiny")[WEIGHTS_NAME])[:8])]


def test_hub_pin_covers_config_and_weights(hub, tmp_path, model_a):
  model_a.push_to_hub("someone/tiny")
  stored = hub.files("someone/tiny")
  pin = manifest_digest({n: sha256(stored[n]) for n in ("config.json", WEIGHTS_NAME)})
  ok = vqzoo.load(f"hf-hub:someone/tiny#sha256={pin}", cache_dir=str(tmp_path / "a"))
  assert ok.source["manifest_sha256"] == pin
  config = json.loads(stored["config.json"])
  config["output_activation"] = "sigmoid"  # a valid config: only the pin notices
  hub.alter_file("someone/tiny", "config.json", (json.dumps(config) + "\n").encode())
  with pytest.raises(vqzoo.IntegrityError, match=pin):
    vqzoo.load(f"hf-hub:someone/tiny#sha256={pin}", cache_dir=str(tmp_path / "b"))
  with pytest.raises(ValueError, match="sha256="):
    vqzoo.load("hf-hub:someone/tiny#md5=abc")


def test_hub_specs_never_read_the_working_directory(hub, tmp_path, monkeypatch, model_a):
  model_a.push_to_hub("someone/tiny")
  decoy = tmp_path / "someone" / "tiny"
  bad = PretrainedVQVAE(model_a.config)
  bad.save_pretrained(decoy)
  monkeypatch.chdir(tmp_path)
  loaded = vqzoo.load("hf-hub:someone/tiny", cache_dir=str(tmp_path / "c"))
  assert "repo_id" in loaded.source and "path" not in loaded.source
  assert any("/someone/tiny/" in p for _, p, _ in hub.requests)
  # The folder loads only when given as a path.
  assert vqzoo.load("./someone/tiny").source["path"] == str(decoy)


@pytest.mark.parametrize("revision", ["../../../../outside/X", "main/../x", "a..b", "-rf",
                                      "x.lock", "with space"])
def test_revisions_are_validated_before_any_request(hub, tmp_path, revision):
  n = len(hub.requests)
  with pytest.raises(ValueError, match="revision"):
    vqzoo.load(f"hf-hub:someone/tiny@{revision}", cache_dir=str(tmp_path / "c"))
  with pytest.raises(ValueError, match="revision"):
    vqzoo.load("hf-hub:someone/tiny", revision=revision, cache_dir=str(tmp_path / "c"))
  assert len(hub.requests) == n
  assert not (tmp_path / "outside").exists()


# ---------------------------------------------------------------------- CLI and publishing


def test_cli_push_then_pull_round_trip(hub, tmp_path, capsys, model_a):
  src, out = tmp_path / "saved", tmp_path / "pulled"
  model_a.save_pretrained(src)
  assert cli_main(["push", str(src), "someone/cli-model", "--message", "from the CLI",
                   "--json"]) == 0
  pushed = json.loads(capsys.readouterr().out)
  assert pushed["repo_id"] == "someone/cli-model"
  assert pushed["commit"] == hub.head("someone/cli-model")

  assert cli_main(["pull", "someone/cli-model", "--out", str(out), "--json"]) == 0
  pulled = json.loads(capsys.readouterr().out)
  assert pulled["commit"] == pushed["commit"] and pulled["saved_to"] == str(out)
  assert_same_weights(vqzoo.load(str(out)), model_a)
  assert vqzoo.load(str(out)).config == model_a.config
  # An unmodified model is written back byte for byte: its sha256 still matches.
  assert (out / WEIGHTS_NAME).read_bytes() == (src / WEIGHTS_NAME).read_bytes()
  assert pulled["sha256"] == sha256((src / WEIGHTS_NAME).read_bytes())

  assert cli_main(["pull", "someone/no-such-model"]) == 2
  assert "someone/no-such-model" in capsys.readouterr().err


def test_unmodified_model_saves_its_pinned_bytes(tmp_path, model_b):
  # safetensors writes metadata keys in a random order, so re-serialising would change the
  # sha256 about every other time; a loaded, unmodified model writes back its exact file.
  bundled = vqzoo.load("mnist-mlp")
  pin = registry.get_entry("mnist-mlp").weights.sha256
  for i in range(8):
    bundled.save_pretrained(tmp_path / str(i))
    assert sha256((tmp_path / str(i) / WEIGHTS_NAME).read_bytes()) == pin
  # Modified: new bytes. (model_b's codebook keeps no usage state: it has no re-seeding.)
  bundled.params = model_b.params
  bundled.save_pretrained(tmp_path / "modified")
  assert sha256((tmp_path / "modified" / WEIGHTS_NAME).read_bytes()) != pin
  reloaded = vqzoo.load(str(tmp_path / "modified"))
  assert_same_weights(PretrainedVQVAE(reloaded.config, model_b.params, bundled.state), reloaded)


def test_push_script_publishes_a_zoo_variant_that_loads_identically(hub, tmp_path, capsys,
                                                                     monkeypatch):
  script = load_script("push_to_hub")
  assert script.main(["--variant", "mnist-mlp", "--cache-dir", str(tmp_path / "check")]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
  assert len(lines) == 1
  line = lines[0]
  pin = registry.get_entry("mnist-mlp").weights.sha256
  assert line["variant"] == "mnist-mlp" and line["repo_id"] == "vqzoo/mnist-mlp"
  assert line["commit"] == hub.head("vqzoo/mnist-mlp")
  # The Hub copy is byte-identical to the bundled, pinned file.
  assert line["sha256"] == pin == sha256(hub.files("vqzoo/mnist-mlp")[WEIGHTS_NAME])

  bundled = vqzoo.load("mnist-mlp")
  from_hub = vqzoo.load(f"hf-hub:vqzoo/mnist-mlp@{line['commit']}", cache_dir=str(tmp_path / "c"))
  assert_same_weights(from_hub, bundled)
  assert from_hub.config == bundled.config and from_hub.card == bundled.card
  assert from_hub.source["commit"] == line["commit"]

  # Zoo-style load without the bundled copy: fetched from the Hub and checked against the pin.
  monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "no-bundled-weights")
  zoo = vqzoo.load("mnist-mlp", cache_dir=str(tmp_path / "zoo"))
  assert zoo.source["repo_id"] == "vqzoo/mnist-mlp" and zoo.source["sha256"] == pin
  assert_same_weights(zoo, bundled)
  hub.alter_file("vqzoo/mnist-mlp", WEIGHTS_NAME, lambda b: b[:-1] + bytes([b[-1] ^ 1]))
  with pytest.raises(vqzoo.IntegrityError, match=pin):
    vqzoo.load("mnist-mlp", cache_dir=str(tmp_path / "zoo2"))


def test_push_script_all_skips_unbundled_variants(hub, capsys, tmp_path, monkeypatch):
  # A weights folder in which one pinned variant has no bundled files.
  missing = "mnist-conv"
  untrained = [n for n in registry.list_models() if not registry.get_entry(n).weights.sha256]
  for name in registry.list_models():
    if name != missing and name not in untrained:
      (tmp_path / name).mkdir()
      for f in registry.get_entry(name).bundled_dir.iterdir():
        (tmp_path / name / f.name).write_bytes(f.read_bytes())
  monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
  script = load_script("push_to_hub")
  assert script.main(["--all", "--org", "someone"]) == 0
  captured = capsys.readouterr()
  lines = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
  bundled = [n for n in registry.list_models() if registry.get_entry(n).weights.sha256
             and (registry.get_entry(n).bundled_dir / WEIGHTS_NAME).exists()]
  unbundled = sorted(set(registry.list_models()) - set(bundled))
  assert unbundled == sorted([missing, *untrained])
  assert [x["variant"] for x in lines] == bundled and bundled
  for x in lines:
    assert x["repo_id"] == f"someone/{x['variant']}"
    assert x["commit"] == hub.head(x["repo_id"])
    assert x["sha256"] == registry.get_entry(x["variant"]).weights.sha256
  for name in unbundled:
    assert f"skipping {name}" in captured.err
  with pytest.raises(KeyError, match="mnist-mlpp"):
    script.main(["--variant", "mnist-mlpp"])


def test_finetune_pushes_its_result_with_lineage(hub, tmp_path, digits):
  """`vqzoo finetune --push-to-hub`: the Hub copy loads and carries the lineage card."""
  from PIL import Image
  folder = tmp_path / "digits"
  folder.mkdir()
  for i, image in enumerate(np.load(DIGITS)):
    Image.fromarray(image[..., 0]).save(folder / f"{i}.png")
  rc = cli_main(["finetune", "--from", "mnist-mlp", "--images", str(folder), "--out",
                 str(tmp_path / "ft"), "--steps", "5", "--batch-size", "16", "--no-progress",
                 "--push-to-hub", "someone/finetuned"])
  assert rc == 0
  pulled = vqzoo.load("hf-hub:someone/finetuned")
  assert_same_weights(pulled, vqzoo.load(str(tmp_path / "ft")))
  assert '"base": "mnist-mlp"' in pulled.card and '"source": "image-folder"' in pulled.card
