"""vqzoo.cpu_tuning: every CPU trick computes what the plain model computes, through nn's hooks."""

import os
import subprocess
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqzoo import cpu_tuning
from vqzoo.nn import hooks

from _util import synthetic_images, traces_during, user_env  # noqa: E402


def test_cpu_options_known_to_this_jaxlib_and_applied():
  # CI runs on the CPU with the pinned jaxlib: the option must exist there, or the fast
  # convolution path silently disappears.
  assert cpu_tuning.compiler_options() == cpu_tuning.CPU_COMPILER_OPTIONS


def test_user_flags_and_opt_out_win(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", f"--{cpu_tuning.YNN_OPTION}=")
  assert cpu_tuning.compiler_options() is None
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setenv("VQZOO_XLA_DEFAULTS", "1")
  assert cpu_tuning.compiler_options() is None


INIT_EQUALITY = """
import jax, jax.numpy as jnp, numpy as np
from vqzoo.configs import ConvConfig, ModelConfig, QuantizerConfig, TrainConfig
from vqzoo.nn import build
from vqzoo.training.trainer import init_train_state, make_optimizer
config = ModelConfig(arch="conv", conv=ConvConfig(16, 1, 8),
                     quantizer=QuantizerConfig(32, 8, ema=True))
fresh = init_train_state(config, make_optimizer(TrainConfig(steps=2, batch_size=8)), seed=5)
init_rng = jax.random.split(jax.random.PRNGKey(5))[0]  # as init_train_state splits it
params, state = build(config).init(init_rng, jnp.zeros((1, 28, 28, 1)), True)  # op by op
for got, want in zip(jax.tree_util.tree_leaves((fresh.params, fresh.state)),
                     jax.tree_util.tree_leaves((params, state)), strict=True):
  np.testing.assert_array_equal(got, want)
"""


def test_a_training_init_compiled_once_equals_haikus_own_init_bit_for_bit():
  """jit_once (optimisation level 1) changes how long the init compiles, not its values: the
  trainer's fresh state is what ``build(config).init`` gives op by op, as before. In its own
  process with XLA's default flags, as a user runs it (the suite compiles op by op at level 0,
  _util.FAST_COMPILE)."""
  result = subprocess.run([sys.executable, "-c", INIT_EQUALITY], env=user_env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  once = cpu_tuning.jit_once(lambda x: x + 1)
  assert once(np.float32(1)) == 2
  assert jax.jit(once)(np.float32(1)) == 2  # inside another jit: compiled with it
  assert jax.eval_shape(once, np.float32(1)).shape == ()


def test_models_of_one_config_share_their_compiled_functions():
  """Loading a model again (or a saved copy: the same config) encodes, decodes and samples
  without tracing anything; with the tricks off it gets functions of its own."""
  import vqzoo
  digits = synthetic_images(8)

  def use():
    model = vqzoo.load("mnist-conv-ema")
    return model.decode(model.encode(digits)), model.sample(2, label=1, seed=0)
  first = use()
  second, traced = traces_during(use)
  assert traced == 0
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  with cpu_tuning.disabled():
    _, traced = traces_during(use)
  assert traced > 0


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_jit_computes_what_jax_computes():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 7, 7, 8)).astype(np.float32)
  w = rng.normal(size=(3, 3, 8, 16)).astype(np.float32)
  np.testing.assert_allclose(cpu_tuning.jit(_conv)(x, w), jax.jit(_conv)(x, w),
                             rtol=1e-4, atol=1e-4)
  assert not hasattr(cpu_tuning, "pmap")


def test_disabled_leaves_the_environment_alone_and_nests():
  before = dict(os.environ)
  assert cpu_tuning.enabled()
  with cpu_tuning.disabled():
    assert not cpu_tuning.enabled() and cpu_tuning.compiler_options() is None
    assert dict(os.environ) == before
    with cpu_tuning.disabled():
      assert not cpu_tuning.enabled()
    assert not cpu_tuning.enabled()
  assert cpu_tuning.enabled() and dict(os.environ) == before


class _Rows(hooks.IndependentRows):
  def __call__(self, x):
    return hk.Linear(3, name="lin")(x) * 2.0


class _NamedLikeAHook(hk.Module):
  """Has the hooks' names but does not inherit them: no trick may apply."""
  independent_rows = True

  def __call__(self, x):
    return hk.Linear(3, name="lin")(x)

  def argmin_rows(self, distances):
    return jnp.argmax(distances, axis=1).astype(jnp.int32)  # deliberately not a minimum


def _jaxpr(fn, *args):
  f = hk.transform(fn)
  params = f.init(jax.random.PRNGKey(0), *args)
  return params, str(jax.make_jaxpr(lambda p: f.apply(p, None, *args))(params))


