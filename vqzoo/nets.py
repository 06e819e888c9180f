"""Encoders and decoders: the seed's MLP and a conv net in the style of the paper.

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

# The seed's weights: Glorot-uniform, zero bias.
glorot_uniform = hk.initializers.VarianceScaling(1.0, "fan_avg", "uniform")


class MLPEncoder(hk.Module):
  """``[B, H, W, C] -> [B, D]``: flatten, ReLU hidden layers, linear to D."""

  def __init__(self, hidden_sizes: Sequence[int], embedding_dim: int, name=None):
    super().__init__(name=name)
    self.sizes = (*hidden_sizes, embedding_dim)

  def __call__(self, x: jax.Array) -> jax.Array:
    chex.assert_rank(x, 4)
    h = hk.Flatten()(x)
    return hk.nets.MLP(self.sizes, w_init=glorot_uniform, activation=jax.nn.relu)(h)


class MLPDecoder(hk.Module):
  """``[B, D] -> [B, H, W, C]``: ReLU hidden layers, linear to ``H*W*C``."""

  def __init__(self, hidden_sizes: Sequence[int], image_shape: Sequence[int], name=None):
    super().__init__(name=name)
    self.image_shape = tuple(image_shape)
    self.sizes = (*hidden_sizes, math.prod(self.image_shape))

  def __call__(self, z: jax.Array) -> jax.Array:
    chex.assert_rank(z, 2)
    h = hk.nets.MLP(self.sizes, w_init=glorot_uniform, activation=jax.nn.relu)(z)
    return jnp.reshape(h, (z.shape[0], *self.image_shape))


_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, tuple[int, int]]:
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return out, (total // 2, total - total // 2)


def conv_as_matmul(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
  """SAME convolution as one matrix product over im2col patches.

  ``x`` ``[B, H, W, C]``, ``w`` ``[kh, kw, C, O]`` -> ``[B, H/stride, W/stride, O]``; equal to
  ``lax.conv_general_dilated(x, w, (stride, stride), "SAME")`` up to summation order.
  """
  kh, kw, cin, cout = w.shape
  b, h, wd, _ = x.shape
  oh, pad_h = _same_padding(h, kh, stride)
  ow, pad_w = _same_padding(wd, kw, stride)
  if kh == kw == 1 and stride == 1:
    return (x.reshape(-1, cin) @ w.reshape(cin, cout)).reshape(b, h, wd, cout)
  x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  patches = jnp.concatenate(
      [x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]
       for i in range(kh) for j in range(kw)], axis=-1)
  return (patches.reshape(-1, kh * kw * cin) @ w.reshape(-1, cout)).reshape(b, oh, ow, cout)


def conv2d(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
  """SAME NHWC convolution, by the formulation XLA's CPU backend runs fastest for its shape.

  Measured per layer by ``benchmarks/conv_profile.py`` with :mod:`vqzoo.compilation`'s
  options (BENCHMARKS.md): 1x1 kernels and layers with a tiny fan-in (``kh*kw*C <= 16``, the
  first layer on grayscale images) are matrix products, forward and backward; the rest are
  XLA convolutions. Both are the same function of the same parameters.
  """
  kh, kw, cin, _ = w.shape
  if kh == kw == 1 or kh * kw * cin <= 16:
    return conv_as_matmul(x, w, stride)
  return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                      dimension_numbers=_DIMENSIONS)


class Conv2D(hk.Module):
  """``hk.Conv2D``'s parameters (``w`` ``[kh, kw, C, O]``, ``b`` ``[O]``) and initialiser, SAME
  padding, NHWC, computed by :func:`conv2d`."""

  def __init__(self, output_channels: int, kernel_shape: int, stride: int = 1, name=None):
    super().__init__(name=name)
    self.output_channels = output_channels
    self.kernel_shape = kernel_shape
    self.stride = stride

  def __call__(self, x: jax.Array) -> jax.Array:
    k, cin, cout = self.kernel_shape, x.shape[-1], self.output_channels
    w = hk.get_parameter("w", (k, k, cin, cout), x.dtype,
                         init=hk.initializers.TruncatedNormal(1.0 / math.sqrt(k * k * cin)))
    b = hk.get_parameter("b", (cout,), x.dtype, init=jnp.zeros)
    return conv2d(x, w, self.stride) + b


class ResidualStack(hk.Module):
  """``num_layers`` x (ReLU, 3x3 conv, ReLU, 1x1 conv) with skips, then ReLU."""

  def __init__(self, num_hiddens: int, num_layers: int, num_residual_hiddens: int, name=None):
    super().__init__(name=name)
    self.num_hiddens = num_hiddens
    self.num_layers = num_layers
    self.num_residual_hiddens = num_residual_hiddens

  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      h = Conv2D(self.num_residual_hiddens, 3, name=f"res3x3_{i}")(jax.nn.relu(x))
      x = x + Conv2D(self.num_hiddens, 1, name=f"res1x1_{i}")(jax.nn.relu(h))
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

  def __init__(self, channels: int, name=None):
    super().__init__(name=name)
    self.channels = channels

  def __call__(self, x: jax.Array) -> jax.Array:
    return depth_to_space(Conv2D(4 * self.channels, 3, name="conv")(x), 2)


class ConvEncoder(hk.Module):
  """``[B, H, W, C] -> [B, H/4, W/4, D]``.

  4x4 stride-2 conv (h/2), 4x4 stride-2 conv (h), 3x3 conv (h), residual stack,
  1x1 projection to the embedding dimension.
  """

  def __init__(self, num_hiddens: int, num_residual_layers: int, num_residual_hiddens: int,
               embedding_dim: int, name=None):
    super().__init__(name=name)
    self.num_hiddens = num_hiddens
    self.num_residual_layers = num_residual_layers
    self.num_residual_hiddens = num_residual_hiddens
    self.embedding_dim = embedding_dim

  def __call__(self, x: jax.Array) -> jax.Array:
    chex.assert_rank(x, 4)
    h = jax.nn.relu(Conv2D(self.num_hiddens // 2, 4, stride=2, name="down_1")(x))
    h = jax.nn.relu(Conv2D(self.num_hiddens, 4, stride=2, name="down_2")(h))
    h = Conv2D(self.num_hiddens, 3, name="conv3x3")(h)
    h = ResidualStack(self.num_hiddens, self.num_residual_layers, self.num_residual_hiddens)(h)
    return Conv2D(self.embedding_dim, 1, name="to_embedding")(h)


class ConvDecoder(hk.Module):
  """``[B, H/4, W/4, D] -> [B, H, W, C]``, mirroring :class:`ConvEncoder`.

  3x3 conv (h), residual stack, sub-pixel upsample to h/2, ReLU, sub-pixel
  upsample to C.
  """

  def __init__(self, num_hiddens: int, num_residual_layers: int, num_residual_hiddens: int,
               out_channels: int, name=None):
    super().__init__(name=name)
    self.num_hiddens = num_hiddens
    self.num_residual_layers = num_residual_layers
    self.num_residual_hiddens = num_residual_hiddens
    self.out_channels = out_channels

  def __call__(self, z: jax.Array) -> jax.Array:
    chex.assert_rank(z, 4)
    h = Conv2D(self.num_hiddens, 3, name="conv3x3")(z)
    h = ResidualStack(self.num_hiddens, self.num_residual_layers, self.num_residual_hiddens)(h)
    h = jax.nn.relu(SubPixelUpsample(self.num_hiddens // 2, name="up_1")(h))
    return SubPixelUpsample(self.out_channels, name="up_2")(h)
