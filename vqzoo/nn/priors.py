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
    self._built: dict[str, hk.Module] | None = None

  @hk.name_like("__call__")
  def _part(self, name: str) -> hk.Module:
    """The submodule ``name``, made once and named as if made in ``__call__`` (``vertical``,
    ``horizontal``, ``vertical_to_horizontal``, ``cond_vertical``, ``cond_horizontal``,
    ``horizontal_out``), so that each method reads the same parameters."""
    if self._built is None:
      p, k, two_c = self.kernel_size // 2, self.kernel_size, 2 * self.hidden
      self._built = {
          "vertical": hk.Conv2D(two_c, (p + 1, k), padding="VALID", name="vertical"),
          "horizontal": hk.Conv2D(two_c, (1, p + 1), padding="VALID", name="horizontal"),
          "vertical_to_horizontal": hk.Conv2D(two_c, 1, name="vertical_to_horizontal"),
          "cond_vertical": hk.Linear(two_c, name="cond_vertical"),
          "cond_horizontal": hk.Linear(two_c, name="cond_horizontal"),
          "horizontal_out": hk.Conv2D(self.hidden, 1, name="horizontal_out"),
      }
    return self._built[name]

  def __call__(self, v: jax.Array, h: jax.Array, cond: jax.Array | None
               ) -> tuple[jax.Array | None, jax.Array]:
    """``v, h: [B, H, W, C]``, ``cond: [B, E]`` or None -> new ``(v, h)``, ``[B, H, W, C]``."""
    chex.assert_equal_shape([v, h])
    v_conv = self._vertical_conv(v)
    h_conv = self._horizontal_conv(h)
    to_horizontal = self._to_horizontal(v_conv)
    v_out = self._vertical_out(v_conv, cond)
    return v_out, self._horizontal_out(h, h_conv + to_horizontal, cond)

  def vertical(self, v: jax.Array, cond: jax.Array | None
               ) -> tuple[jax.Array | None, jax.Array]:
    """The vertical stack alone: ``v: [B, H, W, C]`` -> ``(v_out, to_horizontal)``.

    ``to_horizontal`` (``[B, H, W, 2C]``) is what the vertical stack adds to the horizontal
    stack's pre-activation; its row ``r`` depends on rows ``< r`` of ``v`` only.
    """
    v_conv = self._vertical_conv(v)
    return self._vertical_out(v_conv, cond), self._to_horizontal(v_conv)

  def horizontal(self, h: jax.Array, to_horizontal: jax.Array, cond: jax.Array | None
                 ) -> jax.Array:
    """The horizontal stack alone: ``h: [B, R, W, C]`` and the vertical stack's
    ``to_horizontal`` for the same rows (``[B, R, W, 2C]``) -> ``[B, R, W, C]``."""
    chex.assert_shape(to_horizontal, (*h.shape[:3], 2 * self.hidden))
    return self._horizontal_out(h, self._horizontal_conv(h) + to_horizontal, cond)

  def _vertical_conv(self, v: jax.Array) -> jax.Array:
    """Rows r-p..r, columns c-p..c+p of ``v`` -> ``[B, H, W, 2C]``."""
    chex.assert_axis_dimension(v, -1, self.hidden)
    p = self.kernel_size // 2
    v_in = jnp.pad(v, ((0, 0), (p, 0), (p, p), (0, 0)))
    return self._part("vertical")(v_in)

  def _horizontal_conv(self, h: jax.Array) -> jax.Array:
    """Columns c-p..c of the own row (c-p-1..c-1 of the codes in layer A) -> ``[.., 2C]``."""
    chex.assert_axis_dimension(h, -1, self.hidden)
    p = self.kernel_size // 2
    h_src = _shift_right(h) if self.first else h
    h_in = jnp.pad(h_src, ((0, 0), (0, 0), (p, 0), (0, 0)))
    return self._part("horizontal")(h_in)

  def _to_horizontal(self, v_conv: jax.Array) -> jax.Array:
    """The vertical stack reaches (r, c) only from rows < r."""
    return self._part("vertical_to_horizontal")(_shift_down(v_conv))

  def _vertical_out(self, v_conv: jax.Array, cond: jax.Array | None) -> jax.Array | None:
    if self.last:
      return None
    if cond is not None:
      v_conv += self._part("cond_vertical")(cond)[:, None, None, :]
    return _gate(v_conv)

  def _horizontal_out(self, h: jax.Array, h_conv: jax.Array, cond: jax.Array | None
                      ) -> jax.Array:
    if cond is not None:
      h_conv += self._part("cond_horizontal")(cond)[:, None, None, :]
    h_out = self._part("horizontal_out")(_gate(h_conv))
    return h_out if self.first else h_out + h


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
    self._built: dict[str, Any] | None = None

  def __call__(self, codes: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """Logits of every position given the codes before it.

    Args:
      codes: ``[B, H, W]`` integer codes in ``[0, K)``, or ``[B, H, W, K]`` float one-hot (or a
        continuous relaxation of it; the embedding is linear in it).
      labels: ``[B]`` integer labels in ``[0, num_classes)``, or ``None`` when unconditional.

    Returns:
      ``[B, H, W, K]`` float32 logits.
    """
    x, cond = self._inputs(codes, labels)
    v, h = x, x
    for layer in self._part("layers"):  # layer A, then the num_layers residual layers
      v, h = layer(v, h, cond)
    return self._head(h)

  def vertical_terms(self, codes: jax.Array, labels: jax.Array | None = None
                     ) -> list[jax.Array]:
    """What the vertical stack adds to each layer's horizontal stack, for sampling.

    Row ``r`` of every term depends on the codes in rows ``< r`` only, so once those rows are
    drawn, the terms for row ``r`` are fixed and :meth:`row_logits` draws the whole row from
    them without rerunning the vertical stack (or the rows above) at every position.

    Args:
      codes, labels: as :meth:`__call__`.

    Returns:
      ``num_layers + 1`` arrays ``[B, H, W, 2 * hidden]``, one per gated layer.
    """
    x, cond = self._inputs(codes, labels)
    v, terms = x, []
    for layer in self._part("layers"):
      v, term = layer.vertical(v, cond)
      terms.append(term)
    return terms

  def row_logits(self, codes: jax.Array, terms: list[jax.Array],
                 labels: jax.Array | None = None) -> jax.Array:
    """Logits of ``R`` rows from their codes and their rows of :meth:`vertical_terms`.

    Args:
      codes: ``[B, R, W]`` integer codes of the rows (or ``[B, R, W, K]`` float one-hot).
      terms: :meth:`vertical_terms` cut to the same rows, each ``[B, R, W, 2 * hidden]``.
      labels: as :meth:`__call__`.

    Returns:
      ``[B, R, W, K]`` float32 logits, equal to those rows of :meth:`__call__`'s logits.
    """
    x, cond = self._inputs(codes, labels)
    layers = self._part("layers")
    if len(terms) != len(layers):
      raise ValueError(f"terms: expected {len(layers)} arrays (one per gated layer), got "
                       f"{len(terms)}")
    h = x
    for layer, term in zip(layers, terms):
      h = layer.horizontal(h, term, cond)
    return self._head(h)

  @hk.name_like("__call__")
  def _part(self, name: str) -> Any:
    """``"layers"`` (layer A, then the residual layers), ``"label_embed"``, ``"head_hidden"``
    or ``"head_logits"``: made once and named as if made in ``__call__``, so that every method
    reads the same parameters."""
    if self._built is None:
      n, size = self.num_layers, (self.hidden, self.kernel_size)
      self._built = {
          "layers": [_GatedLayer(*size, first=True, last=n == 0, name="layer_a")]
                    + [_GatedLayer(*size, first=False, last=i == n - 1, name=f"layer_{i}")
                       for i in range(n)],
          "label_embed": hk.Embed(max(self.num_classes, 1), self.hidden, name="label_embed"),
          "head_hidden": hk.Conv2D(self.hidden, 1, name="head_hidden"),
          "head_logits": hk.Conv2D(self.num_embeddings, 1, name="head_logits"),
      }
    return self._built[name]

  def _inputs(self, codes: jax.Array, labels: jax.Array | None
              ) -> tuple[jax.Array, jax.Array | None]:
    """The embedded codes ``[B, H, W, hidden]`` and the label embedding ``[B, hidden]``."""
    one_hot = _check_codes(codes, 2, self.num_embeddings)
    _check_labels(labels, one_hot.shape[0], self.num_classes)
    table = hk.get_parameter("embeddings", (self.num_embeddings, self.hidden), jnp.float32,
                             init=hk.initializers.TruncatedNormal(1.0))
    # A one-hot times the table, exactly (no reduced-precision matmul on accelerators).
    x = jnp.einsum("bhwk,kc->bhwc", one_hot, table, precision=jax.lax.Precision.HIGHEST)
    cond = self._part("label_embed")(labels) if self.num_classes else None
    return x, cond

  def _head(self, h: jax.Array) -> jax.Array:
    """``[B, R, W, hidden] -> [B, R, W, K]``: ReLU, 1x1 conv, ReLU, 1x1 conv."""
    hidden = self._part("head_hidden")(jax.nn.relu(h))
    logits = self._part("head_logits")(jax.nn.relu(hidden))
    chex.assert_shape(logits, (*h.shape[:3], self.num_embeddings))
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


def _position_nats(logits: jax.Array, codes: jax.Array) -> jax.Array:
  """``[B, *latent, K]`` logits, ``[B, *latent]`` int codes -> ``[B, *latent]`` nats."""
  chex.assert_shape(logits, (*codes.shape, None))
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_p, codes[..., None].astype(jnp.int32), axis=-1)[..., 0]


