"""The VQ-VAE module, :func:`build` and the codec functions of :func:`build_codec`.

Loss (van den Oord et al. 2017, with MSE as the reconstruction term)::

    total = mean (x - D(z_q))^2  +  mean (sg[z_e] - e)^2  +  beta * mean (z_e - sg[e])^2

With the EMA codebook the middle (embedding) term is reported but not added:
the codebook follows moving averages instead.

Mixed precision (``compute_dtype="bfloat16"``): the encoder and decoder compute in bfloat16 on
float32 parameters, cast on read (``hk.custom_getter``; created in float32 by
``hk.custom_creator``, so the optimizer and checkpoints only ever see float32). The encoder's
output is cast to float32 before the quantizer, so the search, the codebook and commitment
terms, the code statistics and the EMA stay float32; the decoder's output is cast to float32
before the reconstruction loss.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Union

import chex
import haiku as hk
import jax
import jax.numpy as jnp

from vqzoo.configs import PARTS, ModelConfig, QuantizerConfig  # noqa: F401  (PARTS: re-exported)
from vqzoo.nn import fsq, lfq, nets, quantizers, residual

ModuleOrFactory = Union[hk.Module, Callable[[], hk.Module]]
#: The dtypes the encoder and decoder may compute in (the parameters stay float32).
COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype_of(dtype: Any) -> jnp.dtype:
  """``dtype`` (a name or a dtype) as a ``jnp.dtype``; ``ValueError`` naming ``compute_dtype``
  unless it is one of :data:`COMPUTE_DTYPES`."""
  try:
    name = jnp.dtype(dtype).name
  except (TypeError, ValueError):
    name = None
  if name not in COMPUTE_DTYPES or isinstance(dtype, bool):
    raise ValueError(f"compute_dtype: expected one of {COMPUTE_DTYPES}, got {dtype!r}")
  return jnp.dtype(name)


def _float32_creator(next_creator, shape, dtype, init, context):
  """Creates every floating-point parameter in float32, whatever the input dtype."""
  del context
  if jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32
  return next_creator(shape, dtype, init)


def _cast_getter(dtype):
  def getter(next_getter, value, context):
    del context
    value = next_getter(value)
    return value.astype(dtype) if jnp.issubdtype(value.dtype, jnp.floating) else value
  return getter


def _in_dtype(fn: Callable, x: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """``fn(x)`` computed in ``dtype``: ``x`` and every float parameter read are cast to it
  (parameters are created and kept in float32); the result is cast back to float32."""
  if dtype == jnp.float32:
    return fn(x)
  with hk.custom_creator(_float32_creator), hk.custom_getter(_cast_getter(dtype)):
    return fn(x.astype(dtype)).astype(jnp.float32)


class VQVAEOutput(NamedTuple):
  """Named output of :class:`VQVAE` for images ``[B, H, W, C]``.

  Attributes:
    reconstruction: ``[B, H, W, C]`` decoder output (unclipped).
    codes: ``[B, *latent]`` int32 code indices (``[B]`` for the MLP, ``[B, H/4, W/4]`` conv;
      ``[B, *latent, N]`` for a residual quantizer).
    z_e: encoder output ``[B, *latent, D]``.
    z_q: straight-through quantized ``z_e``, same shape.
    loss: scalar total loss.
    reconstruction_loss: scalar ``mean (x - x_hat)^2``.
    codebook_loss: scalar embedding term ``mean (sg[z_e] - e)^2``.
    commitment_loss: scalar ``mean (z_e - sg[e])^2`` (before beta).
    perplexity: scalar perplexity of the batch's codes.
    code_counts: ``[K]`` int32 vectors per code in the batch (``[N, K]`` residual).
    reseeds: a plain codebook's re-seeds, for :func:`vqzoo.nn.apply_reseeds` after the
      optimizer step (empty otherwise).
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
  reseeds: dict = {}  # {module: {"dead": [K] bool, "fresh": [K, D]}}


def _made(module: ModuleOrFactory, what: str) -> Any:
  made = module if isinstance(module, hk.Module) else module()
  if not callable(made):
    raise TypeError(f"{what}: expected an hk.Module or a function returning one, got "
                    f"{type(made).__name__}")
  return made


