"""Mixed precision (``TrainConfig.compute_dtype="bfloat16"``): bfloat16 encoder and decoder on
float32 parameters, a float32 quantizer and a float32 reconstruction loss."""

import dataclasses
import json

import haiku as hk
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import vqzoo
from vqzoo.configs import ConvConfig, ModelConfig, QuantizerConfig, TrainConfig
from vqzoo.nn import build
from vqzoo.training import trainer as train_lib

from _util import synthetic_images

CONFIG = ModelConfig(arch="conv", image_shape=(16, 16, 1),
                     conv=ConvConfig(num_hiddens=16, num_residual_layers=1,
                                     num_residual_hiddens=8),
                     quantizer=QuantizerConfig(num_embeddings=32, embedding_dim=8, ema=True))
RECIPE = TrainConfig(steps=40, batch_size=32, learning_rate=3e-3, warmup_steps=0,
                     compute_dtype="bfloat16")


def _images(n=32, seed=0):
  return synthetic_images(n, CONFIG.image_shape, seed).astype(np.float32) / 255


def _state():
  optimizer = train_lib.make_optimizer(RECIPE)
  return optimizer, train_lib.init_train_state(CONFIG, optimizer, 0)


def _float_dtypes(tree):
  return {x.dtype for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_params_and_optimizer_state_stay_float32():
  optimizer, ts = _state()
  step = jax.jit(train_lib.make_train_step(CONFIG, optimizer, compute_dtype="bfloat16"))
  ts, metrics = step(ts, jnp.asarray(_images()))
  for part in (ts.params, ts.state, ts.opt_state):
    assert _float_dtypes(part) == {jnp.dtype(jnp.float32)}
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
  # init inside a bfloat16 transform also creates float32 params
  init = lambda rng, x: build(CONFIG, compute_dtype="bfloat16").init(rng, x, True)
  params, _ = jax.eval_shape(init, jax.random.PRNGKey(0),
                             jnp.zeros((1, *CONFIG.image_shape), jnp.bfloat16))
  assert _float_dtypes(params) == {jnp.dtype(jnp.float32)}


def _jaxpr_ops(fn, *args):
  """``(primitive name, operand dtypes)`` of every equation, sub-jaxprs included."""
  out = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      out.append((eqn.primitive.name, tuple(v.aval.dtype for v in eqn.invars
                                            if hasattr(v.aval, "dtype"))))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return out


def test_encoder_and_decoder_compute_in_bfloat16_the_search_in_float32():
  _, ts = _state()
  x = jnp.asarray(_images(8))
  for dtype in ("float32", "bfloat16"):
    apply = build(CONFIG, compute_dtype=dtype).apply
    out, _ = apply(ts.params, ts.state, None, x, False)
    assert out.z_e.dtype == out.reconstruction.dtype == out.reconstruction_loss.dtype == jnp.float32
    ops = _jaxpr_ops(lambda p, s, x: apply(p, s, None, x, False)[0].loss, ts.params, ts.state, x)
    convs = [dts for name, dts in ops if name == "conv_general_dilated"]
    dots = [dts for name, dts in ops if name == "dot_general"]
    assert convs, ops
    want = jnp.dtype(dtype)
    # every convolution (encoder and decoder) in the compute dtype ...
    assert all(set(dts) == {want} for dts in convs), convs
    # ... and the distance matmul of the search (D = 8 against the [K, D] codebook) in float32
    assert any(set(dts) == {jnp.dtype(jnp.float32)} for dts in dots), dots


def test_encoder_and_decoder_outputs_are_bfloat16_the_codes_int32():
  _, ts = _state()
  seen = {}

  def spy(next_fn, args, kwargs, context):
    out = next_fn(*args, **kwargs)
    if context.method_name == "__call__" and context.module.module_name == "vqvae/~/encoder":
      seen["encoder"] = out.dtype
    if context.method_name == "__call__" and context.module.module_name == "vqvae/~/decoder":
      seen["decoder"] = out.dtype
    return out

  def forward(x):
    with hk.intercept_methods(spy):
      return vqzoo.nn.make_vqvae(CONFIG, compute_dtype="bfloat16")(x, False)
  out, _ = hk.transform_with_state(forward).apply(ts.params, ts.state, None,
                                                  jnp.asarray(_images(4)))
  assert seen == {"encoder": jnp.bfloat16, "decoder": jnp.bfloat16}
  assert out.codes.dtype == jnp.int32


def test_bfloat16_and_float32_give_the_same_codes_on_the_same_params():
  _, ts = _state()
  x = jnp.asarray(_images(64, seed=1))
  codes = {dtype: np.asarray(build(CONFIG, compute_dtype=dtype).apply(
      ts.params, ts.state, None, x, False)[0].codes) for dtype in ("float32", "bfloat16")}
  agree = np.mean(codes["float32"] == codes["bfloat16"])
  print(f"codes equal in bfloat16 and float32: {agree:.4f}")
  assert agree >= 0.97, agree  # the rest: near-ties moved by bfloat16 rounding of z_e


def test_a_short_bfloat16_run_lowers_the_loss(tmp_path):
  images = synthetic_images(256, CONFIG.image_shape)
  result = train_lib.train(CONFIG, RECIPE, tmp_path, images,
                           run=vqzoo.configs.RunConfig(log_every=1, progress=False))
  lines = [json.loads(l) for l in (tmp_path / train_lib.METRICS_NAME).read_text().splitlines()]
  first, last = lines[0]["mse"], np.mean([l["mse"] for l in lines[-5:]])
  print(f"bfloat16 run: mse {first:.4f} at step 1, {last:.4f} over the last 5 steps")
  assert last < 0.7 * first, (first, last)
  assert _float_dtypes(result.params) == {jnp.dtype(jnp.float32)}
  # the checkpoint records the recipe with its compute dtype
  from vqzoo.training import checkpoint
  assert checkpoint.read(tmp_path / train_lib.CHECKPOINT_NAME).recipe["compute_dtype"] == "bfloat16"


def test_compute_dtype_is_validated_and_omitted_at_its_default():
  for bad in ("float16", "bf16", jnp.bfloat16, None, 32):
    with pytest.raises(ValueError, match="compute_dtype"):
      TrainConfig(compute_dtype=bad)
  with pytest.raises(ValueError, match="compute_dtype"):
    build(CONFIG, compute_dtype="float16")
  assert "compute_dtype" not in TrainConfig().to_dict()
  assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
  assert RECIPE.to_dict()["compute_dtype"] == "bfloat16"
  assert TrainConfig.from_dict(RECIPE.to_dict()) == RECIPE
  # a float32 recipe's record is the one written before the field existed
  old = dataclasses.replace(RECIPE, compute_dtype="float32").to_dict()
  assert sorted(old) == ["batch_size", "dataset", "final_lr_fraction", "learning_rate",
                         "schedule", "seed", "split", "steps", "warmup_steps"]


def test_gpu_benchmark_smoke_mode_runs_on_the_cpu(tmp_path, capsys):
  """``benchmarks/gpu.py --device cpu``: the vqzoo half (and the PyTorch half where torch is
  installed) runs, prints its table and writes JSON."""
  import importlib.util
  from _util import REPO
  spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "benchmarks" / "gpu.py")
  gpu = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gpu)
  out = tmp_path / "gpu.json"
  assert gpu.main(["--device", "cpu", "--steps", "2", "--warmup", "0", "--batch", "4",
                   "--models", "mnist-conv-ema", "--dtypes", "bfloat16",
                   "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "| train | mnist-conv-ema | bfloat16 | 4 |" in printed
  assert "| reconstruct | mnist-conv-ema | bfloat16 | 4 |" in printed
  rows = json.loads(out.read_text())["rows"]
  vq = [r for r in rows if r["framework"] == "vqzoo"]
  assert {r["what"] for r in vq} == {"train", "reconstruct"}
  assert all(r["img_per_s"] > 0 and r["first_step_s"] > 0 for r in rows)
  if gpu.torch_missing("cpu"):
    assert "PyTorch half skipped" in printed
