"""Frozen, validated configuration dataclasses.

Every config round-trips through plain dicts (``to_dict`` / ``from_dict``) so it
can live in ``config.json`` next to the weights. ``from_dict`` refuses unknown
keys, and every constructor validates its fields, raising ``ValueError`` that
names the offending field and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

ARCHITECTURES = ("mlp", "conv")
OUTPUT_ACTIVATIONS = ("none", "sigmoid")
SCHEDULES = ("cosine", "constant")
#: What the encoder and decoder may compute in (:attr:`TrainConfig.compute_dtype`).
COMPUTE_DTYPES = ("float32", "bfloat16")
#: The parts of a VQ-VAE that fine-tuning can freeze (see :func:`vqzoo.nn.part_prefixes`).
PARTS = ("encoder", "decoder", "codebook")


def _require(condition: bool, field: str, expected: str, got: Any) -> None:
  if not condition:
    raise ValueError(f"{field}: expected {expected}, got {got!r}")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


MAX_CODES = 1 << 20  # K: a [K, D] codebook of at most 2^20 rows
MAX_WIDTH = 1 << 16  # D, hidden sizes and channels
MAX_IMAGE_SIDE = 4096


def _int_tuple(value: Any, field: str, expected: str) -> tuple[int, ...]:
  """``value`` as a tuple, or ``ValueError`` naming ``field`` when it is not a sequence."""
  if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
    raise ValueError(f"{field}: expected {expected}, got {value!r}")
  return tuple(value)


def _strict_kwargs(cls, data: Mapping[str, Any]) -> dict[str, Any]:
  if not isinstance(data, Mapping):
    raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - known)
  if unknown:
    raise ValueError(
        f"{cls.__name__}: unknown keys {unknown}; expected a subset of {sorted(known)}")
  return dict(data)


def _plain(value: Any) -> Any:
  """``dataclasses.asdict`` output with tuples as lists (what JSON reads back)."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return [_plain(v) for v in value]
  return value


class _Config:
  """Strict dict round-trips for the frozen config dataclasses below.

  ``_NESTED`` names the fields that hold another config (``None`` allowed).
  """

  _NESTED: dict[str, type] = {}

  def to_dict(self) -> dict[str, Any]:
    """Plain JSON-able data (tuples as lists, nested configs as dicts)."""
    return {f.name: (value.to_dict() if isinstance(value, _Config) else _plain(value))
            for f in dataclasses.fields(self) for value in (getattr(self, f.name),)}

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]):
    """The config from :meth:`to_dict`'s output; ``ValueError`` names unknown keys."""
    kwargs = _strict_kwargs(cls, data)
    for name, nested in cls._NESTED.items():
      if kwargs.get(name) is not None:
        kwargs[name] = nested.from_dict(kwargs[name])
    return cls(**kwargs)


#: Quantizer kinds: a codebook (van den Oord et al. 2017), finite scalar quantization
#: (Mentzer et al. 2023), residual VQ (Zeghidour et al. 2021) and lookup-free quantization
#: (Yu et al. 2023).
QUANTIZER_KINDS = ("vq", "fsq", "rvq", "lfq")
GRADIENT_ESTIMATORS = ("straight_through", "rotation")
_DEFAULT_K, _DEFAULT_D = 512, 64
# QuantizerConfig fields added with the quantizer family; the older ones always appear.
_LATER_FIELDS = ("kind", "levels", "num_stages", "quantizer_dropout", "entropy_weight",
                 "diversity_gamma", "entropy_temperature", "cosine", "lookup_dim", "kmeans_init",
                 "gradient_estimator")