class VQVAE(hk.Module):
  """Encoder, quantizer and decoder.

  Args:
    encoder: ``[B, H, W, C]`` float -> ``z_e`` ``[B, *latent, D]``; an ``hk.Module``, or a
      zero-argument function that makes one (then it is built inside this module's name scope,
      as the zoo's are).
    decoder: ``z_q`` ``[B, *latent, D]`` -> ``[B, H, W, C]``; same forms.
    quantizer: any of :mod:`vqzoo.nn`'s quantizers (:class:`~vqzoo.nn.VectorQuantizer`,
      :class:`~vqzoo.nn.VectorQuantizerEMA`, :class:`~vqzoo.nn.FSQ`,
      :class:`~vqzoo.nn.ResidualVQ`, :class:`~vqzoo.nn.LFQ`), or a function that makes one: a
      module with ``embedding_dim``, ``__call__(z_e, is_training) -> QuantizerOutput``,
      ``lookup(codes)`` and ``codebook()``.
    output_activation: ``"none"`` or ``"sigmoid"`` on the decoder output.
    image_shape: ``(H, W, C)`` to check inputs against; ``None`` checks rank and dtype only.
    name: module name.
    compute_dtype: what the encoder and decoder compute in (:data:`COMPUTE_DTYPES`);
      ``"bfloat16"`` is mixed precision (module docstring). Parameters, the quantizer and the
      reconstruction loss stay float32 either way.
  """

  def __init__(self, encoder: ModuleOrFactory, decoder: ModuleOrFactory,
               quantizer: ModuleOrFactory, output_activation: str = "none",
               image_shape: tuple[int, int, int] | None = None, name: str | None = "vqvae",
               compute_dtype: Any = "float32"):
    super().__init__(name=name)
    self.compute_dtype = compute_dtype_of(compute_dtype)
    if output_activation not in ("none", "sigmoid"):
      raise ValueError(f"output_activation: expected 'none' or 'sigmoid', got "
                       f"{output_activation!r}")
    self.encoder = _made(encoder, "encoder")
    self.decoder = _made(decoder, "decoder")
    self.quantizer = _made(quantizer, "quantizer")
    self.output_activation = output_activation
    self.image_shape = None if image_shape is None else tuple(image_shape)

  @classmethod
  def from_config(cls, config: ModelConfig, cross_replica_axis: str | None = None,
                  name: str | None = "vqvae", compute_dtype: Any = "float32") -> "VQVAE":
    """The zoo's architectures: MLP or conv encoder/decoder and the quantizer of
    ``config.quantizer.kind`` (:func:`make_quantizer`), from a config."""
    if not isinstance(config, ModelConfig):
      raise TypeError(f"config: expected a vqzoo.ModelConfig, got {type(config).__name__}")
    q = config.quantizer
    quantizer = lambda: make_quantizer(q, cross_replica_axis)
    if config.arch == "mlp":
      encoder = lambda: nets.MLPEncoder(config.mlp.encoder_sizes, q.embedding_dim, name="encoder")
      decoder = lambda: nets.MLPDecoder(config.mlp.decoder_sizes, config.image_shape,
                                        name="decoder")
    else:
      c = config.conv
      encoder = lambda: nets.ConvEncoder(c.num_hiddens, c.num_residual_layers,
                                         c.num_residual_hiddens, q.embedding_dim, name="encoder")
      decoder = lambda: nets.ConvDecoder(c.num_hiddens, c.num_residual_layers,
                                         c.num_residual_hiddens, config.image_shape[-1],
                                         name="decoder")
    return cls(encoder, decoder, quantizer, config.output_activation, config.image_shape,
               name=name, compute_dtype=compute_dtype)

  def part_prefixes(self) -> dict[str, str]:
    """``{part: module path}`` for :data:`PARTS`: every parameter of a part lives under it."""
    return {"encoder": self.encoder.module_name, "decoder": self.decoder.module_name,
            "codebook": self.quantizer.module_name}

  def check_images(self, x: jax.Array) -> None:
    """Raises ``ValueError`` unless ``x`` is ``[B, H, W, C]`` float (of ``image_shape``)."""
    expected = self.image_shape
    if x.ndim != 4 or (expected is not None and tuple(x.shape[1:]) != expected):
      want = "B, H, W, C" if expected is None else "B, " + ", ".join(map(str, expected))
      raise ValueError(f"images: expected shape [{want}], got {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"images: expected floats in [0, 1], got dtype {x.dtype}; "
                       "convert uint8 with vqzoo.images.to_float_images")

  def encode(self, x: jax.Array) -> jax.Array:
    """``[B, H, W, C]`` float -> ``z_e`` ``[B, *latent, D]`` (the encoder computes in
    :attr:`compute_dtype`; ``z_e`` is float32 whenever that is not the input's dtype)."""
    self.check_images(x)
    z_e = _in_dtype(self.encoder, x, self.compute_dtype)  # float32 for the quantizer
    chex.assert_axis_dimension(z_e, 0, x.shape[0])
    chex.assert_axis_dimension(z_e, -1, self.quantizer.embedding_dim)
    return z_e

  def decode(self, z_q: jax.Array) -> jax.Array:
    """Quantized latents ``[B, *latent, D]`` -> ``[B, H, W, C]`` reconstructions (float32 when
    the decoder computes in bfloat16)."""
    x_hat = _in_dtype(self.decoder, z_q, self.compute_dtype)
    if self.output_activation == "sigmoid":
      x_hat = jax.nn.sigmoid(x_hat)
    chex.assert_rank(x_hat, 4)
    chex.assert_axis_dimension(x_hat, 0, z_q.shape[0])
    if self.image_shape is not None:
      chex.assert_shape(x_hat, (z_q.shape[0], *self.image_shape))
    return x_hat

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """int codes ``[B, *latent]`` (``[B, *latent, n]``, any depth ``n``, residual) ->
    ``[B, H, W, C]`` images."""
    return self.decode(self.quantizer.lookup(codes))

  def __call__(self, x: jax.Array, is_training: bool,
               update_codebook: bool | None = None) -> VQVAEOutput:
    """Encodes, quantizes and decodes ``x`` ``[B, H, W, C]`` float32 in [0, 1].

    Args:
      x: images.
      is_training: update the codebook statistics (and re-seed dead codes, which needs an rng).
      update_codebook: ``False`` keeps the codebook and its statistics as they are while the
        rest trains (a frozen codebook); defaults to ``is_training``.
    """
    update = is_training if update_codebook is None else update_codebook
    z_e = self.encode(x)
    q = self.quantizer(z_e, update)
    x_hat = self.decode(q.quantized)
    chex.assert_equal_shape([x, x_hat])
    recon = jnp.mean(jnp.square(x - x_hat))
    return VQVAEOutput(
        reconstruction=x_hat, codes=q.codes, z_e=z_e, z_q=q.quantized,
        loss=recon + q.loss, reconstruction_loss=recon, codebook_loss=q.codebook_loss,
        commitment_loss=q.commitment_loss, perplexity=q.perplexity, code_counts=q.code_counts,
        reseeds=q.reseeds)


