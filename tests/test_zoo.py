"""Every shipped variant, re-measured on its real test split, meets its bar and its card."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard

import vqzoo
from vqzoo import cpu_tuning
from vqzoo.io import sha256_file
from vqzoo.pretrained import load, registry
from vqzoo.pretrained.cards import zoo_table

from _util import user_env

REPO_CARDS = registry.WEIGHTS_DIR.parent.parent / "model_cards"
SHIPPED = [n for n in registry.list_models() if registry.get_entry(n).weights.sha256]
WITH_PRIOR = [n for n in SHIPPED if "prior" in registry.get_entry(n).metrics]
REQUIRED = ["mnist-mlp", "mnist-mlp-ema", "mnist-conv", "mnist-conv-ema", "fashion-mnist-conv-ema"]


def test_registry_lists_the_zoo_sorted_and_filters():
  names = vqzoo.list_models()
  assert names == sorted(names) and set(REQUIRED) <= set(names)
  assert vqzoo.list_models("mnist-conv-*") == sorted(
      n for n in names if n.startswith("mnist-conv-"))
  assert vqzoo.list_models("mnist-mlp*") == ["mnist-mlp", "mnist-mlp-ema"]
  assert vqzoo.list_models("nothing-*") == []


def test_unknown_name_lists_closest_names():
  with pytest.raises(KeyError, match="mnist-mlp"):
    vqzoo.get_config("mnist-mlpp")


def test_every_required_variant_ships_with_pinned_weights():
  for name in REQUIRED:
    entry = registry.get_entry(name)
    assert entry.weights.sha256, f"{name} has no pinned weights"
    assert sha256_file(entry.bundled_dir / "model.safetensors") == entry.weights.sha256
    assert (REPO_CARDS / f"{name}.md").exists()


def _remeasure(name: str, tfds_dir: str) -> dict:
  """``{"evaluate": metrics, "prior": figures or None}`` of a zoo model on its full splits, in
  a process of its own with XLA's default flags (tests/_remeasure_child.py)."""
  result = subprocess.run([sys.executable, str(Path(__file__).parent / "_remeasure_child.py"),
                           name, tfds_dir], env=user_env(), capture_output=True, text=True,
                          timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.reproduce
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_variant_re_measured_meets_its_bars_and_matches_its_card(name, tfds_dir):
  """The full test split through the model (and, with a prior, the prior over its codes)."""
  entry = registry.get_entry(name)
  model = load(name)
  remeasured = _remeasure(name, tfds_dir)
  measured = remeasured["evaluate"]
  assert measured["num_images"] == 10000
  # Meets its bar, or misses exactly what the registry declares (the card and README say so).
  assert set(registry.bar_misses(entry.bar, measured)) == set(entry.bar_missed)
  recorded = entry.metrics
  assert math.isclose(measured["mse"], recorded["mse"], rel_tol=0.01)
  assert measured["codes_used"] == recorded["codes_used"]
  for depth, mse in enumerate(measured.get("mse_by_depth", []), start=1):  # residual models
    assert math.isclose(mse, recorded["mse_by_depth"][depth - 1], rel_tol=0.01), depth
  if "mse_by_depth" in measured:
    assert measured["mse_by_depth"] == sorted(measured["mse_by_depth"], reverse=True)
    assert measured["codes_used_by_stage"] == recorded["codes_used_by_stage"]
    assert measured["perplexity_by_stage"] == pytest.approx(recorded["perplexity_by_stage"],
                                                            rel=0.01)
  card = (REPO_CARDS / f"{name}.md").read_text()
  assert card == model.card  # the repo's card is the one shipped with the weights
  parsed = ModelCard(card)  # the Hub's own parser: front matter and model-index are valid
  assert parsed.data.library_name == "vqzoo"
  results = {r.metric_type: r.metric_value for r in parsed.data.eval_results}
  assert math.isclose(results["mse"], measured["mse"], rel_tol=0.01)
  assert results["codes_used"] == measured["codes_used"]
  assert f"| {measured['codes_used']} |" in card
  assert (remeasured["prior"] is None) == (name not in WITH_PRIOR) == (model.prior is None)
  if remeasured["prior"] is not None:
    _check_prior(name, model, remeasured["prior"], card)


def test_a_bar_names_what_it_misses_and_cards_mark_it():
  from vqzoo.pretrained.cards import bar_text
  bar = {"mse_max": 0.002, "codes_used_min": 120}
  assert registry.bar_misses(bar, {"mse": 0.002, "codes_used": 120}) == []
  assert registry.bar_misses(bar, {"mse": 0.0033, "codes_used": 119}) == ["mse_max",
                                                                          "codes_used_min"]
  assert registry.bar_misses(bar, {"mse": float("nan"), "codes_used": 128}) == ["mse_max"]
  assert bar_text(bar, {"mse": 0.0033, "codes_used": 128}) == "MSE ≤ 0.002 (missed), ≥ 120 codes"
  assert bar_text(bar) == "MSE ≤ 0.002, ≥ 120 codes"
  entry = registry.get_entry("mnist-conv")
  assert entry.check_bar({"mse": 0.0033}) == ["mse 0.00330 > 0.002"]


def test_tampered_bundled_weights_are_refused(tmp_path, monkeypatch):
  entry = registry.get_entry("mnist-mlp")
  fake_dir = tmp_path / "mnist-mlp"
  fake_dir.mkdir()
  for f in entry.bundled_dir.iterdir():
    (fake_dir / f.name).write_bytes(f.read_bytes())
  data = bytearray((fake_dir / "model.safetensors").read_bytes())
  data[-1] ^= 0xFF
  (fake_dir / "model.safetensors").write_bytes(bytes(data))
  with pytest.raises(vqzoo.IntegrityError, match=entry.weights.sha256):
    vqzoo.PretrainedVQVAE.from_pretrained(fake_dir, expected_sha256=entry.weights.sha256)


def test_loaded_model_round_trips_and_accepts_any_layout(tmp_path):
  model = load("mnist-mlp")
  digits = np.load(registry.WEIGHTS_DIR.parent / "assets" / "mnist_test_digits.npy")
  codes = model.encode(digits)
  assert codes.dtype == np.int32 and codes.shape == (32,)
  np.testing.assert_array_equal(model.encode(digits[..., 0]), codes)
  np.testing.assert_array_equal(model.encode(digits / 255.0), codes)
  np.testing.assert_allclose(model.decode(codes), model.reconstruct(digits), atol=1e-6)
  model.save_pretrained(tmp_path / "copy")
  again = load(str(tmp_path / "copy"))
  for a, b in zip(*(jax_leaves(m) for m in (model, again))):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r"codes: expected integers in \[0, 512\)"):
    model.decode(np.array([600]))
  with pytest.raises(ValueError, match="expected 28x28"):
    model.reconstruct(np.zeros((2, 32, 32), np.uint8))
  bad = (digits / 255.0).astype(np.float32)
  bad[3, 5, 5] = np.nan
  for method in (model.reconstruct, model.encode):
    with pytest.raises(ValueError, match="NaN"):
      method(bad)
  with pytest.raises(ValueError, match=r"\[0, 1\].*divide uint8 data by 255"):
    model.reconstruct(digits.astype(np.float32))  # 0-255 floats
  with pytest.raises(ValueError, match="0-255"):
    model.encode(digits.astype(np.int32) + 300)