@dataclasses.dataclass(frozen=True)
class QuantizerConfig(_Config):
  """The quantizer.

  Attributes:
    num_embeddings: K, the number of codes (per stage for ``"rvq"``). For ``"fsq"`` it is
      ``prod(levels)`` and for ``"lfq"`` a power of two ``2^d``; left at its default it is
      derived, otherwise it must agree.
    embedding_dim: D, the size of each code vector (what the encoder outputs). For ``"fsq"``
      it is ``len(levels)`` and for ``"lfq"`` ``log2(num_embeddings)``; derived or checked
      like ``num_embeddings``.
    commitment_cost: beta, the weight of the commitment term (``"vq"``, ``"rvq"``, ``"lfq"``).
    ema: update the codebook by exponential moving averages (state) instead of
      the embedding loss (params); ``"vq"`` and ``"rvq"`` (every stage) only.
    decay: EMA decay; also the decay of the code-usage statistics.
    epsilon: Laplace smoothing of EMA cluster sizes.
    dead_code_threshold: codes whose EMA usage (vectors per batch) falls below
      this are re-seeded from encoder outputs while training; 0 disables it.
    kind: one of :data:`QUANTIZER_KINDS`.
    levels: values per dimension for ``"fsq"``, e.g. ``(8, 5, 5, 5)``.
    num_stages: N, the residual stages of ``"rvq"`` (1 for the other kinds).
    quantizer_dropout: ``"rvq"``: share of training batches that stop at a random depth
      ``1..N`` so that one model decodes at any depth; 0 disables it.
    entropy_weight: ``"lfq"``: weight of the entropy penalty.
    diversity_gamma: ``"lfq"``: weight of the batch-average entropy inside the penalty.
    entropy_temperature: ``"lfq"``: temperature of the soft code assignment the entropies
      are computed from.
    cosine: ``"vq"``: l2-normalised codes and inputs (cosine similarity search; not for
      ``"rvq"``, whose unit-norm stage outputs would not shrink the residual).
    lookup_dim: ``"vq"``/``"rvq"``: search a low-dimensional space, projecting inputs
      ``D -> lookup_dim`` and codes back; ``None`` searches in ``D``.
    kmeans_init: ``"vq"``/``"rvq"``: set the codebook by k-means on the first training batch.
    gradient_estimator: ``"vq"``/``"rvq"``: one of :data:`GRADIENT_ESTIMATORS` (for ``"rvq"``
      applied once, to the sum of the stages).
  """

  num_embeddings: int = _DEFAULT_K
  embedding_dim: int = _DEFAULT_D
  commitment_cost: float = 0.25
  ema: bool = False
  decay: float = 0.99
  epsilon: float = 1e-5
  dead_code_threshold: float = 0.0
  kind: str = "vq"
  levels: tuple[int, ...] | None = None
  num_stages: int = 1
  quantizer_dropout: float = 0.0
  entropy_weight: float = 0.1
  diversity_gamma: float = 1.0
  entropy_temperature: float = 0.01
  cosine: bool = False
  lookup_dim: int | None = None
  kmeans_init: bool = False
  gradient_estimator: str = "straight_through"

  def __post_init__(self):
    _require(self.kind in QUANTIZER_KINDS, "quantizer.kind", f"one of {QUANTIZER_KINDS}",
             self.kind)
    if self.kind == "fsq":
      _require(self.levels is not None, "quantizer.levels", "levels for kind='fsq'", None)
      levels = _int_tuple(self.levels, "quantizer.levels", "a sequence of integers >= 3")
      _require(len(levels) >= 1 and all(_is_int(l) and l >= 3 for l in levels),
               "quantizer.levels", "a non-empty sequence of integers >= 3", levels)
      object.__setattr__(self, "levels", levels)
      self._derive(math.prod(levels), len(levels), f"prod(levels) = {math.prod(levels)}",
                   f"len(levels) = {len(levels)}")
    else:
      _require(self.levels is None, "quantizer.levels", "None unless kind='fsq'", self.levels)
    if self.kind == "lfq":
      k = self.num_embeddings
      _require(_is_int(k) and 2 <= k <= MAX_CODES and k & (k - 1) == 0,
               "quantizer.num_embeddings", f"a power of two in [2, {MAX_CODES}] for kind='lfq'",
               k)
      d = k.bit_length() - 1
      if self.embedding_dim == _DEFAULT_D and d != _DEFAULT_D:
        object.__setattr__(self, "embedding_dim", d)
      _require(self.embedding_dim == d, "quantizer.embedding_dim",
               f"log2(num_embeddings) = {d} for kind='lfq'", self.embedding_dim)
    _require(_is_int(self.num_embeddings) and 1 <= self.num_embeddings <= MAX_CODES,
             "quantizer.num_embeddings", f"an integer in [1, {MAX_CODES}]", self.num_embeddings)
    _require(_is_int(self.embedding_dim) and 1 <= self.embedding_dim <= MAX_WIDTH,
             "quantizer.embedding_dim", f"an integer in [1, {MAX_WIDTH}]", self.embedding_dim)
    _require(_is_number(self.commitment_cost) and 0 <= self.commitment_cost < math.inf,
             "quantizer.commitment_cost", "a finite number >= 0", self.commitment_cost)
    _require(isinstance(self.ema, bool), "quantizer.ema", "a bool", self.ema)
    _require(_is_number(self.decay) and 0.0 <= self.decay <= 1.0,
             "quantizer.decay", "a number in [0, 1]", self.decay)
    _require(_is_number(self.epsilon) and 0 < self.epsilon < math.inf,
             "quantizer.epsilon", "a finite number > 0", self.epsilon)
    _require(_is_number(self.dead_code_threshold) and 0 <= self.dead_code_threshold < math.inf,
             "quantizer.dead_code_threshold", "a finite number >= 0", self.dead_code_threshold)
    _require(_is_int(self.num_stages) and 1 <= self.num_stages <= 64, "quantizer.num_stages",
             "an integer in [1, 64]", self.num_stages)
    _require(_is_number(self.quantizer_dropout) and 0 <= self.quantizer_dropout <= 1,
             "quantizer.quantizer_dropout", "a number in [0, 1]", self.quantizer_dropout)
    for name in ("entropy_weight", "diversity_gamma"):
      value = getattr(self, name)
      _require(_is_number(value) and 0 <= value < math.inf, f"quantizer.{name}",
               "a finite number >= 0", value)
    _require(_is_number(self.entropy_temperature) and 0 < self.entropy_temperature < math.inf,
             "quantizer.entropy_temperature", "a finite number > 0", self.entropy_temperature)
    for name in ("cosine", "kmeans_init"):
      _require(isinstance(getattr(self, name), bool), f"quantizer.{name}", "a bool",
               getattr(self, name))
    _require(self.lookup_dim is None or (_is_int(self.lookup_dim)
                                         and 1 <= self.lookup_dim <= MAX_WIDTH),
             "quantizer.lookup_dim", f"None or an integer in [1, {MAX_WIDTH}]", self.lookup_dim)
    _require(self.gradient_estimator in GRADIENT_ESTIMATORS, "quantizer.gradient_estimator",
             f"one of {GRADIENT_ESTIMATORS}", self.gradient_estimator)
    # Options of one kind are refused on the others (a silent no-op would mislead).
    defaults = {f.name: f.default for f in dataclasses.fields(self)}
    owners = {"num_stages": ("rvq",), "quantizer_dropout": ("rvq",),
              "entropy_weight": ("lfq",), "diversity_gamma": ("lfq",),
              "entropy_temperature": ("lfq",), "ema": ("vq", "rvq"),
              "dead_code_threshold": ("vq", "rvq"), "cosine": ("vq",),
              "lookup_dim": ("vq", "rvq"), "kmeans_init": ("vq", "rvq"),
              "gradient_estimator": ("vq", "rvq")}
    for name, kinds in owners.items():
      _require(self.kind in kinds or getattr(self, name) == defaults[name], f"quantizer.{name}",
               f"its default {defaults[name]!r} unless kind is one of {kinds}",
               getattr(self, name))

  def _derive(self, k: int, d: int, k_rule: str, d_rule: str) -> None:
    """Sets K and D from the kind's own fields when left at their defaults, else checks them."""
    for name, value, default, rule in (("num_embeddings", k, _DEFAULT_K, k_rule),
                                       ("embedding_dim", d, _DEFAULT_D, d_rule)):
      if getattr(self, name) == default:
        object.__setattr__(self, name, value)
      _require(getattr(self, name) == value, f"quantizer.{name}", f"{rule} for kind='{self.kind}'",
               getattr(self, name))

  def to_dict(self) -> dict[str, Any]:
    """As :meth:`_Config.to_dict`, without the fields of :data:`_LATER_FIELDS` left at their
    defaults: a codebook quantizer's ``config.json`` keeps the bytes it had before them."""
    out = super().to_dict()
    for f in dataclasses.fields(self):
      if f.name in _LATER_FIELDS and out[f.name] == _plain(f.default):
        del out[f.name]
    return out

  @property
  def code_shape(self) -> tuple[int, ...]:
    """Trailing code axes of one latent position: ``(N,)`` for ``"rvq"``, ``()`` otherwise."""
    return (self.num_stages,) if self.kind == "rvq" else ()


