"""The quantizer family through the whole model: ``QuantizerConfig.kind`` builds each one, and
``vqzoo.training.train`` and the codec run with it."""

import math

import chex
import haiku as hk
import jax
import numpy as np
import pytest
from _util import compiled_init, synthetic_images

import vqzoo.nn as vnn
from vqzoo.configs import ConvConfig, ModelConfig, QuantizerConfig, RunConfig, TrainConfig
from vqzoo.training import train

KINDS = {
    "vq": QuantizerConfig(32, 8, ema=True, dead_code_threshold=0.5),
    "fsq": QuantizerConfig(kind="fsq", levels=(8, 5, 5, 5)),
    "rvq": QuantizerConfig(16, 8, kind="rvq", num_stages=2, quantizer_dropout=0.5, ema=True,
                           dead_code_threshold=0.5),
    "lfq": QuantizerConfig(256, kind="lfq"),
    "vq-options": QuantizerConfig(32, 8, cosine=True, lookup_dim=4, kmeans_init=True,
                                  gradient_estimator="rotation", dead_code_threshold=0.5),
    "rvq-options": QuantizerConfig(16, 8, kind="rvq", num_stages=2, ema=True, lookup_dim=4,
                                   kmeans_init=True, gradient_estimator="rotation"),
}


def _config(q):
  return ModelConfig(arch="conv", conv=ConvConfig(16, 1, 8), quantizer=q)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_trains_and_round_trips_through_the_codec(kind, tmp_path):
  config = _config(KINDS[kind])
  images = synthetic_images(128)
  recipe = TrainConfig(steps=20, batch_size=16, learning_rate=2e-3, warmup_steps=0)
  result = train(config, recipe, tmp_path, images, run=RunConfig(progress=False, log_every=10),
                 devices=jax.local_devices()[:1])
  assert result.step == 20 and math.isfinite(result.metrics["loss"])
  codec = vnn.build_codec(config)
  x = images[:8].astype(np.float32) / 255
  codes, _ = codec.apply.encode(result.params, result.state, None, x)
  q = config.quantizer
  assert codes.shape == (8, 7, 7, *q.code_shape) and codes.dtype == np.int32
  assert codes.min() >= 0 and codes.max() < q.num_embeddings
  decoded, _ = codec.apply.decode(result.params, result.state, None, codes)
  again, _ = codec.apply.reconstruct(result.params, result.state, None, x)
  np.testing.assert_allclose(decoded, again, atol=1e-5)
  assert np.mean((again - x) ** 2) < np.mean(x ** 2)  # better than black: it learnt something
  if kind.startswith("rvq"):  # a prefix of the codes decodes at that depth
    shallow, _ = codec.apply.decode(result.params, result.state, None, codes[..., :1])
    assert shallow.shape == x.shape and not np.allclose(shallow, decoded)


def test_kind_is_validated_and_old_configs_load_unchanged():
  old = {"num_embeddings": 128, "embedding_dim": 16, "commitment_cost": 0.25, "ema": True,
         "decay": 0.99, "epsilon": 1e-5, "dead_code_threshold": 1.0}
  q = QuantizerConfig.from_dict(old)
  assert q.kind == "vq" and q.to_dict() == old  # the same keys come back out
  fsq = QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5])
  assert (fsq.num_embeddings, fsq.embedding_dim, fsq.levels) == (1000, 4, (8, 5, 5, 5))
  assert QuantizerConfig.from_dict(fsq.to_dict()) == fsq
  assert QuantizerConfig(128, kind="lfq").embedding_dim == 7
  for bad, field in ((dict(kind="pq"), "kind"), (dict(kind="fsq"), "levels"),
                     (dict(kind="fsq", levels=(8, 2)), "levels"),
                     (dict(kind="fsq", levels=(8, 5), embedding_dim=3), "embedding_dim"),
                     (dict(levels=(8, 5)), "levels"), (dict(num_stages=2), "num_stages"),
                     (dict(kind="fsq", levels=(5, 5), ema=True), "ema"),
                     (dict(kind="lfq", num_embeddings=100), "num_embeddings"),
                     (dict(kind="lfq", num_embeddings=128, embedding_dim=6), "embedding_dim"),
                     (dict(entropy_weight=0.5), "entropy_weight"),
                     (dict(kind="rvq", num_stages=2, cosine=True), "cosine"),
                     (dict(gradient_estimator="reinforce"), "gradient_estimator")):
    with pytest.raises(ValueError, match=field):
      QuantizerConfig(**bad)


USER_QUANTIZERS = {
    "vq": lambda: vnn.VectorQuantizer(4, 32, 0.25, cosine=True, lookup_dim=3,
                                      gradient_estimator="rotation"),
    "ema": lambda: vnn.VectorQuantizerEMA(4, 32, 0.25, kmeans_init=True),
    "fsq": lambda: vnn.FSQ((5, 5, 5, 5)),
    "rvq": lambda: vnn.ResidualVQ(4, 16, 3, 0.25, quantizer_dropout=0.5,
                                  gradient_estimator="rotation"),
    "lfq": lambda: vnn.LFQ(4),
}


