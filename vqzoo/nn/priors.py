"""Generative priors over a VQ-VAE's discrete codes: a gated PixelCNN and a categorical.

A trained VQ-VAE turns an image into codes; a prior ``p(codes | label)`` over them makes the
VQ-VAE a generative model (van den Oord et al. 2017): sample codes, then decode them.

* :class:`GatedPixelCNN` models a code grid ``[B, H, W]`` (conv models) autoregressively in
  raster order, as in van den Oord et al. (2016), "Conditional Image Generation with PixelCNN
  Decoders": gated layers ``tanh(a) * sigmoid(b)`` with a vertical and a horizontal stack and no
  blind spot, optionally conditioned on a class label.
* :class:`CategoricalPrior` models the single code of an MLP model, ``[B]``: learned logits
  ``[K]``, or ``[num_classes, K]`` when conditioned on a label.

Causality is built from shifts and crops, never masked kernels. With ``p = kernel_size // 2``:

* the vertical stack convolves with a ``(p + 1) x kernel_size`` kernel after padding ``p`` rows
  on top only, so its output at row ``r`` sees rows ``<= r`` of its input;
* it reaches the horizontal stack shifted down one row (pad one row on top, crop the last), so
  position ``(r, c)`` gets information from rows ``< r`` only, in all columns the kernel covers
  (including up-right: no blind spot);
* the horizontal stack convolves with a ``1 x (p + 1)`` kernel after padding ``p`` columns on
  the left only: columns ``<= c`` of its own row. In the first layer (mask type A) its input,
  the embedded codes, is first shifted right one column, so the centre itself is excluded.

The logits at ``(r, c)`` therefore depend on exactly the codes before ``(r, c)`` in raster
order (the tests check it with gradients). Both modules also accept a float ``[..., K]``
one-hot (or a relaxation of it) in place of integer codes, so gradients w.r.t. the input exist.

The pure functions, from a :class:`~vqzoo.configs.PriorConfig`:

* :func:`build_prior`: ``hk.Transformed`` whose ``apply(params, rng, codes, labels)`` gives the
  logits ``[B, *latent, K]``; its ``init`` makes the params every function here takes.
* :func:`prior_bits`: ``apply(params, rng, codes, labels)`` gives ``[B]`` bits,
  ``-log2 p(codes | labels)`` (the training loss is their mean).
* :func:`sample_codes`: ``sample(params, rng, num_samples, labels, temperature)`` draws
  ``[N, *latent]`` int32 codes in one compiled loop.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Union

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from vqzoo.configs import PriorConfig

Prior = Union["GatedPixelCNN", "CategoricalPrior"]
#: ``sample(params, rng, num_samples, labels=None, temperature=1.0) -> [N, *latent] int32``.
Sampler = Callable[..., jax.Array]


def _concrete(x: jax.Array) -> np.ndarray | None:
  """``x`` as a NumPy array, or ``None`` while it is traced (values unknown)."""
  if isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x)


def _check_labels(labels: jax.Array | None, batch: int, num_classes: int) -> None:
  """Refuses labels for an unconditional prior and missing or malformed ones otherwise."""
  if num_classes == 0:
    if labels is not None:
      raise ValueError("labels: this prior is unconditional (num_classes=0); pass labels=None")
    return
  if labels is None:
    raise ValueError(f"labels: this prior is conditioned on {num_classes} classes; pass [B] "
                     f"integer labels")
  chex.assert_shape(labels, (batch,))
  chex.assert_type(labels, int)
  values = _concrete(labels)
  if values is not None and values.size and (values.min() < 0 or values.max() >= num_classes):
    raise ValueError(f"labels: expected values in [0, {num_classes}), got "
                     f"[{values.min()}, {values.max()}]")


def _check_codes(codes: jax.Array, latent_rank: int, num_embeddings: int) -> jax.Array:
  """Integer ``[B, *latent]`` codes -> ``[B, *latent, K]`` float32 one-hot; float ``[B, *latent,
  K]`` (a one-hot or a relaxation of it) passes through."""
  if jnp.issubdtype(codes.dtype, jnp.floating):
    chex.assert_rank(codes, latent_rank + 2)
    chex.assert_axis_dimension(codes, -1, num_embeddings)
    return codes
  chex.assert_rank(codes, latent_rank + 1)
  chex.assert_type(codes, int)
  values = _concrete(codes)
  if values is not None and values.size and (values.min() < 0 or values.max() >= num_embeddings):
    raise ValueError(f"codes: expected values in [0, {num_embeddings}), got "
                     f"[{values.min()}, {values.max()}]")
  return jax.nn.one_hot(codes, num_embeddings, dtype=jnp.float32)


def _shift_down(x: jax.Array) -> jax.Array:
  """``[B, H, W, C]``: row ``r`` of the output is row ``r - 1`` of ``x`` (zeros in row 0)."""
  return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def _shift_right(x: jax.Array) -> jax.Array:
  """``[B, H, W, C]``: column ``c`` of the output is column ``c - 1`` of ``x`` (zeros in col 0)."""
  return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


def _gate(x: jax.Array) -> jax.Array:
  """``[..., 2C] -> [..., C]``: ``tanh(a) * sigmoid(b)`` of the two halves."""
  a, b = jnp.split(x, 2, axis=-1)
  return jnp.tanh(a) * jax.nn.sigmoid(b)


class _GatedLayer(hk.Module):
  """One gated layer with a vertical and a horizontal stack (``[B, H, W, C]`` each).

  Args:
    hidden: C.
    kernel_size: odd k; the vertical kernel is ``(k // 2 + 1) x k``, the horizontal
      ``1 x (k // 2 + 1)``.
    first: mask type A: the horizontal input is shifted right one column (the centre is
      excluded) and the horizontal stack has no residual connection.
    last: no later layer reads the vertical stack: only its path into the horizontal stack is
      computed (and the returned ``v`` is ``None``).
    name: module name.
  """

  def __init__(self, hidden: int, kernel_size: int, first: bool, last: bool,
               name: str | None = None):
    super().__init__(name=name)
    self.hidden = hidden
    self.kernel_size = kernel_size
    self.first = first
    self.last = last

  def __call__(self, v: jax.Array, h: jax.Array, cond: jax.Array | None
               ) -> tuple[jax.Array | None, jax.Array]:
    """``v, h: [B, H, W, C]``, ``cond: [B, E]`` or None -> new ``(v, h)``, ``[B, H, W, C]``."""
    chex.assert_equal_shape([v, h])
    chex.assert_axis_dimension(v, -1, self.hidden)
    p, k, two_c = self.kernel_size // 2, self.kernel_size, 2 * self.hidden

    # Vertical stack: rows r-p..r, columns c-p..c+p of its input.
    v_in = jnp.pad(v, ((0, 0), (p, 0), (p, p), (0, 0)))
    v_conv = hk.Conv2D(two_c, (p + 1, k), padding="VALID", name="vertical")(v_in)
    # Horizontal stack: columns c-p..c of its own row (c-p-1..c-1 of the codes in layer A).
    h_src = _shift_right(h) if self.first else h
    h_in = jnp.pad(h_src, ((0, 0), (0, 0), (p, 0), (0, 0)))
    h_conv = hk.Conv2D(two_c, (1, p + 1), padding="VALID", name="horizontal")(h_in)
    # The vertical stack reaches (r, c) only from rows < r.
    h_conv += hk.Conv2D(two_c, 1, name="vertical_to_horizontal")(_shift_down(v_conv))

    v_out = None
    if not self.last:
      if cond is not None:
        v_conv += hk.Linear(two_c, name="cond_vertical")(cond)[:, None, None, :]
      v_out = _gate(v_conv)
    if cond is not None:
      h_conv += hk.Linear(two_c, name="cond_horizontal")(cond)[:, None, None, :]
    h_out = hk.Conv2D(self.hidden, 1, name="horizontal_out")(_gate(h_conv))
    if not self.first:
      h_out += h
    return v_out, h_out


class GatedPixelCNN(hk.Module):
  """Autoregressive prior over a code grid: ``[B, H, W]`` codes -> ``[B, H, W, K]`` logits.

  Embedding -> a gated layer of mask type A -> ``num_layers`` gated residual layers (mask type
  B) -> ReLU, 1x1 conv, ReLU, 1x1 conv to K logits. The logits at ``(r, c)`` depend on the codes
  strictly before ``(r, c)`` in raster order (and the label), so they parametrise
  ``p(code[r, c] | code[< (r, c)], label)``.

  Args:
    num_embeddings: K, the number of codes.
    hidden: channels of both stacks (and of the code and label embeddings).
    num_layers: gated residual layers after the first layer.
    kernel_size: odd kernel size (>= 3).
    num_classes: labels to condition on; 0 for unconditional.
    name: module name.
  """

  def __init__(self, num_embeddings: int, hidden: int = 64, num_layers: int = 8,
               kernel_size: int = 3, num_classes: int = 0, name: str | None = None):
    super().__init__(name=name)
    if kernel_size < 3 or kernel_size % 2 == 0:
      raise ValueError(f"kernel_size: expected an odd integer >= 3, got {kernel_size!r}")
    self.num_embeddings = num_embeddings
    self.hidden = hidden
    self.num_layers = num_layers
    self.kernel_size = kernel_size
    self.num_classes = num_classes

  def __call__(self, codes: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Logits of every position given the codes before it.

    Args:
      codes: ``[B, H, W]`` integer codes in ``[0, K)``, or ``[B, H, W, K]`` float one-hot (or a
        continuous relaxation of it; the embedding is linear in it).
      labels: ``[B]`` integer labels in ``[0, num_classes)``, or ``None`` when unconditional.

    Returns:
      ``[B, H, W, K]`` float32 logits.
    """
    one_hot = _check_codes(codes, 2, self.num_embeddings)
    batch = one_hot.shape[0]
    _check_labels(labels, batch, self.num_classes)
    table = hk.get_parameter("embeddings", (self.num_embeddings, self.hidden), jnp.float32,
                             init=hk.initializers.TruncatedNormal(1.0))
    # A one-hot times the table, exactly (no reduced-precision matmul on accelerators).
    x = jnp.einsum("bhwk,kc->bhwc", one_hot, table, precision=jax.lax.Precision.HIGHEST)

    cond = None
    if self.num_classes:
      cond = hk.Embed(self.num_classes, self.hidden, name="label_embed")(labels)

    n = self.num_layers
    v, h = _GatedLayer(self.hidden, self.kernel_size, first=True, last=n == 0,
                       name="layer_a")(x, x, cond)
    for i in range(n):
      v, h = _GatedLayer(self.hidden, self.kernel_size, first=False, last=i == n - 1,
                         name=f"layer_{i}")(v, h, cond)

    out = hk.Conv2D(self.hidden, 1, name="head_hidden")(jax.nn.relu(h))
    logits = hk.Conv2D(self.num_embeddings, 1, name="head_logits")(jax.nn.relu(out))
    chex.assert_shape(logits, (*one_hot.shape[:3], self.num_embeddings))
    return logits


class CategoricalPrior(hk.Module):
  """The prior of a model with one code per image: ``[B]`` codes -> ``[B, K]`` logits.

  The logits are a parameter, ``[K]`` or ``[num_classes, K]`` (one row per label), initialised
  to zeros (uniform). They do not depend on the codes, which only give the batch size.

  Args:
    num_embeddings: K, the number of codes.
    num_classes: labels to condition on; 0 for unconditional.
    name: module name.
  """

  def __init__(self, num_embeddings: int, num_classes: int = 0, name: str | None = None):
    super().__init__(name=name)
    self.num_embeddings = num_embeddings
    self.num_classes = num_classes

  def __call__(self, codes: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Logits for each image.

    Args:
      codes: ``[B]`` integer codes, or ``[B, K]`` float one-hot (only B is used).
      labels: ``[B]`` integer labels in ``[0, num_classes)``, or ``None`` when unconditional.

    Returns:
      ``[B, K]`` float32 logits.
    """
    batch = _check_codes(codes, 0, self.num_embeddings).shape[0]
    _check_labels(labels, batch, self.num_classes)
    shape = ((self.num_classes,) if self.num_classes else ()) + (self.num_embeddings,)
    logits = hk.get_parameter("logits", shape, jnp.float32, init=jnp.zeros)
    if self.num_classes:
      return logits[labels]
    return jnp.broadcast_to(logits, (batch, self.num_embeddings))


def make_prior(config: PriorConfig, name: str | None = None) -> Prior:
  """The prior module ``config`` describes (call inside a Haiku transform)."""
  if not isinstance(config, PriorConfig):
    raise TypeError(f"config: expected a vqzoo.PriorConfig, got {type(config).__name__}")
  if config.kind == "pixelcnn":
    return GatedPixelCNN(config.num_embeddings, hidden=config.hidden,
                         num_layers=config.num_layers, kernel_size=config.kernel_size,
                         num_classes=config.num_classes, name=name)
  return CategoricalPrior(config.num_embeddings, num_classes=config.num_classes, name=name)


def _check_grid(codes: jax.Array, config: PriorConfig) -> None:
  if not jnp.issubdtype(codes.dtype, jnp.floating):
    chex.assert_shape(codes, (None, *config.latent_shape))


def build_prior(config: PriorConfig) -> hk.Transformed:
  """Logits: ``init(rng, codes, labels=None)`` / ``apply(params, rng, codes, labels=None)``.

  ``codes`` are ``[B, *latent_shape]`` int32 (or a float ``[B, *latent_shape, K]`` one-hot);
  ``labels`` ``[B]`` int32 or ``None``. ``apply`` returns ``[B, *latent_shape, K]`` float32
  logits. The params are those of :func:`prior_bits` and :func:`sample_codes`.
  """

  def forward(codes, labels=None):
    _check_grid(codes, config)
    return make_prior(config)(codes, labels)

  return hk.transform(forward)


def bits_from_logits(logits: jax.Array, codes: jax.Array) -> jax.Array:
  """``[B, *latent, K]`` logits, ``[B, *latent]`` int codes -> ``[B]`` ``-log2 p(codes)``.

  The sum over positions of the categorical cross-entropy, in bits.
  """
  chex.assert_shape(logits, (*codes.shape, None))
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_p, codes[..., None].astype(jnp.int32), axis=-1)[..., 0]
  nats = -jnp.sum(picked.reshape(codes.shape[0], -1), axis=1)
  return nats / math.log(2.0)


def prior_bits(config: PriorConfig) -> hk.Transformed:
  """Bits: ``init(rng, codes, labels=None)`` / ``apply(params, rng, codes, labels=None)``.

  ``codes`` are ``[B, *latent_shape]`` int32 in ``[0, K)``, ``labels`` ``[B]`` int32 or
  ``None``. ``apply`` returns ``[B]`` float32 ``-log2 p(codes | labels)``: per image, the sum
  over positions of the cross-entropy in bits. ``rng`` may be ``None`` (nothing is random).
  """

  def forward(codes, labels=None):
    chex.assert_type(codes, int)
    _check_grid(codes, config)
    logits = make_prior(config)(codes, labels)
    bits = bits_from_logits(logits, codes)
    chex.assert_shape(bits, (codes.shape[0],))
    return bits

  return hk.transform(forward)


def sample_codes(config: PriorConfig, jit: Callable[..., Any] = jax.jit) -> Sampler:
  """A sampler ``sample(params, rng, num_samples, labels=None, temperature=1.0)``.

  It draws ``[num_samples, *latent_shape]`` int32 codes in ``[0, K)`` autoregressively in
  raster order: one ``jax.lax.fori_loop`` over the ``prod(latent_shape)`` positions, each step
  running the prior on the whole grid and drawing the next position from its logits divided by
  ``temperature``. ``temperature == 0`` picks the argmax at each position (greedy; nothing is
  divided by zero). The sampler is compiled (``num_samples`` static) by ``jit`` (e.g.
  :func:`vqzoo.cpu_tuning.jit`) and may itself be called inside ``jax.jit`` with
  ``num_samples`` static.

  Args of ``sample``:
    params: from :func:`build_prior` / :func:`prior_bits` ``init``.
    rng: a PRNG key; the same key gives the same codes.
    num_samples: N, a Python int >= 1.
    labels: ``[N]`` int32 labels for a class-conditional prior, else ``None``.
    temperature: a scalar >= 0.
  """
  apply = build_prior(config).apply
  positions = math.prod(config.latent_shape)  # 1 for the categorical prior
  num_codes = config.num_embeddings

  def draw(params, rng, labels, temperature, num_samples):
    temperature = jnp.asarray(temperature, jnp.float32)
    chex.assert_rank(temperature, 0)
    greedy = temperature <= 0
    scale = jnp.where(greedy, 1.0, temperature)

    def step(i, flat):
      grid = flat.reshape(num_samples, *config.latent_shape)
      logits = apply(params, None, grid, labels).reshape(num_samples, positions, num_codes)
      logits = jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False)
      drawn = jax.random.categorical(jax.random.fold_in(rng, i), logits / scale, axis=-1)
      code = jnp.where(greedy, jnp.argmax(logits, axis=-1), drawn).astype(jnp.int32)
      return jax.lax.dynamic_update_index_in_dim(flat, code, i, axis=1)

    flat = jnp.zeros((num_samples, positions), jnp.int32)
    flat = jax.lax.fori_loop(0, positions, step, flat)
    return flat.reshape(num_samples, *config.latent_shape)

  compiled = jit(draw, static_argnames="num_samples")

  def sample(params, rng, num_samples: int, labels: jax.Array | None = None,
             temperature: float | jax.Array = 1.0) -> jax.Array:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
        or num_samples < 1:
      raise ValueError(f"num_samples: expected a Python int >= 1, got {num_samples!r}")
    labels = None if labels is None else jnp.asarray(labels)
    _check_labels(labels, int(num_samples), config.num_classes)
    value = _concrete(temperature)
    if value is not None and (value.ndim != 0 or not np.isfinite(value) or value < 0):
      raise ValueError(f"temperature: expected a finite scalar >= 0, got {temperature!r}")
    codes = compiled(params, rng, labels, temperature, num_samples=int(num_samples))
    chex.assert_shape(codes, (num_samples, *config.latent_shape))
    return codes

  return sample