def jax_leaves(model):
  import jax
  return [np.asarray(x) for x in jax.tree_util.tree_leaves((model.params, model.state))]


def test_cli_list_info_eval_reconstruct_demo(tmp_path, capsys, tfds_dir):
  from vqzoo.cli import main
  assert main(["list"]) == 0
  assert "mnist-mlp" in capsys.readouterr().out
  assert main(["list", "--json"]) == 0
  assert {r["name"] for r in json.loads(capsys.readouterr().out)} == set(registry.list_models())
  assert main(["info", "mnist-mlp", "--json"]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info["parameters"] == load("mnist-mlp").num_parameters
  assert info["pins"] == dict(registry.get_entry("mnist-mlp").weights.files)
  assert main(["info", "mnist-mlp"]) == 0
  assert "K=512 D=64 plain codebook" in capsys.readouterr().out  # text by default
  assert main(["eval", "mnist-mlp", "--data-dir", tfds_dir, "--json", "--check-bar"]) == 0
  measured = json.loads(capsys.readouterr().out)
  assert math.isclose(measured["mse"], registry.get_entry("mnist-mlp").metrics["mse"], rel_tol=1e-4)
  out = tmp_path / "grid.png"
  assert main(["reconstruct", "mnist-mlp", "--dataset", "mnist", "--count", "8", "--data-dir",
               tfds_dir, "--out", str(out)]) == 0
  from PIL import Image
  with Image.open(out) as im:
    assert im.size[0] > im.size[1] > 0
  bad = tmp_path / "bad.npy"
  np.save(bad, np.zeros((2, 32, 32, 3), np.uint8))
  assert main(["reconstruct", "mnist-mlp", "--input", str(bad), "--out", str(out)]) == 2
  assert "expected 28x28" in capsys.readouterr().err
  assert main(["info", "mnist-mlpp"]) == 2
  assert "Did you mean" in capsys.readouterr().err
  assert main(["info", "./nonexistent"]) == 2
  assert "no such model directory" in capsys.readouterr().err
  assert main(["reconstruct", "mnist-mlp", "--out", str(tmp_path / "x.gif")]) == 2
  assert ".png, .jpg or .jpeg" in capsys.readouterr().err
  jpg = tmp_path / "x.jpg"
  assert main(["reconstruct", "mnist-mlp", "--out", str(jpg)]) == 0
  assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG bytes in a .jpg
  with pytest.raises(SystemExit) as e:
    main(["--version"])
  assert e.value.code == 0 and vqzoo.__version__ in capsys.readouterr().out


def test_demo_runs_offline_without_dataset(tmp_path, capsys, monkeypatch):
  from vqzoo.cli import main
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no-data"))
  assert main(["demo", "--out", str(tmp_path / "demo.png")]) == 0
  out = capsys.readouterr().out
  for name in ("mnist-mlp", "mnist-conv-ema"):
    assert re.search(rf"{name}\s+MSE 0\.0\d+\s+PSNR \d+\.\d+ dB\s+codes used \d+", out), out
  assert (tmp_path / "demo.png").stat().st_size > 0


def test_readme_zoo_table_is_the_measured_one():
  readme = (registry.WEIGHTS_DIR.parent.parent / "README.md").read_text()
  assert zoo_table() in readme, "README's zoo table is stale: paste vqzoo.pretrained.cards.zoo_table()"


def test_conv_model_in_chunks_equals_one_call_and_checks_every_chunk(monkeypatch):
  model = load("mnist-conv-ema")
  digits = np.load(registry.WEIGHTS_DIR.parent / "assets" / "mnist_test_digits.npy")
  images = np.concatenate([digits, digits[::-1]])  # 64 images
  whole = (model.reconstruct(images), model.encode(images))
  monkeypatch.setattr(cpu_tuning, "CHUNK_BYTES", 10 * 28 * 28 * 4)  # chunks of 10: 7 calls
  chunks = cpu_tuning.inference_chunks(images, (28, 28, 1), "conv")
  assert [len(c) for c in chunks] == [10] * 6 + [4]
  np.testing.assert_allclose(model.reconstruct(images), whole[0], atol=1e-6)
  np.testing.assert_array_equal(model.encode(images), whole[1])
  np.testing.assert_allclose(model.decode(whole[1]), whole[0], atol=1e-6)
  bad = (images / 255.0).astype(np.float32)
  bad[-1, 0, 0] = 1.5  # only the last chunk is out of range
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    model.reconstruct(bad)


def test_evaluate_gives_the_codes_encode_gives():
  """return_codes: the codes of the measuring pass (padded last chunk included) are encode's."""
  digits = np.load(registry.WEIGHTS_DIR.parent / "assets" / "mnist_test_digits.npy")
  for name in ("mnist-mlp", "mnist-conv-rvq"):
    model = load(name)
    measured, codes = vqzoo.evaluate(model.config, model.params, model.state, digits,
                                     batch_size=10, return_codes=True)
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, model.encode(digits))
    assert measured == vqzoo.evaluate(model.config, model.params, model.state, digits,
                                      batch_size=10)