@pytest.mark.parametrize("name", sorted(USER_QUANTIZERS))
def test_each_module_in_a_user_written_transform_with_its_own_encoder(name):
  """A user's own modules around each quantizer: gradients reach the encoder, codes decode."""
  class Encoder(hk.Module):
    def __call__(self, x):
      return hk.Linear(4)(hk.Flatten()(x))

  class Decoder(hk.Module):
    def __call__(self, z):
      return hk.Reshape((28, 28, 1))(hk.Linear(784)(z))

  def forward(x, is_training):
    return vnn.VQVAE(Encoder(name="enc"), Decoder(name="dec"), USER_QUANTIZERS[name]())(
        x, is_training)

  def decode(codes):
    return vnn.VQVAE(Encoder(name="enc"), Decoder(name="dec"),
                     USER_QUANTIZERS[name]()).decode_codes(codes)

  model = hk.transform_with_state(forward)
  x = synthetic_images(32).astype(np.float32) / 255
  params, state = compiled_init(model, jax.random.PRNGKey(0), x, True)
  loss = lambda p: model.apply(p, state, jax.random.PRNGKey(1), x, True)[0].loss
  grads = jax.grad(loss)(params)
  assert np.any(np.asarray(grads["enc/linear"]["w"]) != 0)
  out, _ = model.apply(params, state, None, x, False)
  decoded, _ = hk.transform_with_state(decode).apply(params, state, None, out.codes)
  np.testing.assert_allclose(decoded, out.reconstruction, atol=1e-5)


@pytest.mark.parametrize("kind", ["fsq", "lfq", "rvq", "rvq-options", "vq-options"])
def test_a_pmapped_train_step_equals_one_device_on_the_whole_batch(kind):
  """Every statistic of the new kinds (EMA per stage, k-means, LFQ's entropies, usage and
  re-seeding, the dropout depth) is taken over the global batch, as on one device."""
  from vqzoo.training import trainer as train_lib
  n_dev = 2
  config = _config(KINDS[kind])
  recipe = TrainConfig(steps=2, batch_size=16, learning_rate=1e-3, warmup_steps=0)
  optimizer = train_lib.make_optimizer(recipe)
  ts = jax.device_get(train_lib.init_train_state(config, optimizer, seed=0))
  images = synthetic_images(32, seed=1).astype(np.float32) / 255
  one = jax.jit(train_lib.make_train_step(config, optimizer))
  many = jax.pmap(train_lib.make_train_step(config, optimizer, axis_name=train_lib.AXIS),
                  axis_name=train_lib.AXIS, devices=jax.local_devices()[:n_dev])
  rts = jax.tree_util.tree_map(lambda x: np.broadcast_to(x, (n_dev, *np.shape(x))), ts)
  for i in range(2):
    batch = images[i * 16:(i + 1) * 16]
    ts, metrics = one(ts, batch)
    rts, rmetrics = many(rts, batch.reshape(n_dev, 8, *batch.shape[1:]))
  chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: np.asarray(x)[0], rts.params),
                              jax.device_get(ts.params), rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: np.asarray(x)[1], rts.state),
                              jax.device_get(ts.state), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(rmetrics["perplexity"])[0], metrics["perplexity"],
                             rtol=1e-4)


@pytest.mark.parametrize("kind", ["fsq", "rvq", "lfq"])
def test_each_kind_measures_fine_tunes_and_refuses_reseed_before(kind, tmp_path):
  """evaluate counts every stage's bits (and MSE per depth for rvq), and fine-tuning refuses
  reseed_before (one codebook's unused codes) with a reason, before reading any data."""
  import vqzoo
  from vqzoo.training import finetune
  config = _config(KINDS[kind])
  base = vqzoo.PretrainedVQVAE(config)
  base.save_pretrained(tmp_path / "base")
  images = synthetic_images(64)
  m = vqzoo.evaluate(config, base.params, base.state, images)
  stages = config.quantizer.num_stages if kind == "rvq" else 1
  assert m["bits_per_image"] == 49 * stages * math.log2(config.quantizer.num_embeddings)
  assert ("mse_by_depth" in m) == (kind == "rvq")
  if kind == "rvq":
    assert len(m["mse_by_depth"]) == stages and math.isclose(m["mse_by_depth"][-1], m["mse"],
                                                             rel_tol=1e-5)
    # Each stage's own histogram, beside the pooled one: the same codes, counted per stage.
    codes = np.asarray(base.encode(images))  # [64, 7, 7, stages]
    k = config.quantizer.num_embeddings
    assert m["codes_used_by_stage"] == [len(np.unique(codes[..., s])) for s in range(stages)]
    assert m["codes_used"] == len(np.unique(codes))
    for s, perplexity in enumerate(m["perplexity_by_stage"]):
      p = np.bincount(codes[..., s].ravel(), minlength=k) / codes[..., s].size
      assert perplexity == pytest.approx(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))))
  else:
    assert "codes_used_by_stage" not in m and "perplexity_by_stage" not in m
  with pytest.raises(ValueError, match="reseed_before.*'" + kind + "'"):
    finetune(str(tmp_path / "base"), tmp_path / "out", vqzoo.FinetuneConfig(reseed_before=True),
             images_dir=str(tmp_path / "nowhere"))


def test_a_pretrained_residual_model_decodes_any_prefix_of_its_stages():
  import vqzoo
  config = _config(KINDS["rvq"])
  model = vqzoo.PretrainedVQVAE(config)
  images = synthetic_images(4)
  codes = model.encode(images)
  assert codes.shape == (4, 7, 7, 2)
  shallow = model.decode(codes[..., :1])
  assert shallow.shape == (4, 28, 28, 1) and not np.allclose(shallow, model.decode(codes))
  with pytest.raises(ValueError, match=r"expected shape \[B, 7, 7, 2\]"):
    model.decode(np.concatenate([codes, codes[..., :1]], axis=-1))  # 3 stages of 2
