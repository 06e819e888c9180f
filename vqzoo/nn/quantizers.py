"""Vector quantizers: a plain codebook (params) and an EMA codebook (state).

Both follow van den Oord et al. (2017):

    embedding (codebook) term   ||sg[z_e] - e||^2
    commitment term        beta ||z_e - sg[e]||^2

and pass gradients to the encoder with the straight-through estimator
``z_q = z_e + sg[e - z_e]``. Nearest codes come from one matrix product,
``||z||^2 - 2 z.e + ||e||^2``, never an ``[N, K, D]`` broadcast. The minimum is taken by
:meth:`vqzoo.nn.hooks.CodeSearch.argmin_rows`, a hook a backend may replace.

Each quantizer owns all of its state, including dead-code re-seeding. The EMA codebook lives in
state and re-seeds itself. The plain codebook is a parameter, which a module cannot rewrite, so
in training it returns its re-seeds in :attr:`QuantizerOutput.reseeds` and the trainer applies
them after the optimizer step with :func:`apply_reseeds`, never naming a module or a key.

Options (all off by default, which keeps the 2017 quantizers bit for bit):

- ``cosine``: l2-normalised inputs and codes, nearest by cosine similarity (Yu et al. 2021,
  ViT-VQGAN, arXiv 2110.04627);
- ``lookup_dim``: search a low-dimensional space, ``D -> lookup_dim`` by a linear projection
  ``project_in`` and the code back by ``project_out`` (ViT-VQGAN's factorised codes); the
  codebook and the loss terms live in the lookup space;
- ``kmeans_init``: the first training batch sets the codebook by k-means (statistics over all
  replicas);
- ``gradient_estimator="rotation"``: the rotation trick (Fifty et al. 2024, arXiv 2410.06424),
  ``z_q = sg[lambda R] z_e`` with ``R`` the rotation taking ``z_e`` onto ``e`` and
  ``lambda = ||e|| / ||z_e||``, instead of the straight-through ``z_e + sg[e - z_e]``; both
  give the value ``e``, the rotation passes the angle between ``z_e`` and ``e`` to the encoder.

Codebooks are stored ``[K, D]`` (one row per code). Haiku's own
``hk.nets.VectorQuantizer*`` store the transpose; the tests check that both give
identical results on identical inputs.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import chex
import haiku as hk
import jax
import jax.numpy as jnp

from vqzoo.nn import hooks

Reseeds = Mapping[str, Mapping[str, jax.Array]]


class QuantizerOutput(NamedTuple):
  """What a quantizer returns for inputs ``z_e`` of shape ``[..., D]``.

  Attributes:
    quantized: ``[..., D]`` straight-through quantized vectors (value of ``e``,
      gradient of ``z_e``).
    codes: ``[...]`` int32 code indices.
    loss: scalar, the quantizer's share of the training loss.
    codebook_loss: scalar ``mean ||sg[z_e] - e||^2`` (reported, but not part of
      ``loss`` for the EMA quantizer, whose codebook follows moving averages).
    commitment_loss: scalar ``mean ||z_e - sg[e]||^2`` (unweighted by beta).
    perplexity: scalar ``exp(entropy)`` of the batch's code distribution.
    code_counts: ``[K]`` int32 number of vectors assigned to each code.
    reseeds: re-seeds of a parameter codebook for :func:`apply_reseeds` (empty unless a plain
      quantizer with a dead-code threshold ran in training).
  """

  quantized: jax.Array
  codes: jax.Array
  loss: jax.Array
  codebook_loss: jax.Array
  commitment_loss: jax.Array
  perplexity: jax.Array
  code_counts: jax.Array
  reseeds: dict = {}  # {module: {"dead": [K] bool, "fresh": [K, D]}}


def squared_distances(flat_z: jax.Array, codebook: jax.Array) -> jax.Array:
  """``[N, D] x [K, D] -> [N, K]`` squared Euclidean distances by one matmul."""
  chex.assert_rank([flat_z, codebook], 2)
  return (jnp.sum(jnp.square(flat_z), axis=1, keepdims=True)
          - flat_z @ (2.0 * codebook).T  # scale the [K, D] codebook, not the [N, D] inputs
          + jnp.sum(jnp.square(codebook), axis=1)[None, :])


def nearest_codes(flat_z: jax.Array, codebook: jax.Array) -> jax.Array:
  """``[N, D] x [K, D] -> [N]`` int32 index of the nearest code for each row (the first on ties)."""
  return jnp.argmin(squared_distances(flat_z, codebook), axis=1).astype(jnp.int32)


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _gather_rows(x, axis_name):
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def _perplexity(counts: jax.Array) -> jax.Array:
  probs = counts / jnp.maximum(jnp.sum(counts), 1.0)
  return jnp.exp(-jnp.sum(probs * jnp.log(probs + 1e-10)))


GRADIENT_ESTIMATORS = ("straight_through", "rotation")
_NORM_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """``x / ||x||`` along ``axis`` in float32 (0 stays 0)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis, keepdims=True), _NORM_EPS))


