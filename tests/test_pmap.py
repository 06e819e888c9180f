"""pmap over 8 simulated CPU devices (see conftest): cross-replica EMA and synchronised params."""

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


def _ema_step(axis_name):
  def f(z):
    return VectorQuantizerEMA(embedding_dim=D, num_embeddings=K, commitment_cost=0.25, decay=0.9,
                              cross_replica_axis=axis_name, name="q")(z, True)
  return hk.transform_with_state(f)


def test_pmapped_ema_step_equals_one_device_on_the_whole_batch():
  z = np.random.default_rng(0).normal(size=(N_DEV * 16, D)).astype(np.float32)
  single = _ema_step(None)
  _, state = single.init(jax.random.PRNGKey(0), z)
  ref, ref_state = jax.jit(single.apply)({}, state, None, z)

  shards = z.reshape(N_DEV, 16, D)
  rep_state = train_lib.replicate(state, N_DEV)
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


def test_pmapped_train_step_keeps_replicas_identical(mnist_train):
  config = ModelConfig(arch="conv", conv=ConvConfig(16, 1, 8),
                       quantizer=QuantizerConfig(K, D, ema=True, dead_code_threshold=1.0))
  recipe = TrainConfig(steps=3, batch_size=N_DEV * 4, learning_rate=1e-3, warmup_steps=0)
  optimizer = train_lib.make_optimizer(recipe)
  ts = train_lib.init_train_state(config, optimizer, seed=0)
  step = jax.pmap(train_lib.make_train_step(config, optimizer), axis_name=train_lib.AXIS)
  rts = train_lib.replicate(jax.device_get(ts), N_DEV)
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


def test_the_replica_check_finds_a_single_differing_bit():
  devices = jax.local_devices()[:4]
  check = train_lib.compile_replica_check(devices)
  tree = {"w": np.zeros((4, 3, 2), np.float32), "n": np.arange(4)[:, None] * 0}
  prints = check(tree)
  assert prints.shape == (4,) and len(set(prints.tolist())) == 1
  tree["w"][2, 1, 0] = -0.0  # equal as a float, one bit apart
  prints = check(tree)
  assert prints[2] != prints[0] and prints[0] == prints[1] == prints[3]
  with pytest.raises(RuntimeError, match="replicas diverged by step 7.*process 0"):
    train_lib._check_replicas(check, tree, 7, devices)


def test_each_replica_gets_its_rows_of_the_global_batch(mnist_train):
  recipe = TrainConfig(steps=3, batch_size=8, seed=1)
  batch = next(train_lib.data_lib.batches(mnist_train[:64], 8, 1))
  for replicas in ([0, 1, 2, 3], [1, 3], [2]):
    local = next(train_lib._local_batches(mnist_train[:64], recipe, 0, replicas, 4))
    np.testing.assert_array_equal(local, np.stack([batch[2 * r:2 * r + 2] for r in replicas]))