def test_only_modules_that_inherit_a_hook_are_sliced_and_none_is_written_on():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(40, 5)), jnp.float32)
  made = []

  def forward(cls):
    def f(x):
      made.append(cls())
      return made[-1](x)
    return f

  small = lambda shape, dtype: 8  # 5 slices of 8 rows
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(cpu_tuning, "slice_rows", small)
    for cls, slices in ((_Rows, 5), (_NamedLikeAHook, 0)):
      params, plain = _jaxpr(forward(cls), x)
      attrs = set(vars(made[-1]))
      _, tuned = _jaxpr(cpu_tuning.tuned(forward(cls)), x)
      assert set(vars(made[-1])) == attrs  # nothing written onto the module
      assert tuned.count("dot_general") == plain.count("dot_general") * max(slices, 1)
      tuned_out = hk.transform(cpu_tuning.tuned(forward(cls))).apply(params, None, x)
      np.testing.assert_allclose(tuned_out, hk.transform(forward(cls)).apply(params, None, x),
                                 rtol=1e-6)


def test_the_code_search_hook_is_found_by_type_not_by_name():
  d = jnp.asarray(np.random.default_rng(2).normal(size=(6, 9)), jnp.float32)

  class Search(hooks.CodeSearch):
    def __call__(self, d):
      return self.argmin_rows(d)

  want = np.argmin(np.asarray(d), axis=1)
  for cls, expected in ((Search, want), (_NamedLikeAHook, np.argmax(np.asarray(d), axis=1))):
    f = lambda d: cls().argmin_rows(d)
    for fn in (f, cpu_tuning.tuned(f)):
      np.testing.assert_array_equal(hk.transform(fn).apply({}, None, d), expected)
  # The hook is taken: the two-reduction search has no argmin in it.
  searched = lambda fn: str(jax.make_jaxpr(lambda d: hk.transform(fn).apply({}, None, d))(d))
  f = lambda d: Search()(d)
  assert "argmin" in searched(f) and "argmin" not in searched(cpu_tuning.tuned(f))
  assert hooks.CODE_SEARCH_METHOD == "argmin_rows"


def test_slice_and_chunk_sizes_of_the_measured_shapes():
  assert cpu_tuning.slice_rows((28, 28, 1), np.float32) == 64
  assert cpu_tuning.slice_rows((28, 28, 1), jnp.bfloat16) == 128
  assert cpu_tuning.slice_rows((7, 7, 16), np.float32) == 64
  assert cpu_tuning.slice_rows((32, 32, 3), np.float32) == cpu_tuning.MIN_SLICE_ROWS == 32
  assert cpu_tuning.slice_rows((8, 8, 64), np.float32) == 32
  chunks = lambda shape: len(next(cpu_tuning.inference_chunks(np.zeros((1000, *shape)), shape,
                                                              "conv")))
  assert chunks((28, 28, 1)) == 128 and chunks((32, 32, 3)) == 32


@pytest.mark.parametrize("row_shape", [(28, 28, 1), (32, 32, 3), (7, 7, 16), (8, 8, 64)])
def test_slices_and_chunks_follow_the_input_shape_and_dtype(row_shape, monkeypatch):
  monkeypatch.setattr(cpu_tuning, "MIN_SLICE_ROWS", 1)  # the byte budget alone
  rows = cpu_tuning.slice_rows(row_shape, np.float32)
  assert rows >= 1
  assert cpu_tuning.slice_rows(row_shape, jnp.bfloat16) in (2 * rows, 2 * rows + 1)
  bigger = (row_shape[0] * 2, row_shape[1] * 2, row_shape[2])
  assert cpu_tuning.slice_rows(bigger, np.float32) < rows or rows == 1
  batch = np.zeros((1000, *row_shape), np.float32)
  sizes = [len(c) for c in cpu_tuning.inference_chunks(batch, row_shape, "conv")]
  assert sum(sizes) == 1000 and sizes[0] == cpu_tuning.CHUNK_BYTES // (4 * np.prod(row_shape))
  assert [len(c) for c in cpu_tuning.inference_chunks(batch, row_shape, "mlp")] == [1000]
  with cpu_tuning.disabled():
    assert [len(c) for c in cpu_tuning.inference_chunks(batch, row_shape, "conv")] == [1000]


def test_evaluate_in_inference_chunks_measures_what_one_call_measures(mnist_test):
  """evaluate's default batch is trick 4's chunk; a short last chunk is padded, never counted."""
  import vqzoo
  model = vqzoo.load("mnist-conv-rvq")  # residual: the per-depth errors are padded too
  images = mnist_test[:150]  # 128 + a short chunk of 22
  assert cpu_tuning.inference_chunk_rows((28, 28, 1), "conv") == 128
  assert cpu_tuning.inference_chunk_rows((28, 28, 1), "mlp") is None
  chunked = vqzoo.evaluate(model.config, model.params, model.state, images)
  whole = vqzoo.evaluate(model.config, model.params, model.state, images, batch_size=150)
  assert chunked["num_images"] == whole["num_images"] == 150
  assert chunked["codes_used"] == whole["codes_used"]
  for key in ("mse", "perplexity", "nmse"):
    assert chunked[key] == pytest.approx(whole[key], rel=1e-5), key
  assert chunked["mse_by_depth"] == pytest.approx(whole["mse_by_depth"], rel=1e-5)
  with pytest.raises(ValueError, match="positive number of images"):
    vqzoo.evaluate(model.config, model.params, model.state, images, batch_size=0)
