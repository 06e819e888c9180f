"""The timm and diffusers idioms a newcomer tries first (issue 22, items 2 and 8).

``create_model(name)``, ``create_model(name, **config_fields)``, ``list_models(pretrained=True)``,
``model(x)`` and ``PretrainedVQVAE.from_pretrained("./folder")``.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vqzoo
from vqzoo.nn import build
from vqzoo.pretrained import registry
from vqzoo.pretrained.initial import initial_weights

from _util import compiled_init

DIGITS = Path(vqzoo.__file__).parent / "assets" / "mnist_test_digits.npy"
CONV = "mnist-conv"


def leaves(model) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree_util.tree_leaves((model.params, model.state))]


@pytest.mark.parametrize("name", ["mnist-conv-ema", "cifar10-conv-ema", "mnist-conv-rvq"])
def test_untrained_create_model_draws_on_the_host_and_never_compiles_the_network(name,
                                                                                 monkeypatch):
  """create_model took 15-17 s when the init compiled the network's random-number programs.
  Now numpy draws every weight except a codebook (a module's own initialiser), compiled alone;
  the whole init is never compiled. (Its time: ``benchmarks/startup.py``; no timer here.)"""
  from vqzoo.pretrained import initial
  compiled_alone, run_alone = [], initial._in_jax

  def in_jax(init, shape, *rest):
    compiled_alone.append(shape)
    return run_alone(init, shape, *rest)

  def whole_init(*_):
    raise AssertionError("the whole network's init was compiled")

  monkeypatch.setattr(initial, "_in_jax", in_jax)
  monkeypatch.setattr(initial, "_full_init", whole_init)
  model = vqzoo.create_model(name)
  k, d = model.config.quantizer.num_embeddings, model.config.quantizer.embedding_dim
  assert compiled_alone and set(compiled_alone) == {(k, d)}, compiled_alone
  assert model.codebook.shape[-2:] == (k, d) and np.isfinite(model.codebook).all()


@pytest.mark.parametrize("name", ["mnist-mlp", "mnist-conv-ema"])
def test_fresh_weights_have_the_init_shapes_and_distribution(name):
  config = registry.get_config(name)
  reference = compiled_init(build(config), jax.random.PRNGKey(0),
                            jnp.zeros((1, *config.image_shape)), True)
  params, state = initial_weights(config, seed=0)
  for ours, theirs in zip((params, state), reference):
    assert set(ours) == set(theirs)
    for module in theirs:
      assert set(ours[module]) == set(theirs[module]), module
      for key, want in theirs[module].items():
        got, want = ours[module][key], np.asarray(want)
        assert got.shape == want.shape and got.dtype == want.dtype, (module, key)
        if want.size >= 1000:  # the same distribution: mean and spread within 5 sigma
          tolerance = 5 * want.std() / np.sqrt(want.size)
          assert abs(got.std() - want.std()) <= tolerance, (module, key)
          assert abs(got.mean() - want.mean()) <= 1.5 * tolerance, (module, key)
        elif want.std() == 0:
          np.testing.assert_array_equal(got, want)  # zeros and constants exactly


def test_create_model_seed_gives_the_same_weights_and_another_seed_others():
  a, b, c = (vqzoo.create_model(CONV, seed=s) for s in (0, 0, 1))
  assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
  assert not np.array_equal(a.codebook, c.codebook)
  assert a.source == {}
  with pytest.raises(ValueError, match="seed: expected an int >= 0"):
    vqzoo.create_model(CONV, seed=-1)


def test_create_model_overrides_config_fields_by_name():
  model = vqzoo.create_model(CONV, num_embeddings=256, num_hiddens=32)
  assert model.config.quantizer.num_embeddings == 256 and model.config.conv.num_hiddens == 32
  assert model.codebook.shape == (256, 16)
  assert model.source["overrides"] == {"num_embeddings": 256, "num_hiddens": 32}
  assert registry.get_config(CONV).quantizer.num_embeddings == 128  # the zoo is untouched
  with pytest.raises(TypeError, match=r"num_embedings.*did you mean num_embeddings\?"):
    vqzoo.create_model(CONV, num_embedings=256)
  with pytest.raises(TypeError, match="encoder_sizes"):  # an MLP field on a conv model
    vqzoo.create_model(CONV, encoder_sizes=(64,))
  with pytest.raises(ValueError, match="num_embeddings"):  # the config's own check
    vqzoo.create_model(CONV, num_embeddings=0)
  with pytest.raises(TypeError, match="only apply with pretrained=True"):
    vqzoo.create_model(CONV, revision="main")


def test_pretrained_create_model_with_overrides_works_where_shapes_allow():
  trained = vqzoo.create_model(CONV, pretrained=True)
  changed = vqzoo.create_model(CONV, pretrained=True, commitment_cost=0.5)
  assert changed.config.quantizer.commitment_cost == 0.5
  assert all(np.array_equal(x, y) for x, y in zip(leaves(trained), leaves(changed)))
  assert changed.source["zoo"] == CONV and changed.source["overrides"] == {"commitment_cost": 0.5}
  assert changed.prior == trained.prior is not None  # the prior still fits: kept
  with pytest.warns(UserWarning, match=r"prior models codes on a \(7, 7\) grid.*\(8, 8\)"):
    larger = vqzoo.create_model(CONV, pretrained=True, image_shape=(32, 32, 1))
  assert larger.prior is None and trained.prior is not None
  assert larger.encode(np.zeros((1, 32, 32, 1), np.uint8)).shape == (1, 8, 8)
  assert all(np.array_equal(x, y) for x, y in zip(leaves(trained), leaves(larger)))
  with pytest.raises(ValueError) as e:
    vqzoo.create_model(CONV, pretrained=True, num_embeddings=256)
  message = str(e.value)
  assert "codebook" in message and "(256, 16)" in message and "(128, 16)" in message
  assert "pretrained=False" in message and "\n" not in message


def test_list_models_takes_timms_arguments():
  every = vqzoo.list_models()
  trained = vqzoo.list_models(pretrained=True)
  assert trained == [n for n in every if registry.get_entry(n).weights.sha256]
  assert trained and set(trained) <= set(every)
  assert vqzoo.list_models("mnist-*", exclude_filters=["*-ema", "*-fsq", "*-lfq", "*-rvq"]) == [
      "mnist-conv", "mnist-mlp"]
  assert vqzoo.list_models(["mnist-mlp", "fashion-*"]) == ["fashion-mnist-conv-ema", "mnist-mlp"]
  assert vqzoo.list_models("") == every
  with pytest.raises(TypeError, match="pattern"):
    vqzoo.list_models(3)


def test_a_loaded_model_is_callable_and_reconstructs():
  model = vqzoo.load("mnist-mlp")
  x = np.load(DIGITS)[:4]
  out = model(x)
  assert out.shape == (4, 28, 28, 1) and out.dtype == np.float32
  np.testing.assert_array_equal(out, model.reconstruct(x))


def test_from_pretrained_loads_a_local_folder(tmp_path, monkeypatch):
  model = vqzoo.create_model(CONV, seed=3)
  model.save_pretrained(tmp_path / "saved-model")
  monkeypatch.chdir(tmp_path)
  for spec in ("./saved-model", "saved-model", tmp_path / "saved-model",
               str(tmp_path / "saved-model")):
    loaded = vqzoo.PretrainedVQVAE.from_pretrained(spec)
    assert loaded.source["path"] == str(tmp_path / "saved-model"), spec
    assert all(np.array_equal(x, y) for x, y in zip(leaves(model), leaves(loaded)))
  (tmp_path / "mnist-mlp").mkdir()  # a zoo name stays the zoo model; the folder is ./mnist-mlp
  assert vqzoo.PretrainedVQVAE.from_pretrained("mnist-mlp").source["zoo"] == "mnist-mlp"
  with pytest.raises(FileNotFoundError, match="no such model directory"):
    vqzoo.PretrainedVQVAE.from_pretrained("./not-saved")  # a path, never a Hub id
  with pytest.raises(TypeError, match="unexpected arguments"):
    vqzoo.PretrainedVQVAE.from_pretrained("./saved-model", device_map="auto")


def test_an_initialiser_that_cannot_run_alone_falls_back_to_the_compiled_init(monkeypatch):
  from vqzoo.pretrained import initial

  def cannot_run_alone(*args):
    raise RuntimeError("needs its module")

  monkeypatch.setattr(initial, "_in_jax", cannot_run_alone)
  config = registry.get_config("mnist-conv-ema")
  _, state = initial_weights(config, seed=0)
  _, reference = compiled_init(build(config), jax.random.PRNGKey(0),
                               jnp.zeros((1, *config.image_shape)), True)
  module = next(m for m in reference if "codebook" in reference[m])
  np.testing.assert_array_equal(state[module]["codebook"], reference[module]["codebook"])