def rotation_trick(z: jax.Array, e: jax.Array) -> jax.Array:
  """``[..., D] x [..., D] -> [..., D]``: the value of ``e``, the gradient of ``sg[lambda R] z``.

  ``R = I - 2 w w^T + 2 v u^T`` with ``u = z / ||z||``, ``v = e / ||e||``,
  ``w = (u + v) / ||u + v||`` takes ``u`` onto ``v``; ``lambda = ||e|| / ||z||`` (Fifty et al.
  2024, arXiv 2410.06424, eq. 4). Computed without forming ``R``, in float32.
  """
  z32 = z.astype(jnp.float32)
  e = jax.lax.stop_gradient(e.astype(jnp.float32))
  u = jax.lax.stop_gradient(l2_normalize(z32))
  v = l2_normalize(e)
  w = jax.lax.stop_gradient(l2_normalize(u + v))
  dot = lambda a, b: jnp.sum(a * b, axis=-1, keepdims=True)
  scale = jax.lax.stop_gradient(jnp.sqrt(dot(e, e)) * jax.lax.rsqrt(
      jnp.maximum(dot(z32, z32), _NORM_EPS)))
  rotated = scale * (z32 - 2 * w * dot(w, z32) + 2 * v * dot(u, z32))
  return rotated + jax.lax.stop_gradient(e - rotated)  # the value exactly e


def kmeans(flat_z: jax.Array, num_clusters: int, iterations: int, rng: jax.Array | None,
           axis_name: str | None = None, cosine: bool = False) -> jax.Array:
  """Lloyd's k-means of the rows of ``flat_z`` ``[N, D]`` -> float32 centroids ``[K, D]``.

  Starts from ``K`` rows drawn (with ``rng``; evenly spaced rows without one) from the batch of
  all replicas; every iteration sums the assignments over ``axis_name``, so each replica gets
  the centroids of the global batch. A cluster that loses all its rows keeps its centroid.
  ``cosine``: spherical k-means (normalised rows and centroids).
  """
  x = jax.lax.stop_gradient(flat_z).astype(jnp.float32)
  if cosine:
    x = l2_normalize(x)
  all_x = _gather_rows(x, axis_name)
  if rng is None:
    picks = (jnp.arange(num_clusters) * all_x.shape[0]) // num_clusters
  else:
    picks = jax.random.randint(rng, (num_clusters,), 0, all_x.shape[0])
  centroids = all_x[picks]

  def step(centroids, _):
    codes = jnp.argmin(squared_distances(x, centroids), axis=1)
    one_hot = jax.nn.one_hot(codes, num_clusters, dtype=jnp.float32)
    sums = _psum(one_hot.T @ x, axis_name)
    counts = _psum(jnp.sum(one_hot, axis=0), axis_name)
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts[:, None], 1.0), centroids)
    return (l2_normalize(new) if cosine else new), None

  return jax.lax.scan(step, centroids, None, length=iterations)[0]