@dataclasses.dataclass(frozen=True)
class MLPConfig(_Config):
  """MLP encoder/decoder hidden sizes (default: 784 -> 128 -> 64 -> D; D -> 128 -> 784)."""

  encoder_sizes: tuple[int, ...] = (128, 64)
  decoder_sizes: tuple[int, ...] = (128,)

  def __post_init__(self):
    for name in ("encoder_sizes", "decoder_sizes"):
      expected = f"a sequence of integers in [1, {MAX_WIDTH}]"
      sizes = _int_tuple(getattr(self, name), f"mlp.{name}", expected)
      object.__setattr__(self, name, sizes)
      _require(all(_is_int(s) and 1 <= s <= MAX_WIDTH for s in sizes), f"mlp.{name}", expected,
               sizes)


@dataclasses.dataclass(frozen=True)
class ConvConfig(_Config):
  """Conv encoder/decoder: two stride-2 stages, a 3x3 conv and a residual stack."""

  num_hiddens: int = 64
  num_residual_layers: int = 2
  num_residual_hiddens: int = 32

  def __post_init__(self):
    _require(_is_int(self.num_hiddens) and 2 <= self.num_hiddens <= MAX_WIDTH
             and self.num_hiddens % 2 == 0,
             "conv.num_hiddens", f"an even integer in [2, {MAX_WIDTH}]", self.num_hiddens)
    _require(_is_int(self.num_residual_layers) and 0 <= self.num_residual_layers <= 256,
             "conv.num_residual_layers", "an integer in [0, 256]", self.num_residual_layers)
    _require(_is_int(self.num_residual_hiddens) and 1 <= self.num_residual_hiddens <= MAX_WIDTH,
             "conv.num_residual_hiddens", f"an integer in [1, {MAX_WIDTH}]",
             self.num_residual_hiddens)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Config):
  """A whole VQ-VAE: image shape, architecture and codebook.

  Attributes:
    arch: ``"mlp"`` (one code per image) or ``"conv"`` (an ``H/4 x W/4`` grid).
    image_shape: ``(H, W, C)`` of the images the model reads and writes.
    quantizer: the codebook.
    mlp: sizes for ``arch="mlp"`` (default: 784 -> 128 -> 64 -> D and D -> 128 -> 784).
    conv: sizes for ``arch="conv"``.
    output_activation: ``"none"`` (a linear decoder output, trained by MSE as in
      van den Oord et al. 2017) or ``"sigmoid"``.
  """

  _NESTED = {"quantizer": QuantizerConfig, "mlp": MLPConfig, "conv": ConvConfig}

  arch: str = "mlp"
  image_shape: tuple[int, int, int] = (28, 28, 1)
  quantizer: QuantizerConfig = dataclasses.field(default_factory=QuantizerConfig)
  mlp: MLPConfig | None = None
  conv: ConvConfig | None = None
  output_activation: str = "none"

  def __post_init__(self):
    _require(self.arch in ARCHITECTURES, "arch", f"one of {ARCHITECTURES}", self.arch)
    expected = f"(height, width, channels) of integers in [1, {MAX_IMAGE_SIDE}]"
    shape = _int_tuple(self.image_shape, "image_shape", expected)
    object.__setattr__(self, "image_shape", shape)
    _require(len(shape) == 3 and all(_is_int(s) and 1 <= s <= MAX_IMAGE_SIDE for s in shape),
             "image_shape", expected, shape)
    _require(isinstance(self.quantizer, QuantizerConfig), "quantizer",
             "a QuantizerConfig", self.quantizer)
    _require(self.output_activation in OUTPUT_ACTIVATIONS, "output_activation",
             f"one of {OUTPUT_ACTIVATIONS}", self.output_activation)
    if self.arch == "mlp":
      if self.mlp is None:
        object.__setattr__(self, "mlp", MLPConfig())
      _require(self.conv is None, "conv", "None for arch='mlp'", self.conv)
      _require(isinstance(self.mlp, MLPConfig), "mlp", "an MLPConfig", self.mlp)
    else:
      if self.conv is None:
        object.__setattr__(self, "conv", ConvConfig())
      _require(self.mlp is None, "mlp", "None for arch='conv'", self.mlp)
      _require(isinstance(self.conv, ConvConfig), "conv", "a ConvConfig", self.conv)
      _require(shape[0] % 4 == 0 and shape[1] % 4 == 0, "image_shape",
               "height and width divisible by 4 for arch='conv' (two stride-2 stages)",
               shape)

  @property
  def latent_shape(self) -> tuple[int, ...]:
    """Shape of the code grid for one image: ``()`` for MLP, ``(H/4, W/4)`` for conv."""
    if self.arch == "mlp":
      return ()
    return (self.image_shape[0] // 4, self.image_shape[1] // 4)

  @property
  def codes_shape(self) -> tuple[int, ...]:
    """Shape of one image's codes: :attr:`latent_shape`, then ``(N,)`` for a residual
    quantizer (:attr:`QuantizerConfig.code_shape`)."""
    return self.latent_shape + self.quantizer.code_shape

  @property
  def prior_shape(self) -> tuple[int, ...]:
    """The grid a prior models one image's codes on: :attr:`latent_shape`, except for a
    residual quantizer, whose ``[H, W, N]`` codes lie on an ``(H, W * N)`` grid (stages
    innermost: raster order visits each position's stages in order; a plain reshape) and
    an MLP's ``N`` codes on ``(1, N)``."""
    if self.quantizer.kind != "rvq":
      return self.latent_shape
    height, width = self.latent_shape or (1, 1)
    return (height, width * self.quantizer.num_stages)


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Config):
  """A training recipe: data, steps and optimiser (Adam; linear warmup, then cosine decay to
  ``final_lr_fraction`` of the peak, or a constant rate).

  ``compute_dtype`` (one of :data:`COMPUTE_DTYPES`) is what the encoder and decoder compute
  in: ``"bfloat16"`` is mixed precision, with float32 parameters (in the optimizer and
  checkpoints), a float32 quantizer (search, losses, statistics, EMA) and a float32
  reconstruction loss. Left at ``"float32"`` it is omitted from :meth:`to_dict`, so records
  written before it existed compare equal.
  """

  dataset: str = "mnist"
  split: str = "train"
  steps: int = 2000
  batch_size: int = 128
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  final_lr_fraction: float = 0.1
  seed: int = 0
  schedule: str = "cosine"
  compute_dtype: str = "float32"

  def __post_init__(self):
    _require(isinstance(self.dataset, str) and self.dataset, "dataset", "a dataset name", self.dataset)
    _require(self.compute_dtype in COMPUTE_DTYPES, "compute_dtype", f"one of {COMPUTE_DTYPES}",
             self.compute_dtype)
    _require(self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}", self.schedule)
    _require(_is_int(self.steps) and self.steps >= 1, "steps", "an integer >= 1", self.steps)
    _require(_is_int(self.batch_size) and self.batch_size >= 1,
             "batch_size", "an integer >= 1", self.batch_size)
    _require(_is_number(self.learning_rate) and self.learning_rate > 0,
             "learning_rate", "a number > 0", self.learning_rate)
    _require(_is_int(self.warmup_steps) and self.warmup_steps >= 0,
             "warmup_steps", "an integer >= 0", self.warmup_steps)
    _require(_is_number(self.final_lr_fraction) and 0 <= self.final_lr_fraction <= 1,
             "final_lr_fraction", "a number in [0, 1]", self.final_lr_fraction)
    _require(_is_int(self.seed), "seed", "an integer", self.seed)

  @property
  def warmup_length(self) -> int:
    """The updates the warm-up actually takes: ``min(warmup_steps, steps - 1)``, so that even a
    run no longer than its warm-up reaches the peak rate, at its last update."""
    return min(self.warmup_steps, self.steps - 1)

  def to_dict(self) -> dict[str, Any]:
    """As :meth:`_Config.to_dict`, without ``compute_dtype`` at its default: checkpoints, model
    cards and run records of float32 recipes keep the bytes they had before it."""
    out = super().to_dict()
    if out["compute_dtype"] == "float32":
      del out["compute_dtype"]
    return out


