"""Encoders and decoders: an MLP, and a conv net in the style of van den Oord et al. (2017).

Any ``hk.Module`` with the right shapes can replace them in :class:`vqzoo.nn.VQVAE`; these are
the zoo's. Conv layers are plain ``hk.Conv2D`` (SAME padding, NHWC); :mod:`vqzoo.cpu_tuning`
may compute some of them differently on the CPU, with the same parameters and result, and may
run the conv encoder and decoder on slices of the batch (:class:`vqzoo.nn.hooks.IndependentRows`).

The conv decoder upsamples with sub-pixel convolutions (a 3x3 conv to 4x the
channels, then depth-to-space) instead of ``Conv2DTranspose``: on XLA's CPU
backend a 4x4 stride-2 transposed conv is several times slower, while the
sub-pixel form covers the same 2x2 input neighbourhood per output pixel (and
more: 3x3), has the same output size, and is the same operator family that a
transposed conv is a special case of.
"""

from __future__ import annotations

import math
from typing import Sequence

import chex
import haiku as hk
import jax
import jax.numpy as jnp

from vqzoo.nn import hooks

# The MLP's weights: Glorot-uniform, zero bias.
glorot_uniform = hk.initializers.VarianceScaling(1.0, "fan_avg", "uniform")


class MLPEncoder(hk.Module):
  """``[B, H, W, C] -> [B, D]``: flatten, ReLU hidden layers, linear to D.

  Args:
    hidden_sizes: widths of the hidden layers (the zoo's MLP: ``(128, 64)``).
    embedding_dim: D.
    name: module name.
  """

  def __init__(self, hidden_sizes: Sequence[int], embedding_dim: int, name: str | None = None):
    super().__init__(name=name)
    self.sizes = (*hidden_sizes, embedding_dim)

  def __call__(self, x: jax.Array) -> jax.Array:
    chex.assert_rank(x, 4)
    h = hk.Flatten()(x)
    return hk.nets.MLP(self.sizes, w_init=glorot_uniform, activation=jax.nn.relu)(h)


class MLPDecoder(hk.Module):
  """``[B, D] -> [B, H, W, C]``: ReLU hidden layers, linear to ``H*W*C``.

  Args:
    hidden_sizes: widths of the hidden layers (the zoo's MLP: ``(128,)``).
    image_shape: ``(H, W, C)``.
    name: module name.
  """

  def __init__(self, hidden_sizes: Sequence[int], image_shape: Sequence[int], name: str | None = None):
    super().__init__(name=name)
    self.image_shape = tuple(image_shape)
    self.sizes = (*hidden_sizes, math.prod(self.image_shape))

  def __call__(self, z: jax.Array) -> jax.Array:
    chex.assert_rank(z, 2)
    h = hk.nets.MLP(self.sizes, w_init=glorot_uniform, activation=jax.nn.relu)(z)
    return jnp.reshape(h, (z.shape[0], *self.image_shape))


class ResidualStack(hk.Module):
  """``num_layers`` x (ReLU, 3x3 conv, ReLU, 1x1 conv) with skips, then ReLU."""

  def __init__(self, num_hiddens: int, num_layers: int, num_residual_hiddens: int, name: str | None = None):
    super().__init__(name=name)
    self.num_hiddens = num_hiddens
    self.num_layers = num_layers
    self.num_residual_hiddens = num_residual_hiddens

  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      h = hk.Conv2D(self.num_residual_hiddens, 3, name=f"res3x3_{i}")(jax.nn.relu(x))
      x = x + hk.Conv2D(self.num_hiddens, 1, name=f"res1x1_{i}")(jax.nn.relu(h))
    return jax.nn.relu(x)


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
  """``[B, H, W, C * block^2] -> [B, H * block, W * block, C]``."""
  b, h, w, c = x.shape
  out_c = c // (block * block)
  x = jnp.reshape(x, (b, h, w, block, block, out_c))
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return jnp.reshape(x, (b, h * block, w * block, out_c))


class SubPixelUpsample(hk.Module):
  """``[B, H, W, C] -> [B, 2H, 2W, channels]``: 3x3 conv to 4x channels, depth-to-space."""

  def __init__(self, channels: int, name: str | None = None):
    super().__init__(name=name)
    self.channels = channels

  def __call__(self, x: jax.Array) -> jax.Array:
    return depth_to_space(hk.Conv2D(4 * self.channels, 3, name="conv")(x), 2)


class ConvEncoder(hooks.IndependentRows):
  """``[B, H, W, C] -> [B, H/4, W/4, D]``.

  4x4 stride-2 conv (h/2), 4x4 stride-2 conv (h), 3x3 conv (h), residual stack,
  1x1 projection to the embedding dimension.

  Args:
    num_hiddens: h, channels of the main path (even).
    num_residual_layers: residual blocks.
    num_residual_hiddens: channels inside each residual block.
    embedding_dim: D, channels of the output.
    name: module name.
  """

  def __init__(self, num_hiddens: int, num_residual_layers: int, num_residual_hiddens: int,
               embedding_dim: int, name: str | None = None):
    super().__init__(name=name)
    self.num_hiddens = num_hiddens
    self.num_residual_layers = num_residual_layers
    self.num_residual_hiddens = num_residual_hiddens
    self.embedding_dim = embedding_dim

  def __call__(self, x: jax.Array) -> jax.Array:
    chex.assert_rank(x, 4)
    h = jax.nn.relu(hk.Conv2D(self.num_hiddens // 2, 4, stride=2, name="down_1")(x))
    h = jax.nn.relu(hk.Conv2D(self.num_hiddens, 4, stride=2, name="down_2")(h))
    h = hk.Conv2D(self.num_hiddens, 3, name="conv3x3")(h)
    h = ResidualStack(self.num_hiddens, self.num_residual_layers, self.num_residual_hiddens)(h)
    return hk.Conv2D(self.embedding_dim, 1, name="to_embedding")(h)


class ConvDecoder(hooks.IndependentRows):
  """``[B, H/4, W/4, D] -> [B, H, W, C]``, mirroring :class:`ConvEncoder`.

  3x3 conv (h), residual stack, sub-pixel upsample to h/2, ReLU, sub-pixel
  upsample to C.

  Args:
    num_hiddens, num_residual_layers, num_residual_hiddens: as :class:`ConvEncoder`.
    out_channels: C, channels of the images.
    name: module name.
  """

  def __init__(self, num_hiddens: int, num_residual_layers: int, num_residual_hiddens: int,
               out_channels: int, name: str | None = None):
    super().__init__(name=name)
    self.num_hiddens = num_hiddens
    self.num_residual_layers = num_residual_layers
    self.num_residual_hiddens = num_residual_hiddens
    self.out_channels = out_channels

  def __call__(self, z: jax.Array) -> jax.Array:
    chex.assert_rank(z, 4)
    h = hk.Conv2D(self.num_hiddens, 3, name="conv3x3")(z)
    h = ResidualStack(self.num_hiddens, self.num_residual_layers, self.num_residual_hiddens)(h)
    h = jax.nn.relu(SubPixelUpsample(self.num_hiddens // 2, name="up_1")(h))
    return SubPixelUpsample(self.out_channels, name="up_2")(h)