def bits_from_logits(logits: jax.Array, codes: jax.Array) -> jax.Array:
  """``[B, *latent, K]`` logits, ``[B, *latent]`` int codes -> ``[B]`` ``-log2 p(codes)``.

  The sum over positions of the categorical cross-entropy, in bits.
  """
  nats = jnp.sum(_position_nats(logits, codes).reshape(codes.shape[0], -1), axis=1)
  return nats / math.log(2.0)


def position_bits(logits: jax.Array, codes: jax.Array) -> jax.Array:
  """``[B, *latent, K]`` logits, ``[B, *latent]`` int codes -> ``[B, *latent]`` float32
  ``-log2 p(code at each position | the codes before it)``; they sum to
  :func:`bits_from_logits`."""
  return _position_nats(logits, codes) / math.log(2.0)


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


def _draw_position(logits: jax.Array, key: jax.Array, greedy: jax.Array, scale: jax.Array
                   ) -> jax.Array:
  """``[N, K]`` logits -> ``[N]`` int32 codes: drawn at temperature ``scale``, or the argmax."""
  drawn = jax.random.categorical(key, logits / scale, axis=-1)
  return jnp.where(greedy, jnp.argmax(logits, axis=-1), drawn).astype(jnp.int32)


def _row_by_row(config: PriorConfig) -> Callable[..., jax.Array]:
  """``draw(params, rng, labels, greedy, scale, grid) -> grid`` for a PixelCNN.

  Row ``r`` of a gated PixelCNN sees the rows above it only through the vertical stack, whose
  contribution to row ``r`` is fixed once those rows are drawn. So each row runs the vertical
  stack once (:meth:`GatedPixelCNN.vertical_terms`), and each position of the row runs only the
  horizontal stack and the head on that one row (:meth:`GatedPixelCNN.row_logits`): the same
  logits as the whole network at that position, for about ``1 / H`` of its work. Position
  ``i = r * W + c`` draws with ``fold_in(rng, i)``.
  """
  height, width = config.latent_shape
  vertical = hk.transform(lambda codes, labels: make_prior(config).vertical_terms(codes, labels))
  row_logits = hk.transform(
      lambda codes, terms, labels: make_prior(config).row_logits(codes, terms, labels))

  def draw(params, rng, labels, greedy, scale, grid):
    def fill_row(r, grid):
      terms = [jax.lax.dynamic_slice_in_dim(term, r, 1, axis=1)
               for term in vertical.apply(params, None, grid, labels)]

      def fill_position(c, row):  # row: [N, 1, W]
        logits = row_logits.apply(params, None, row, terms, labels)[:, 0]  # [N, W, K]
        logits = jax.lax.dynamic_index_in_dim(logits, c, axis=1, keepdims=False)
        code = _draw_position(logits, jax.random.fold_in(rng, r * width + c), greedy, scale)
        return jax.lax.dynamic_update_index_in_dim(row, code[:, None], c, axis=2)

      row = jax.lax.fori_loop(0, width, fill_position,
                              jax.lax.dynamic_slice_in_dim(grid, r, 1, axis=1))
      return jax.lax.dynamic_update_slice_in_dim(grid, row, r, axis=1)

    return jax.lax.fori_loop(0, height, fill_row, grid)

  return draw