#: The recipe :class:`FinetuneConfig` starts from: a short, gentle schedule.
FINETUNE_RECIPE = TrainConfig(steps=1000, batch_size=128, learning_rate=3e-4, warmup_steps=50)
# The optimiser fields a FinetuneConfig held itself before it held a TrainConfig (vqzoo 0.2),
# and its run options of then (now RunConfig's): old records still load.
_FLAT_RECIPE_KEYS = ("split", "steps", "batch_size", "learning_rate", "warmup_steps",
                     "final_lr_fraction", "schedule", "seed")
_OLD_RUN_KEYS = ("checkpoint_every", "log_every")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(_Config):
  """A fine-tuning recipe: what :func:`vqzoo.training.finetune` trains, and how.

  Attributes:
    recipe: the optimiser, schedule, data order and TFDS training split, as for training
      from scratch (its ``dataset`` is set by the source; ``batch_size`` is capped at the
      number of training images).
    eval_split: TFDS split measured before and after.
    holdout_fraction: share of an image folder held out for the before/after measurement.
    freeze: parts among ``("encoder", "decoder", "codebook")`` that stay bit-identical.
    reseed_before: move codes unused on the training data onto encoder outputs first.
    reseed_threshold: dead-code re-seeding while training (codes used by fewer vectors per
      batch); ``None`` keeps the base model's own threshold, ``0`` turns it off.
  """

  _NESTED = {"recipe": TrainConfig}

  recipe: TrainConfig = FINETUNE_RECIPE
  eval_split: str = "test"
  holdout_fraction: float = 0.1
  freeze: tuple[str, ...] = ()
  reseed_before: bool = False
  reseed_threshold: float | None = None

  def __post_init__(self):
    _require(isinstance(self.recipe, TrainConfig), "recipe", "a TrainConfig", self.recipe)
    freeze = tuple(sorted(set(_int_tuple(self.freeze, "freeze", f"parts among {PARTS}"))))
    object.__setattr__(self, "freeze", freeze)
    _require(all(p in PARTS for p in freeze), "freeze", f"parts among {PARTS}", freeze)
    _require(_is_number(self.holdout_fraction) and 0 <= self.holdout_fraction < 1,
             "holdout_fraction", "a number in [0, 1)", self.holdout_fraction)
    _require(isinstance(self.reseed_before, bool), "reseed_before", "a bool", self.reseed_before)
    _require(self.reseed_threshold is None or (_is_number(self.reseed_threshold)
                                               and 0 <= self.reseed_threshold < float("inf")),
             "reseed_threshold", "None or a finite number >= 0", self.reseed_threshold)

  def train_config(self, dataset: str, num_images: int) -> TrainConfig:
    """The :class:`TrainConfig` the trainer runs (batch size capped at ``num_images``)."""
    return dataclasses.replace(self.recipe, dataset=dataset,
                               batch_size=min(self.recipe.batch_size, max(1, num_images)))

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "FinetuneConfig":
    """Also reads the flat records of vqzoo 0.2 (optimiser fields and run options inline)."""
    if isinstance(data, Mapping) and any(k in data for k in _FLAT_RECIPE_KEYS + _OLD_RUN_KEYS):
      data = dict(data)
      flat = {k: data.pop(k) for k in _FLAT_RECIPE_KEYS if k in data}
      for key in _OLD_RUN_KEYS:
        data.pop(key, None)
      recipe = dict(data.pop("recipe", None) or FINETUNE_RECIPE.to_dict())
      data["recipe"] = {**recipe, **flat}
    return super().from_dict(data)


