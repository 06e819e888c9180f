"""The whole artifact is pinned, names are unambiguous, and bad files give clear errors."""

import json
import os
import pickle
import shutil
import time

import numpy as np
import pytest
from safetensors.numpy import save as st_save

import vqzoo
from vqzoo.pretrained import registry, serialization
from vqzoo.pretrained.integrity import manifest_digest

ZOO = "mnist-mlp"


@pytest.fixture
def zoo_copy(tmp_path, monkeypatch):
  """A private copy of the bundled weights folder that tests may tamper with."""
  weights = tmp_path / "weights"
  shutil.copytree(registry.WEIGHTS_DIR, weights)
  monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub fallback fails at once, offline
  from huggingface_hub import constants
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  return weights


def test_zoo_pin_covers_config_json(zoo_copy):
  path = zoo_copy / ZOO / "config.json"
  config = json.loads(path.read_text())
  config["output_activation"] = "sigmoid"  # valid, loads, and makes the model 7x worse
  path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  pin = registry.get_entry(ZOO).weights.files["config.json"]
  with pytest.raises(vqzoo.IntegrityError) as e:
    vqzoo.load(ZOO)
  assert "config.json" in str(e.value) and pin in str(e.value)


def test_registry_config_must_match_even_when_the_files_do(zoo_copy, monkeypatch):
  entry = registry.get_entry(ZOO)
  other = vqzoo.ModelConfig(quantizer=vqzoo.QuantizerConfig(512, 64))  # no re-seeding
  monkeypatch.setitem(registry.REGISTRY, ZOO, type(entry)(**{**entry.__dict__, "config": other}))
  with pytest.raises(vqzoo.IntegrityError, match="registry's config"):
    vqzoo.load(ZOO)


def test_tampered_bundle_offline_is_an_integrity_error_naming_both_digests(zoo_copy):
  path = zoo_copy / ZOO / "model.safetensors"
  data = bytearray(path.read_bytes())
  data[-1] ^= 0xFF
  path.write_bytes(bytes(data))
  pin = registry.get_entry(ZOO).weights.sha256
  t0 = time.monotonic()
  with pytest.raises(vqzoo.IntegrityError) as e:
    vqzoo.load(ZOO)
  assert time.monotonic() - t0 < 10
  message = str(e.value)
  assert pin in message and serialization_sha(bytes(data)) in message
  assert "connection" not in message.split("(and the Hub")[0].lower()


def serialization_sha(data: bytes) -> str:
  import hashlib
  return hashlib.sha256(data).hexdigest()


def test_zoo_manifest_digest_is_the_digest_of_its_file_pins():
  entry = registry.get_entry(ZOO)
  assert set(entry.weights.files) == {"config.json", "model.safetensors", "prior.json",
                                      "prior.safetensors"}
  assert entry.weights.manifest_sha256 == manifest_digest(entry.weights.files)
  assert vqzoo.load(ZOO).source["manifest_sha256"] == entry.weights.manifest_sha256


def test_a_local_folder_never_replaces_a_zoo_name(tmp_path, monkeypatch):
  decoy = tmp_path / ZOO
  vqzoo.PretrainedVQVAE(vqzoo.get_config(ZOO)).save_pretrained(decoy)  # random weights
  monkeypatch.chdir(tmp_path)
  assert vqzoo.load(ZOO).source["zoo"] == ZOO
  assert vqzoo.load(f"./{ZOO}").source["path"] == str(decoy)
  from pathlib import Path
  assert vqzoo.load(Path(ZOO)).source["path"] == str(decoy)
  with pytest.raises(KeyError, match=r"\./nonexistent-thing"):
    vqzoo.load("nonexistent-thing")
  with pytest.raises(FileNotFoundError, match="no such model directory"):
    vqzoo.load("./nonexistent")


def _saved(tmp_path):
  model = vqzoo.PretrainedVQVAE(vqzoo.ModelConfig())
  model.save_pretrained(tmp_path / "m")
  return tmp_path / "m"


@pytest.mark.parametrize("content", [
    b"", b"\x00" * 7, b"garbage that is not safetensors",
    pickle.dumps({"params": np.zeros(3)}), b"PK\x03\x04 an npz file"])
def test_unreadable_weights_name_the_file(tmp_path, content):
  folder = _saved(tmp_path)
  (folder / "model.safetensors").write_bytes(content)
  with pytest.raises(ValueError, match=r"m/model\.safetensors: not a readable safetensors"):
    vqzoo.load(str(folder))