def sample_codes(config: PriorConfig, jit: Callable[..., Any] = jax.jit) -> Sampler:
  """A sampler ``sample(params, rng, num_samples, labels=None, temperature=1.0)``.

  It draws ``[num_samples, *latent_shape]`` int32 codes in ``[0, K)`` autoregressively in
  raster order inside one compiled loop, each position from its logits divided by
  ``temperature``; ``temperature == 0`` picks the argmax at each position (greedy; nothing is
  divided by zero). A PixelCNN's grid is drawn row by row: the vertical stack runs once per
  row and each position runs the horizontal stack on its row alone, which gives the logits of
  the whole network at that position for a fraction of its cost. The sampler is compiled
  (``num_samples`` static) by ``jit`` (e.g. :func:`vqzoo.cpu_tuning.jit`) and may itself be
  called inside ``jax.jit`` with ``num_samples`` static.

  Args of ``sample``:
    params: from :func:`build_prior` / :func:`prior_bits` ``init``.
    rng: a PRNG key; the same key gives the same codes.
    num_samples: N, a Python int >= 1.
    labels: ``[N]`` int32 labels for a class-conditional prior, else ``None``.
    temperature: a scalar >= 0.
  """
  row_by_row = _row_by_row(config) if config.kind == "pixelcnn" else None
  categorical = None if row_by_row is not None else build_prior(config).apply

  def draw(params, rng, labels, temperature, num_samples):
    temperature = jnp.asarray(temperature, jnp.float32)
    chex.assert_rank(temperature, 0)
    greedy = temperature <= 0
    scale = jnp.where(greedy, 1.0, temperature)
    grid = jnp.zeros((num_samples, *config.latent_shape), jnp.int32)
    if row_by_row is not None:
      return row_by_row(params, rng, labels, greedy, scale, grid)
    logits = categorical(params, None, grid, labels)  # one position
    return _draw_position(logits, jax.random.fold_in(rng, 0), greedy, scale)

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