def make_quantizer(config: QuantizerConfig, cross_replica_axis: str | None = None,
                   name: str | None = "quantizer") -> hk.Module:
  """The quantizer of ``config.kind`` (inside a Haiku transform)."""
  q = config
  if q.kind == "fsq":
    return fsq.FSQ(q.levels, cross_replica_axis=cross_replica_axis, name=name)
  if q.kind == "lfq":
    return lfq.LFQ(q.embedding_dim, commitment_cost=q.commitment_cost,
                   entropy_weight=q.entropy_weight, diversity_gamma=q.diversity_gamma,
                   temperature=q.entropy_temperature, cross_replica_axis=cross_replica_axis,
                   name=name)
  common = dict(num_embeddings=q.num_embeddings, embedding_dim=q.embedding_dim,
                commitment_cost=q.commitment_cost, decay=q.decay,
                dead_code_threshold=q.dead_code_threshold,
                cross_replica_axis=cross_replica_axis, name=name, cosine=q.cosine,
                lookup_dim=q.lookup_dim, kmeans_init=q.kmeans_init)
  if q.kind == "rvq":
    if q.ema:
      common["epsilon"] = q.epsilon
    return residual.ResidualVQ(num_stages=q.num_stages, ema=q.ema,
                               quantizer_dropout=q.quantizer_dropout,
                               gradient_estimator=q.gradient_estimator, **common)
  common["gradient_estimator"] = q.gradient_estimator
  if q.ema:
    return quantizers.VectorQuantizerEMA(epsilon=q.epsilon, **common)
  return quantizers.VectorQuantizer(**common)


def _check_spec(spec: Any) -> None:
  if not isinstance(spec, ModelConfig) and not callable(spec):
    raise TypeError(f"model: expected a vqzoo.ModelConfig or a function returning a VQVAE, "
                    f"got {type(spec).__name__}")


#: What :func:`build` and the trainer accept: a config, or a zero-argument function that makes a
#: :class:`VQVAE` (call it only inside a Haiku transform).
ModelSpec = Union[ModelConfig, Callable[[], VQVAE]]


def make_vqvae(spec: ModelSpec, cross_replica_axis: str | None = None,
               compute_dtype: Any = None) -> VQVAE:
  """A :class:`VQVAE` from a config or a factory (inside a Haiku transform).

  ``compute_dtype`` (``None``: the model's own, float32 for a config) sets what its encoder
  and decoder compute in.
  """
  _check_spec(spec)
  if isinstance(spec, ModelConfig):
    return VQVAE.from_config(spec, cross_replica_axis,
                             compute_dtype="float32" if compute_dtype is None else compute_dtype)
  model = spec()
  if not isinstance(model, VQVAE):
    raise TypeError(f"model factory: expected it to return a vqzoo.nn.VQVAE, got "
                    f"{type(model).__name__}")
  if compute_dtype is not None:
    model.compute_dtype = compute_dtype_of(compute_dtype)
  return model