def test_truncated_weights_and_symlinks_to_other_files(tmp_path):
  folder = _saved(tmp_path)
  weights = folder / "model.safetensors"
  data = weights.read_bytes()
  weights.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match="model.safetensors"):
    vqzoo.load(str(folder))
  weights.unlink()
  os.symlink("/etc/passwd", weights)
  with pytest.raises(ValueError, match="model.safetensors"):
    vqzoo.load(str(folder))


def _with_weights(tmp_path, change):
  folder = _saved(tmp_path)
  flat = serialization.from_bytes((folder / "model.safetensors").read_bytes())[2]
  change(flat)
  (folder / "model.safetensors").write_bytes(st_save(flat))
  return folder


def test_weights_of_the_wrong_dtype_or_not_finite_are_refused(tmp_path):
  key = next(k for k in serialization.from_bytes(
      (_saved(tmp_path / "a") / "model.safetensors").read_bytes())[2] if k.endswith("/w"))

  def to_int(flat):
    flat[key] = flat[key].astype(np.int32)

  def to_nan(flat):
    flat[key] = np.full_like(flat[key], np.nan)

  with pytest.raises(ValueError, match="expected dtype float32, got int32"):
    vqzoo.load(str(_with_weights(tmp_path / "b", to_int)))
  with pytest.raises(ValueError, match="finite"):
    vqzoo.load(str(_with_weights(tmp_path / "c", to_nan)))


@pytest.mark.parametrize("config, match", [
    ({"image_shape": None}, "image_shape"),
    ({"mlp": {"encoder_sizes": 128, "decoder_sizes": [128]}}, "encoder_sizes"),
    ([1, 2, 3], "JSON object"),
    ({"quantizer": {"num_embeddings": 1e30}}, "num_embeddings"),
    ({"quantizer": {"num_embeddings": 10**12}}, "num_embeddings"),
    ({"quantizer": {"commitment_cost": float("inf")}}, "commitment_cost"),
    ("deep", "RecursionError|nest"),
])
def test_bad_config_json_is_a_clear_error(tmp_path, config, match):
  folder = _saved(tmp_path)
  if config == "deep":
    text = "[" * 100000 + "]" * 100000
  else:
    base = vqzoo.ModelConfig().to_dict()
    if isinstance(config, dict):
      for key, value in config.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
      text = json.dumps(base)
    else:
      text = json.dumps(config)
  (folder / "config.json").write_text(text)
  with pytest.raises(ValueError, match=match) as e:
    vqzoo.load(str(folder))
  assert "config.json" in str(e.value)


def test_config_that_is_a_device_or_huge_is_refused_before_reading(tmp_path):
  folder = _saved(tmp_path)
  (folder / "config.json").unlink()
  os.symlink("/dev/zero", folder / "config.json")
  t0 = time.monotonic()
  with pytest.raises(ValueError, match="regular file"):
    vqzoo.load(str(folder))
  assert time.monotonic() - t0 < 5
  (folder / "config.json").unlink()
  (folder / "config.json").write_bytes(b" " * (2 << 20))
  with pytest.raises(ValueError, match="bytes"):
    vqzoo.load(str(folder))


def test_build_refuses_what_is_not_a_model():
  with pytest.raises(TypeError, match="ModelConfig"):
    vqzoo.build(None)
  with pytest.raises(ValueError, match="commitment_cost"):
    vqzoo.QuantizerConfig(commitment_cost=float("inf"))


def test_reconstruct_count_must_be_positive(capsys):
  from vqzoo.cli import main
  with pytest.raises(SystemExit) as e:
    main(["reconstruct", ZOO, "--count", "-5"])
  assert e.value.code == 2 and "expected an integer from 1 to" in capsys.readouterr().err


def test_create_model_fresh_or_pretrained_and_from_pretrained_knows_zoo_names():
  fresh = vqzoo.create_model(ZOO)
  trained = vqzoo.create_model(ZOO, pretrained=True)
  assert fresh.config == trained.config == vqzoo.get_config(ZOO)
  assert trained.source["zoo"] == ZOO and fresh.source == {}
  assert not np.array_equal(fresh.codebook, trained.codebook)
  t0 = time.monotonic()
  by_name = vqzoo.PretrainedVQVAE.from_pretrained(ZOO)  # a zoo name, never the real Hub
  assert time.monotonic() - t0 < 5 and by_name.source["zoo"] == ZOO
  np.testing.assert_array_equal(by_name.codebook, trained.codebook)


def test_missing_data_extra_is_one_line_with_the_install_hint(monkeypatch, capsys):
  import sys
  from vqzoo.cli import main
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as in the base install
  for argv in (["eval", ZOO], ["reconstruct", ZOO, "--dataset", "mnist"],
               ["encode", ZOO, "--dataset", "mnist", "--out", "/tmp/x.npz"]):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install -e '.[data]'" in err, err
