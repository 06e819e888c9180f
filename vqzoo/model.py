"""The VQ-VAE module and ``build(config)``.

Loss (the seed's, with MSE as the reconstruction term)::

    total = mean (x - D(z_q))^2  +  mean (sg[z_e] - e)^2  +  beta * mean (z_e - sg[e])^2

With the EMA codebook the middle (embedding) term is reported but not added:
the codebook follows moving averages instead.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import haiku as hk
import jax
import jax.numpy as jnp

from vqzoo import nets, quantizers
from vqzoo.configs import ModelConfig


# Conv encoders and decoders run on slices of at most this many pixels (64 MNIST images)
# inside one compiled function, at most MAX_SLICES slices. Same result (no layer mixes images);
# on XLA:CPU each slice's activations stay in cache, which measured ~25% faster forward +
# backward at batch 1024 and made no difference at 128 (BENCHMARKS.md).
CONV_SLICE_PIXELS = 64 * 28 * 28
MAX_SLICES = 16


def apply_in_slices(fn, x: jax.Array, max_rows: int) -> jax.Array:
  """``fn(x)`` computed on consecutive slices of ``x``'s leading axis and concatenated.

  Uses ``ceil(B / max_rows)`` slices (at most ``MAX_SLICES``: larger batches get larger
  slices, so the unrolled graph stays small); ``fn`` must treat rows independently.
  """
  rows = x.shape[0]
  if rows <= max_rows:
    return fn(x)
  size = -(-rows // min(MAX_SLICES, -(-rows // max_rows)))
  return jnp.concatenate([fn(x[i:i + size]) for i in range(0, rows, size)])


class VQVAEOutput(NamedTuple):
  """Named output of :func:`build`'s ``apply`` for images ``[B, H, W, C]``.

  Attributes:
    reconstruction: ``[B, H, W, C]`` decoder output (unclipped).
    codes: ``[B]`` (MLP) or ``[B, H/4, W/4]`` (conv) int32 code indices.
    z_e: encoder output, ``[B, D]`` or ``[B, H/4, W/4, D]``.
    z_q: straight-through quantized ``z_e``, same shape.
    loss: scalar total loss.
    reconstruction_loss: scalar ``mean (x - x_hat)^2``.
    codebook_loss: scalar embedding term ``mean (sg[z_e] - e)^2``.
    commitment_loss: scalar ``mean (z_e - sg[e])^2`` (before beta).
    perplexity: scalar perplexity of the batch's codes.
    code_counts: ``[K]`` int32 vectors per code in the batch.
  """

  reconstruction: jax.Array
  codes: jax.Array
  z_e: jax.Array
  z_q: jax.Array
  loss: jax.Array
  reconstruction_loss: jax.Array
  codebook_loss: jax.Array
  commitment_loss: jax.Array
  perplexity: jax.Array
  code_counts: jax.Array


class VQVAE(hk.Module):
  """Encoder, quantizer and decoder for one :class:`ModelConfig`."""

  def __init__(self, config: ModelConfig, cross_replica_axis: str | None = None,
               name: str | None = "vqvae"):
    super().__init__(name=name)
    self.config = config
    q = config.quantizer
    common = dict(num_embeddings=q.num_embeddings, embedding_dim=q.embedding_dim,
                  commitment_cost=q.commitment_cost, decay=q.decay,
                  dead_code_threshold=q.dead_code_threshold,
                  cross_replica_axis=cross_replica_axis, name="quantizer")
    if q.ema:
      self.quantizer = quantizers.VectorQuantizerEMA(epsilon=q.epsilon, **common)
    else:
      self.quantizer = quantizers.VectorQuantizer(**common)
    if config.arch == "mlp":
      self.encoder = nets.MLPEncoder(config.mlp.encoder_sizes, q.embedding_dim, name="encoder")
      self.decoder = nets.MLPDecoder(config.mlp.decoder_sizes, config.image_shape, name="decoder")
    else:
      c = config.conv
      self.encoder = nets.ConvEncoder(c.num_hiddens, c.num_residual_layers,
                                      c.num_residual_hiddens, q.embedding_dim, name="encoder")
      self.decoder = nets.ConvDecoder(c.num_hiddens, c.num_residual_layers,
                                      c.num_residual_hiddens, config.image_shape[-1],
                                      name="decoder")

  def _apply(self, net, x: jax.Array) -> jax.Array:
    if self.config.arch != "conv":
      return net(x)  # MLPs are matrix products: one large product beats several small ones
    h, w, _ = self.config.image_shape
    return apply_in_slices(net, x, max(1, CONV_SLICE_PIXELS // (h * w)))

  def check_images(self, x: jax.Array) -> None:
    """Raises ``ValueError`` unless ``x`` is ``[B, H, W, C]`` float for this config."""
    expected = self.config.image_shape
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
      raise ValueError(f"images: expected shape [B, {', '.join(map(str, expected))}], "
                       f"got {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"images: expected floats in [0, 1], got dtype {x.dtype}; "
                       "convert uint8 with vqzoo.images.to_float_images")

  def encode(self, x: jax.Array) -> jax.Array:
    """``[B, H, W, C]`` float -> ``z_e`` ``[B, D]`` or ``[B, H/4, W/4, D]``."""
    self.check_images(x)
    z_e = self._apply(self.encoder, x)
    chex.assert_shape(z_e, (x.shape[0], *self.config.latent_shape,
                            self.config.quantizer.embedding_dim))
    return z_e

  def decode(self, z_q: jax.Array) -> jax.Array:
    """Quantized latents -> ``[B, H, W, C]`` reconstructions."""
    x_hat = self._apply(self.decoder, z_q)
    if self.config.output_activation == "sigmoid":
      x_hat = jax.nn.sigmoid(x_hat)
    chex.assert_shape(x_hat, (z_q.shape[0], *self.config.image_shape))
    return x_hat

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """int codes ``[B]`` or ``[B, H/4, W/4]`` -> ``[B, H, W, C]`` images."""
    expected = self.config.latent_shape
    if codes.ndim != 1 + len(expected) or tuple(codes.shape[1:]) != expected:
      raise ValueError(f"codes: expected shape [B{''.join(', ' + str(s) for s in expected)}], "
                       f"got {tuple(codes.shape)}")
    return self.decode(self.quantizer.lookup(codes))

  def __call__(self, x: jax.Array, is_training: bool) -> VQVAEOutput:
    z_e = self.encode(x)
    q = self.quantizer(z_e, is_training)
    x_hat = self.decode(q.quantized)
    recon = jnp.mean(jnp.square(x - x_hat))
    return VQVAEOutput(
        reconstruction=x_hat, codes=q.codes, z_e=z_e, z_q=q.quantized,
        loss=recon + q.loss, reconstruction_loss=recon, codebook_loss=q.codebook_loss,
        commitment_loss=q.commitment_loss, perplexity=q.perplexity, code_counts=q.code_counts)


def build(config: ModelConfig, cross_replica_axis: str | None = None) -> hk.TransformedWithState:
  """``init(rng, x, is_training)`` / ``apply(params, state, rng, x, is_training)``.

  ``apply`` returns ``(VQVAEOutput, new_state)``. ``x`` is ``[B, H, W, C]``
  float32 in [0, 1]; ``rng`` may be ``None`` unless EMA dead-code re-seeding is on.
  """

  def forward(x, is_training):
    return VQVAE(config, cross_replica_axis)(x, is_training)

  return hk.transform_with_state(forward)


def build_codec(config: ModelConfig) -> hk.TransformedWithState:
  """Inference-only functions sharing :func:`build`'s params and state.

  ``apply`` of the returned transform takes ``(params, state, rng, method, x)``
  with ``method`` one of ``"encode"`` (images -> codes), ``"decode"`` (codes ->
  images) and ``"reconstruct"`` (images -> images).
  """

  def forward(method: str, x):
    model = VQVAE(config)
    if method == "encode":
      return model(x, is_training=False).codes
    if method == "decode":
      return model.decode_codes(x)
    if method == "reconstruct":
      return model(x, is_training=False).reconstruction
    raise ValueError(f"method: expected 'encode', 'decode' or 'reconstruct', got {method!r}")

  return hk.transform_with_state(forward)
