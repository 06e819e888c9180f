"""pmap over 8 simulated CPU devices (see conftest): the quantizers' cross-replica statistics.

vqzoo's own training runs under ``jit`` over a mesh (statistics global by construction); these
tests keep the promise to users who run the quantizers and the train step under their own
``jax.pmap``.
"""

import chex
import haiku as hk
import jax
import numpy as np
import pytest

from vqzoo.training import trainer as train_lib
from vqzoo.configs import ConvConfig, ModelConfig, QuantizerConfig, TrainConfig
from vqzoo.nn import VectorQuantizerEMA

N_DEV = 8
K, D = 32, 8


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
  if jax.local_device_count() < N_DEV:
    raise RuntimeError(f"expected {N_DEV} CPU devices from XLA_FLAGS, got {jax.local_device_count()}")


def _replicate(tree, n):
  return jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)


def _ema_step(axis_name):
  def f(z):
    return VectorQuantizerEMA(num_embeddings=K, embedding_dim=D, commitment_cost=0.25, decay=0.9,
                              cross_replica_axis=axis_name, name="q")(z, True)
  return hk.transform_with_state(f)


def test_pmapped_ema_step_equals_one_device_on_the_whole_batch():
  z = np.random.default_rng(0).normal(size=(N_DEV * 16, D)).astype(np.float32)
  single = _ema_step(None)
  _, state = single.init(jax.random.PRNGKey(0), z)
  ref, ref_state = jax.jit(single.apply)({}, state, None, z)

  shards = z.reshape(N_DEV, 16, D)
  rep_state = _replicate(state, N_DEV)
  for axis, should_match in (("batch", True), (None, False)):
    fn = jax.pmap(_ema_step(axis).apply, axis_name="batch", in_axes=(None, 0, None, 0))
    out, new_state = fn({}, rep_state, None, shards)
    for r in range(N_DEV):
      got = {"codebook": new_state["q"]["codebook"][r],
             "sizes": new_state["q"]["ema_cluster_size_hidden"][r]}
      want = {"codebook": ref_state["q"]["codebook"], "sizes": ref_state["q"]["ema_cluster_size_hidden"]}
      if should_match:
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.perplexity[r], ref.perplexity, rtol=1e-5)
        np.testing.assert_allclose(np.mean(out.loss), ref.loss, rtol=1e-5)
        np.testing.assert_array_equal(out.code_counts[r], ref.code_counts)
      else:
        assert not np.allclose(got["codebook"], want["codebook"], atol=1e-4)
        assert not np.allclose(out.perplexity[r], ref.perplexity)


CONFIG = ModelConfig(arch="conv", conv=ConvConfig(16, 1, 8),
                     quantizer=QuantizerConfig(K, D, ema=True, dead_code_threshold=1.0))


def test_pmapped_train_step_keeps_replicas_identical(mnist_train):
  recipe = TrainConfig(steps=3, batch_size=N_DEV * 4, learning_rate=1e-3, warmup_steps=0)
  optimizer = train_lib.make_optimizer(recipe)
  ts = train_lib.init_train_state(CONFIG, optimizer, seed=0)
  step = jax.pmap(train_lib.make_train_step(CONFIG, optimizer, axis_name=train_lib.AXIS),
                  axis_name=train_lib.AXIS)
  rts = _replicate(jax.device_get(ts), N_DEV)
  # Different images on every replica: only pmean keeps them in sync.
  images = mnist_train[:recipe.batch_size * 3].astype(np.float32) / 255
  for i in range(3):
    batch = images[i * recipe.batch_size:(i + 1) * recipe.batch_size].reshape(N_DEV, 4, 28, 28, 1)
    rts, metrics = step(rts, batch)
  for tree in (rts.params, rts.state, rts.opt_state):
    for leaf in jax.tree_util.tree_leaves(tree):
      leaf = np.asarray(leaf)
      for r in range(1, N_DEV):
        np.testing.assert_array_equal(leaf[r], leaf[0])
  first = jax.tree_util.tree_leaves(ts.params)[0]
  assert not np.allclose(jax.tree_util.tree_leaves(rts.params)[0][0], first)  # it did train
  assert np.all(np.isfinite(np.asarray(metrics["loss"])))


def test_the_mesh_step_equals_the_pmapped_step(mnist_train):
  """train()'s jit-over-a-mesh step on 4 devices computes what a 4-replica pmap computes."""
  recipe = TrainConfig(steps=2, batch_size=16, learning_rate=1e-3, warmup_steps=0)
  optimizer = train_lib.make_optimizer(recipe)
  ts = jax.device_get(train_lib.init_train_state(CONFIG, optimizer, seed=0))
  images = mnist_train[:16].astype(np.float32) / 255
  mesh_step, parallel = train_lib.compile_step(CONFIG, optimizer, jax.local_devices()[:4])
  mesh_ts, mesh_metrics = mesh_step(parallel.replicate(ts), parallel.shard(images))
  pmapped = jax.pmap(train_lib.make_train_step(CONFIG, optimizer, axis_name=train_lib.AXIS),
                     axis_name=train_lib.AXIS, devices=jax.local_devices()[:4])
  rts, metrics = pmapped(_replicate(ts, 4), images.reshape(4, 4, 28, 28, 1))
  chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: np.asarray(x)[0], rts),
                              jax.device_get(mesh_ts), rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(metrics["loss"])[0], np.asarray(mesh_metrics["loss"]),
                             rtol=1e-5)