@dataclasses.dataclass(frozen=True)
class RunConfig(_Config):
  """How a run is carried out, as opposed to what it computes (the recipe).

  Attributes:
    resume: continue bit-exactly from the workdir's checkpoint (which must exist and have been
      written with the same recipe, but see ``extend_schedule``).
    overwrite: without ``resume``, delete the workdir's checkpoint and metrics and start afresh
      (without either, a checkpoint already there is an error).
    extend_schedule: on resume, accept a recipe that differs only in ``steps``; the
      learning-rate schedule is recomputed for the new total from the resumed step on.
    checkpoint_every: steps between atomic checkpoints (and at the end).
    log_every: steps between metric lines, progress-bar updates and NaN checks.
    until_step: stop (with a checkpoint) at this step instead of ``recipe.steps``; a later run
      with ``resume`` continues on the same schedule.
    progress: show a progress bar (process 0 only).
  """

  resume: bool = False
  overwrite: bool = False
  extend_schedule: bool = False
  checkpoint_every: int = 1000
  log_every: int = 50
  until_step: int | None = None
  progress: bool = True

  def __post_init__(self):
    for name in ("resume", "overwrite", "extend_schedule", "progress"):
      _require(isinstance(getattr(self, name), bool), name, "a bool", getattr(self, name))
    _require(not (self.resume and self.overwrite), "resume and overwrite",
             "one or the other, not both", (self.resume, self.overwrite))
    for name in ("checkpoint_every", "log_every"):
      value = getattr(self, name)
      _require(_is_int(value) and value >= 1, name, "an integer >= 1", value)
    _require(self.until_step is None or (_is_int(self.until_step) and self.until_step >= 0),
             "until_step", "None or an integer >= 0", self.until_step)