def reseed_dead_codes(codebook: jax.Array, usage: jax.Array, flat_z: jax.Array,
                      threshold: float, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Replaces codes used less than ``threshold`` by random rows of ``flat_z``.

  Args:
    codebook: ``[K, D]``.
    usage: ``[K]`` moving average of vectors per batch assigned to each code.
    flat_z: ``[N, D]`` encoder outputs to draw new codes from.
    threshold: usage below which a code is dead.
    rng: PRNG key (identical on every replica, so replicas stay in sync).

  Returns:
    ``([K, D] codebook, [K] bool mask of re-seeded codes)``.
  """
  dead = usage < threshold
  picks = jax.random.randint(rng, (codebook.shape[0],), 0, flat_z.shape[0])
  fresh = jax.lax.stop_gradient(flat_z[picks]).astype(codebook.dtype)
  return jnp.where(dead[:, None], fresh, codebook), dead


def apply_reseeds(params: hk.Params, reseeds: Reseeds) -> hk.Params:
  """Writes a plain quantizer's re-seeded codes (:attr:`QuantizerOutput.reseeds`) into ``params``.

  Call it after the optimizer step: re-seeded rows replace the updated codebook's rows.
  """
  if not reseeds:
    return params
  out = dict(params)
  for module, reseed in reseeds.items():
    codebook = params[module]["codebook"]
    out[module] = {**params[module],
                   "codebook": jnp.where(reseed["dead"][:, None], reseed["fresh"], codebook)}
  return out


class _Quantizer(hooks.CodeSearch):
  """Shared search, losses and statistics of both quantizers."""

  def __init__(self, *, embedding_dim: int, num_embeddings: int, commitment_cost: float,
               decay: float, dead_code_threshold: float, cross_replica_axis: str | None,
               name: str | None, dtype: Any, cosine: bool = False,
               lookup_dim: int | None = None, kmeans_init: bool = False,
               kmeans_iters: int = 10, gradient_estimator: str = "straight_through"):
    super().__init__(name=name)
    if lookup_dim is not None and (not isinstance(lookup_dim, int) or lookup_dim < 1):
      raise ValueError(f"lookup_dim: expected None or an integer >= 1, got {lookup_dim!r}")
    if not isinstance(kmeans_iters, int) or kmeans_iters < 0:
      raise ValueError(f"kmeans_iters: expected an integer >= 0, got {kmeans_iters!r}")
    if gradient_estimator not in GRADIENT_ESTIMATORS:
      raise ValueError(f"gradient_estimator: expected one of {GRADIENT_ESTIMATORS}, got "
                       f"{gradient_estimator!r}")
    if num_embeddings < 1 or embedding_dim < 1:
      raise ValueError(f"num_embeddings and embedding_dim: expected >= 1, got "
                       f"{num_embeddings} and {embedding_dim}")
    if not 0.0 <= decay <= 1.0:
      raise ValueError(f"decay: expected a number in [0, 1], got {decay}")
    if not 0 <= commitment_cost < float("inf"):
      raise ValueError(f"commitment_cost: expected a finite number >= 0, got {commitment_cost}")
    if not 0 <= dead_code_threshold < float("inf"):
      raise ValueError(f"dead_code_threshold: expected a finite number >= 0, got "
                       f"{dead_code_threshold}")
    self.num_embeddings = num_embeddings
    self.embedding_dim = embedding_dim
    self.commitment_cost = commitment_cost
    self.decay = decay
    self.dead_code_threshold = dead_code_threshold
    self.cross_replica_axis = cross_replica_axis
    self.dtype = jnp.dtype(dtype)
    self.cosine = bool(cosine)
    self.lookup_dim = lookup_dim
    self.code_dim = embedding_dim if lookup_dim is None else lookup_dim
    self.kmeans_init = bool(kmeans_init)
    self.kmeans_iters = kmeans_iters
    self.gradient_estimator = gradient_estimator
    if lookup_dim is not None:  # children q/~/project_in and q/~/project_out
      self._linear_in = hk.Linear(lookup_dim, name="project_in")
      self._linear_out = hk.Linear(embedding_dim, name="project_out")

  def _project_in(self, z_e: jax.Array) -> jax.Array:
    """``[..., D]`` -> the search space ``[..., code_dim]`` (``z_e`` itself by default)."""
    if self.lookup_dim is None and not self.cosine:
      return z_e
    x = z_e.astype(jnp.float32)
    if self.lookup_dim is not None:
      x = self._linear_in(x)
    return l2_normalize(x) if self.cosine else x

  def _project_out(self, x: jax.Array, dtype: Any) -> jax.Array:
    """Search space ``[..., code_dim]`` -> ``[..., D]`` of ``dtype``."""
    if self.lookup_dim is not None:
      x = self._linear_out(x.astype(jnp.float32))
    return x.astype(dtype)

  def _search_codebook(self, codebook: jax.Array) -> jax.Array:
    return l2_normalize(codebook).astype(codebook.dtype) if self.cosine else codebook

  def _kmeans_codebook(self, flat_x: jax.Array, codebook: jax.Array, is_training: bool
                       ) -> tuple[jax.Array, jax.Array | None]:
    """``(codebook to use, [K] bool "replaced by k-means" or None)``: on the first training
    batch (state ``kmeans_done`` still 0) the k-means centroids of the global batch."""
    done = hk.get_state("kmeans_done", (), jnp.int32, init=jnp.zeros)
    if not is_training or hk.running_init():
      return codebook, None
    rng = hk.maybe_next_rng_key()
    run = lambda: kmeans(flat_x, self.num_embeddings, self.kmeans_iters, rng,
                         self.cross_replica_axis, self.cosine).astype(codebook.dtype)
    centroids = jax.lax.cond(done > 0, lambda: codebook, run)
    hk.set_state("kmeans_done", jnp.ones((), jnp.int32))
    return centroids, jnp.broadcast_to(done == 0, (self.num_embeddings,))

  def _initial_codebook(self, shape, dtype):
    # Matches hk.nets.VectorQuantizer's VarianceScaling(uniform) on the [D, K] transpose.
    init = hk.initializers.VarianceScaling(distribution="uniform")
    return init(shape[::-1], dtype).T

  def codebook(self) -> jax.Array:
    """``[K, D]`` codebook of ``dtype`` (a param or state, per subclass)."""
    raise NotImplementedError

  def lookup(self, codes: jax.Array) -> jax.Array:
    """int codes ``[...]`` -> code vectors ``[..., D]`` (through ``project_out`` with a
    ``lookup_dim``)."""
    codebook = self.codebook()
    if self.lookup_dim is None and not self.cosine:
      return codebook[codes]
    return self._project_out(self._search_codebook(codebook)[codes], jnp.float32)

  def _check(self, z_e):
    if z_e.ndim < 1 or z_e.shape[-1] != self.embedding_dim:
      raise ValueError(f"quantizer input: expected [..., {self.embedding_dim}], "
                       f"got shape {z_e.shape}")

  def _assign(self, z_e, codebook):
    flat_z = jnp.reshape(z_e, (-1, z_e.shape[-1]))
    flat_codes = self.argmin_rows(squared_distances(flat_z.astype(codebook.dtype), codebook))
    counts = _psum(jnp.bincount(flat_codes, length=self.num_embeddings), self.cross_replica_axis)
    return flat_z, flat_codes, counts

  def _outputs(self, z_e, codebook, flat_codes, counts, include_codebook_loss, reseeds=None):
    e = jnp.reshape(codebook[flat_codes], z_e.shape).astype(z_e.dtype)
    codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z_e) - e))
    commitment_loss = jnp.mean(jnp.square(z_e - jax.lax.stop_gradient(e)))
    loss = self.commitment_cost * commitment_loss
    if include_codebook_loss:
      loss = loss + codebook_loss
    if self.gradient_estimator == "rotation":
      quantized = rotation_trick(z_e, e).astype(z_e.dtype)
    else:
      quantized = z_e + jax.lax.stop_gradient(e - z_e)
    return QuantizerOutput(
        quantized=quantized,
        codes=jnp.reshape(flat_codes, z_e.shape[:-1]),
        loss=loss,
        codebook_loss=codebook_loss,
        commitment_loss=commitment_loss,
        perplexity=_perplexity(counts.astype(jnp.float32)),
        code_counts=counts.astype(jnp.int32),
        reseeds=reseeds or {},
    )

  def _fresh_codes(self, flat_z, usage):
    """``([K, D] candidate rows from the (all-replica) batch, [K] bool dead mask)``."""
    all_z = _gather_rows(jax.lax.stop_gradient(flat_z), self.cross_replica_axis)
    codebook = self.codebook()
    return reseed_dead_codes(codebook, usage, all_z, self.dead_code_threshold, hk.next_rng_key())


class VectorQuantizer(_Quantizer):
  """Codebook as a parameter, learnt through the embedding loss.

  The positional order is ``hk.nets.VectorQuantizer``'s, and so are the keyword names, so code
  written for haiku's module switches by changing the import.

  Args:
    embedding_dim: D, the size of each code.
    num_embeddings: K, the number of codes.
    commitment_cost: beta, the weight of the commitment term.
    dtype: of the codebook.
    name: module name.
    cross_replica_axis: ``pmap``/``shard_map`` axis to sum statistics over.
    decay: decay of the code-usage moving average (re-seeding only).
    dead_code_threshold: in training, codes whose usage (vectors per batch) falls below this
      are re-seeded from encoder outputs (needs an rng); 0 disables it.
    **options: the codebook options of the module docstring, keyword-only: ``cosine``
      (bool), ``lookup_dim`` (int or None; the codebook is then ``[K, lookup_dim]``),
      ``kmeans_init`` (bool; adds state ``kmeans_done``), ``kmeans_iters`` (Lloyd iterations,
      default 10), ``gradient_estimator`` (``"straight_through"`` or ``"rotation"``).

  Params: ``codebook`` ``[K, D]`` (and ``project_in``/``project_out`` with a ``lookup_dim``).
  With ``kmeans_init`` the first training batch's centroids come back in
  :attr:`QuantizerOutput.reseeds` (a parameter cannot be rewritten): apply them with
  :func:`apply_reseeds` as the trainer does. State, only with a ``dead_code_threshold`` or
  ``kmeans_init`` (without either the module is stateless and runs under a plain
  ``hk.transform``): ``usage`` ``[K]``, the moving average of vectors per batch assigned to
  each code, and ``usage_updates``, how many batches it has seen (re-seeding); ``kmeans_done``.
  """

  def __init__(self, embedding_dim: int, num_embeddings: int, commitment_cost: float,
               dtype: Any = jnp.float32, name: str | None = None,
               cross_replica_axis: str | None = None, *, decay: float = 0.99,
               dead_code_threshold: float = 0.0, **options: Any):
    super().__init__(embedding_dim=embedding_dim, num_embeddings=num_embeddings,
                     commitment_cost=commitment_cost, decay=decay,
                     dead_code_threshold=dead_code_threshold,
                     cross_replica_axis=cross_replica_axis, name=name, dtype=dtype, **options)

  def codebook(self) -> jax.Array:
    return hk.get_parameter("codebook", (self.num_embeddings, self.code_dim),
                            self.dtype, init=self._initial_codebook)

  def __call__(self, z_e: jax.Array, is_training: bool) -> QuantizerOutput:
    """Quantizes ``z_e`` ``[..., D]``; see :class:`QuantizerOutput`.

    ``is_training`` with a threshold updates the usage statistics and returns re-seeds.
    """
    self._check(z_e)
    x = self._project_in(z_e)
    codebook = self.codebook()
    replaced = None
    if self.kmeans_init:
      codebook, replaced = self._kmeans_codebook(jnp.reshape(x, (-1, self.code_dim)), codebook,
                                                 is_training)
    search = self._search_codebook(codebook)
    flat_z, flat_codes, counts = self._assign(x, search)
    reseeds = None
    if self.dead_code_threshold > 0:
      reseeds = self._track_usage(flat_z, counts, is_training)
    reseeds = self._combine(reseeds, replaced, codebook)
    out = self._outputs(x, search, flat_codes, counts, include_codebook_loss=True,
                        reseeds=reseeds)
    if x is z_e:
      return out
    return out._replace(quantized=self._project_out(out.quantized, z_e.dtype))

  def _track_usage(self, flat_z: jax.Array, counts: jax.Array, is_training: bool
                   ) -> Reseeds | None:
    """Updates ``usage`` in training; returns the re-seeds of the codes it finds dead."""
    usage = hk.get_state("usage", (self.num_embeddings,), jnp.float32, init=jnp.zeros)
    updates = hk.get_state("usage_updates", (), jnp.int32, init=jnp.zeros)
    if not is_training:
      return None
    # The first batch sets the average outright (no bias towards zero).
    decay = jnp.where(updates == 0, 0.0, self.decay)
    usage = decay * usage + (1 - decay) * counts
    reseeds = None
    if not hk.running_init():
      fresh, dead = self._fresh_codes(flat_z, usage)
      # A re-seeded code gets the threshold as its usage: one unused batch later it goes again.
      usage = jnp.where(dead, self.dead_code_threshold, usage)
      reseeds = {self.module_name: {"dead": dead, "fresh": fresh}}
    hk.set_state("usage", usage)
    hk.set_state("usage_updates", updates + 1)
    return reseeds

  def replace_codes(self, dead: jax.Array, fresh: jax.Array) -> Reseeds:
    """Moves the ``dead`` codes (``[K]`` bool) onto ``fresh`` rows (``[K, D]``).

    Returns the re-seeds for :func:`apply_reseeds` (the codebook is a parameter).
    """
    self.codebook()
    return {self.module_name: {"dead": dead, "fresh": fresh}}

  def _combine(self, reseeds: Reseeds | None, replaced: jax.Array | None,
               centroids: jax.Array) -> Reseeds | None:
    """Adds k-means's replacement of the whole codebook to the dead-code re-seeds."""
    if replaced is None:
      return reseeds
    if not reseeds:
      return {self.module_name: {"dead": replaced, "fresh": centroids}}
    r = reseeds[self.module_name]
    return {self.module_name: {"dead": replaced | r["dead"],
                               "fresh": jnp.where(replaced[:, None], centroids, r["fresh"])}}


class VectorQuantizerEMA(_Quantizer):
  """Codebook in state, updated by zero-debiased exponential moving averages.

  The positional order is ``hk.nets.VectorQuantizerEMA``'s, and so are the keyword names.

  Args:
    embedding_dim: D, the size of each code.
    num_embeddings: K, the number of codes.
    commitment_cost: beta, the weight of the commitment term.
    decay: EMA decay of the codebook statistics.
    epsilon: Laplace smoothing of the cluster sizes.
    dtype: of the codebook and its statistics.
    cross_replica_axis: ``pmap``/``shard_map`` axis to sum statistics over.
    name: module name.
    dead_code_threshold: in training, codes whose cluster size (vectors per batch) falls below
      this are re-seeded from encoder outputs inside the EMA update (needs an rng); 0 disables it.
    **options: the codebook options of the module docstring, keyword-only: ``cosine``
      (bool), ``lookup_dim`` (int or None; the codebook is then ``[K, lookup_dim]``),
      ``kmeans_init`` (bool; adds state ``kmeans_done``), ``kmeans_iters`` (Lloyd iterations,
      default 10), ``gradient_estimator`` (``"straight_through"`` or ``"rotation"``).

  State (as ``hk.nets.VectorQuantizerEMA``, codebook transposed), all of ``dtype`` (float32 by
  default) whatever the input dtype: ``codebook`` ``[K, D]``; ``ema_cluster_size_hidden``
  ``[K]`` and ``ema_dw_hidden`` ``[K, D]``, the biased moving sums; ``ema_counter``, the number
  of updates, used to debias. Updated only when ``is_training``; under ``pmap`` with
  ``cross_replica_axis`` the batch statistics are summed across replicas so every replica holds
  the same codebook.
  """

  def __init__(self, embedding_dim: int, num_embeddings: int, commitment_cost: float,
               decay: float = 0.99, epsilon: float = 1e-5, dtype: Any = jnp.float32,
               cross_replica_axis: str | None = None, *, name: str | None = None,
               dead_code_threshold: float = 0.0, **options: Any):
    super().__init__(embedding_dim=embedding_dim, num_embeddings=num_embeddings,
                     commitment_cost=commitment_cost, decay=decay,
                     dead_code_threshold=dead_code_threshold,
                     cross_replica_axis=cross_replica_axis, name=name, dtype=dtype, **options)
    if not 0 < epsilon < float("inf"):
      raise ValueError(f"epsilon: expected a finite number > 0, got {epsilon}")
    self.epsilon = epsilon

  def codebook(self) -> jax.Array:
    return hk.get_state("codebook", (self.num_embeddings, self.code_dim),
                        self.dtype, init=self._initial_codebook)

  def __call__(self, z_e: jax.Array, is_training: bool) -> QuantizerOutput:
    """Quantizes ``z_e`` ``[..., D]``; see :class:`QuantizerOutput`.

    ``is_training`` updates the codebook (and re-seeds dead codes, which needs an rng).
    """
    self._check(z_e)
    k, d = self.num_embeddings, self.code_dim
    x = self._project_in(z_e)
    codebook = self.codebook()
    hidden_size = hk.get_state("ema_cluster_size_hidden", (k,), self.dtype, init=jnp.zeros)
    hidden_dw = hk.get_state("ema_dw_hidden", (k, d), self.dtype, init=jnp.zeros)
    counter = hk.get_state("ema_counter", (), jnp.int32, init=jnp.zeros)
    replaced = None
    if self.kmeans_init:
      codebook, replaced = self._kmeans_codebook(jnp.reshape(x, (-1, d)), codebook, is_training)
    search = self._search_codebook(codebook)

    flat_z, flat_codes, counts = self._assign(x, search)
    out = self._outputs(x, search, flat_codes, counts, include_codebook_loss=False)
    if x is not z_e:
      out = out._replace(quantized=self._project_out(out.quantized, z_e.dtype))
    if is_training:
      z32 = jax.lax.stop_gradient(flat_z).astype(self.dtype)
      one_hot = jax.nn.one_hot(flat_codes, k, dtype=self.dtype)
      dw = _psum(one_hot.T @ z32, self.cross_replica_axis)
      counter = counter + 1
      hidden_size = hidden_size * self.decay + counts.astype(self.dtype) * (1 - self.decay)
      hidden_dw = hidden_dw * self.decay + dw * (1 - self.decay)
      debias = 1.0 - jnp.power(jnp.asarray(self.decay, self.dtype), counter)
      cluster_size = hidden_size / debias
      if replaced is not None:
        # A centroid no vector of this batch chose stays as "one vector, the centroid".
        empty = replaced & (counts == 0)
        hidden_size = jnp.where(empty, debias, hidden_size)
        hidden_dw = jnp.where(empty[:, None], codebook * debias, hidden_dw)
        cluster_size = hidden_size / debias
      if self.dead_code_threshold > 0:
        fresh, dead = self._fresh_codes(z32, cluster_size)
        # A re-seeded code starts as the mean of one vector: the fresh row itself.
        hidden_size = jnp.where(dead, debias, hidden_size)
        hidden_dw = jnp.where(dead[:, None], fresh * debias, hidden_dw)
        cluster_size = hidden_size / debias
      n = jnp.sum(cluster_size)
      smoothed = (cluster_size + self.epsilon) / (n + k * self.epsilon) * n
      hk.set_state("codebook", (hidden_dw / debias) / smoothed[:, None])
      hk.set_state("ema_cluster_size_hidden", hidden_size)
      hk.set_state("ema_dw_hidden", hidden_dw)
      hk.set_state("ema_counter", counter)
    return out

  def replace_codes(self, dead: jax.Array, fresh: jax.Array) -> Reseeds:
    """Moves the ``dead`` codes (``[K]`` bool) onto ``fresh`` rows (``[K, D]``), in state.

    A moved code's moving averages say "one vector, this one" (debiased like the rest).
    Returns no parameter re-seeds (the codebook is state).
    """
    counter = hk.get_state("ema_counter", (), jnp.int32, init=jnp.zeros)
    debias = 1.0 - jnp.power(jnp.asarray(self.decay, self.dtype), counter)
    codebook = self.codebook()
    size = hk.get_state("ema_cluster_size_hidden", (self.num_embeddings,), self.dtype,
                        init=jnp.zeros)
    dw = hk.get_state("ema_dw_hidden", codebook.shape, self.dtype, init=jnp.zeros)
    hk.set_state("codebook", jnp.where(dead[:, None], fresh, codebook))
    hk.set_state("ema_cluster_size_hidden", jnp.where(dead, debias, size))
    hk.set_state("ema_dw_hidden", jnp.where(dead[:, None], fresh * debias, dw))
    return {}