def test_every_required_variant_ships_a_prior():
  assert set(REQUIRED) <= set(WITH_PRIOR)
  for name in REQUIRED:
    assert vqzoo.load(name).prior is not None


def _check_prior(name: str, model, measured: dict, card: str) -> None:
  """The prior's re-measured figures against the registry, the card and the prior bar."""
  entry = registry.get_entry(name)
  recorded = entry.metrics["prior"]
  for key in ("prior_bits", "unigram_bits", "uniform_bits"):
    assert math.isclose(measured[key], recorded[key], rel_tol=1e-3), key
  for key in ("prior_bits_by_stage", "unigram_bits_by_stage"):  # residual models
    assert (key in measured) == (model.config.quantizer.kind == "rvq") == (key in recorded)
    if key in measured:
      assert measured[key] == pytest.approx(recorded[key], rel=1e-3), key
  assert f"| this prior (given the true label) | {measured['prior_bits']:.1f} |" in card
  if model.config.arch == "conv" and "bits_vs_unigram_max" in entry.prior_bar:  # e.g. 60%
    ratio = measured["prior_bits"] / measured["unigram_bits"]
    met = ratio <= entry.prior_bar["bits_vs_unigram_max"]
    assert met != ("bits_vs_unigram_max" in entry.prior_bar_missed), ratio  # a miss is declared
  if model.config.arch == "conv":
    assert set(entry.prior_bar_missed) == set(registry.prior_bar_misses(entry.prior_bar,
                                                                        recorded))


def test_readme_prior_table_is_the_measured_one():
  from vqzoo.pretrained.cards import prior_table
  readme = (registry.WEIGHTS_DIR.parent.parent / "README.md").read_text()
  assert prior_table() in readme, "README's prior table is stale: paste cards.prior_table()"


def test_eval_line_of_a_residual_model_gives_each_stages_codes_beside_the_pooled():
  from vqzoo.cli import _eval_summary
  single = {"mse": 0.001, "psnr": 30.0, "perplexity": 60.0, "codes_used": 120}
  assert _eval_summary(single) == "MSE 0.00100, PSNR 30.00 dB, perplexity 60.0, codes used 120"
  residual = {**single, "perplexity_by_stage": [40.0, 35.5], "codes_used_by_stage": [100, 90]}
  assert _eval_summary(residual).endswith(
      "codes used 120 (stages pooled; each stage's own: perplexity 40.0/35.5, codes used 100/90)")