PRIOR_KINDS = ("pixelcnn", "categorical")
#: The latent grid a ``pixelcnn`` prior gets when ``latent_shape`` is left out: the zoo's conv
#: models (28x28 images, two stride-2 stages).
DEFAULT_PRIOR_GRID = (7, 7)


@dataclasses.dataclass(frozen=True)
class PriorConfig(_Config):
  """A generative prior over a VQ-VAE's codes (:mod:`vqzoo.nn.priors`).

  Attributes:
    kind: ``"pixelcnn"`` (a gated PixelCNN over an ``H x W`` code grid, conv models) or
      ``"categorical"`` (one learned distribution over the single code of an MLP model).
    num_embeddings: K, the number of codes (the VQ-VAE's codebook size).
    latent_shape: the code grid of one image: ``(H, W)`` for ``"pixelcnn"``, ``()`` for
      ``"categorical"``; ``None`` picks ``(7, 7)`` or ``()`` by ``kind``.
    num_classes: number of class labels to condition on; 0 for an unconditional prior.
    hidden: channels of the PixelCNN's stacks (ignored by ``"categorical"``).
    num_layers: gated residual layers after the first (mask A) layer (``"pixelcnn"`` only).
    kernel_size: odd kernel size of the PixelCNN's stacks (``"pixelcnn"`` only).
  """

  kind: str = "pixelcnn"
  num_embeddings: int = 128
  latent_shape: tuple[int, ...] | None = None
  num_classes: int = 0
  hidden: int = 64
  num_layers: int = 8
  kernel_size: int = 3

  def __post_init__(self):
    _require(self.kind in PRIOR_KINDS, "prior.kind", f"one of {PRIOR_KINDS}", self.kind)
    if self.latent_shape is None:
      object.__setattr__(self, "latent_shape",
                         DEFAULT_PRIOR_GRID if self.kind == "pixelcnn" else ())
    _require(isinstance(self.latent_shape, (tuple, list)), "prior.latent_shape",
             "a sequence of integers", self.latent_shape)
    shape = tuple(self.latent_shape)
    object.__setattr__(self, "latent_shape", shape)
    if self.kind == "pixelcnn":
      _require(len(shape) == 2 and all(_is_int(s) and s >= 1 for s in shape),
               "prior.latent_shape", "(height, width) of integers >= 1 for kind='pixelcnn'",
               shape)
    else:
      _require(shape == (), "prior.latent_shape", "() for kind='categorical'", shape)
    _require(_is_int(self.num_embeddings) and self.num_embeddings >= 1,
             "prior.num_embeddings", "an integer >= 1", self.num_embeddings)
    _require(_is_int(self.num_classes) and (self.num_classes == 0 or self.num_classes >= 2),
             "prior.num_classes", "0 (unconditional) or an integer >= 2", self.num_classes)
    _require(_is_int(self.hidden) and self.hidden >= 1, "prior.hidden", "an integer >= 1",
             self.hidden)
    _require(_is_int(self.num_layers) and self.num_layers >= 0, "prior.num_layers",
             "an integer >= 0", self.num_layers)
    _require(_is_int(self.kernel_size) and self.kernel_size >= 3 and self.kernel_size % 2 == 1,
             "prior.kernel_size", "an odd integer >= 3", self.kernel_size)

  @classmethod
  def for_model(cls, model: ModelConfig, **kwargs: Any) -> "PriorConfig":
    """The prior that fits ``model``'s codes: kind, K and grid (:attr:`ModelConfig.prior_shape`)
    from it, the rest from kwargs. A PixelCNN for conv and residual models, else categorical."""
    _require(isinstance(model, ModelConfig), "model", "a ModelConfig", model)
    grid = model.prior_shape
    return cls(kind="pixelcnn" if grid else "categorical",
               num_embeddings=model.quantizer.num_embeddings, latent_shape=grid, **kwargs)
