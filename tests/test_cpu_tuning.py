"""vqzoo.cpu_tuning: every CPU trick computes what the plain model computes."""

import jax
import jax.numpy as jnp
import numpy as np

from vqzoo import cpu_tuning as compilation


def test_cpu_options_known_to_this_jaxlib_and_applied():
  # CI runs on the CPU with the pinned jaxlib: the option must exist there, or the fast
  # convolution path silently disappears.
  assert compilation.compiler_options() == compilation.CPU_COMPILER_OPTIONS


def test_user_flags_and_opt_out_win(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", f"--{compilation.YNN_OPTION}=")
  assert compilation.compiler_options() is None
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setenv("VQZOO_XLA_DEFAULTS", "1")
  assert compilation.compiler_options() is None


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_jit_and_pmap_compute_what_jax_computes():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 7, 7, 8)).astype(np.float32)
  w = rng.normal(size=(3, 3, 8, 16)).astype(np.float32)
  expected = np.stack([np.asarray(jax.jit(_conv)(xi, w)) for xi in x])
  np.testing.assert_allclose(compilation.jit(_conv)(x[0], w), expected[0], rtol=1e-4, atol=1e-4)
  pmapped = compilation.pmap(_conv, in_axes=(0, None), devices=jax.local_devices()[:2])
  for _ in range(2):  # the second call reuses the executable compiled by the first
    np.testing.assert_allclose(pmapped(x, w), expected, rtol=1e-4, atol=1e-4)
  # A new shape compiles a new executable instead of failing on the cached one.
  np.testing.assert_allclose(pmapped(x[:, :2], w), expected[:, :2], rtol=1e-4, atol=1e-4)