def build(spec: ModelSpec, cross_replica_axis: str | None = None,
          wrap: Callable[[Callable], Callable] = lambda f: f,
          compute_dtype: Any = None) -> hk.TransformedWithState:
  """``init(rng, x, is_training)`` / ``apply(params, state, rng, x, is_training)``.

  ``apply`` returns ``(VQVAEOutput, new_state)``. ``x`` is ``[B, H, W, C]`` float32 in [0, 1].
  ``rng`` may be ``None`` except in training with dead-code re-seeding on (all zoo models):
  pass a key there. ``spec`` is a :class:`ModelConfig` or a zero-argument function making a
  :class:`VQVAE` (for a factory, ``cross_replica_axis`` is the factory's business).
  ``wrap`` wraps the forward function before it is transformed (e.g. with
  :func:`vqzoo.cpu_tuning.tuned`). ``compute_dtype`` is :func:`make_vqvae`'s (mixed precision
  with ``"bfloat16"``; the params ``init`` makes are float32 either way).
  """
  if cross_replica_axis is not None and not isinstance(spec, ModelConfig):
    raise ValueError("cross_replica_axis: pass it to the quantizer your factory makes")
  _check_spec(spec)
  if compute_dtype is not None:
    compute_dtype_of(compute_dtype)  # a bad value fails here, not inside the transform

  def forward(x, is_training, update_codebook=None):
    return make_vqvae(spec, cross_replica_axis, compute_dtype)(x, is_training, update_codebook)

  return hk.transform_with_state(wrap(forward))


class Codec(NamedTuple):
  """The inference functions of :func:`build_codec` (each ``fn(params, state, rng, ...)``)."""

  encode: object  # images [B, H, W, C] float -> int32 codes [B, *latent] ([B, *latent, N] rvq)
  decode: object  # int codes [B, *latent] ([B, *latent, n], any depth n, rvq) -> images
  reconstruct: object  # images -> images
  codebook: object  # () -> [K, D] float32 ([N, K, D] rvq; [K, lookup_dim] with a lookup space)


def build_codec(spec: ModelSpec, wrap: Callable[[Callable], Callable] = lambda f: f,
                compute_dtype: Any = None) -> hk.MultiTransformedWithState:
  """Inference functions sharing :func:`build`'s params and state.

  Returns ``hk.multi_transform_with_state`` whose ``apply`` is a :class:`Codec`:
  ``apply.encode(params, state, rng, x)`` -> ``(codes, state)`` and likewise ``decode``,
  ``reconstruct`` and ``codebook``. ``wrap`` wraps each function and ``compute_dtype`` is
  as for :func:`build`.
  """
  _check_spec(spec)
  if compute_dtype is not None:
    compute_dtype_of(compute_dtype)

  def functions():
    model = make_vqvae(spec, compute_dtype=compute_dtype)
    init = lambda x: model(x, is_training=True)
    return wrap(init), Codec(
        encode=wrap(lambda x: model(x, is_training=False).codes),
        decode=wrap(model.decode_codes),
        reconstruct=wrap(lambda x: model(x, is_training=False).reconstruction),
        codebook=wrap(lambda: model.quantizer.codebook()),
    )

  return hk.multi_transform_with_state(functions)


def part_prefixes(spec: ModelSpec) -> dict[str, str]:
  """``{part: module path}`` of a model's encoder, decoder and codebook (see :data:`PARTS`)."""
  return hk.transform(lambda: make_vqvae(spec).part_prefixes()).apply({}, None)


def part_of(module: str, prefixes: Mapping[str, str]) -> str:
  """Which of :data:`PARTS` the Haiku module path ``module`` belongs to.

  Raises:
    ValueError: it lies under none of ``prefixes`` (from :func:`part_prefixes`).
  """
  for part, prefix in prefixes.items():
    if module == prefix or module.startswith(prefix + "/"):
      return part
  raise ValueError(f"module {module!r} belongs to none of the model's parts "
                   f"{dict(prefixes)}; cannot tell whether to freeze it")


def replace_codes(spec: ModelSpec) -> hk.TransformedWithState:
  """``apply(params, state, None, dead[K], fresh[K, D]) -> (reseeds, state)``: moves codes.

  For re-seeding between training runs (fine-tuning): the EMA codebook moves in the returned
  state; a parameter codebook's moves come back as re-seeds for
  :func:`vqzoo.nn.apply_reseeds`.
  """
  return hk.transform_with_state(
      lambda dead, fresh: make_vqvae(spec).quantizer.replace_codes(dead, fresh))
