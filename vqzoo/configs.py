"""Frozen, validated configuration dataclasses.

Every config round-trips through plain dicts (``to_dict`` / ``from_dict``) so it
can live in ``config.json`` next to the weights. ``from_dict`` refuses unknown
keys, and every constructor validates its fields, raising ``ValueError`` that
names the offending field and what was expected.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

ARCHITECTURES = ("mlp", "conv")
OUTPUT_ACTIVATIONS = ("none", "sigmoid")
SCHEDULES = ("cosine", "constant")


def _require(condition: bool, field: str, expected: str, got: Any) -> None:
  if not condition:
    raise ValueError(f"{field}: expected {expected}, got {got!r}")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _strict_kwargs(cls, data: Mapping[str, Any]) -> dict[str, Any]:
  if not isinstance(data, Mapping):
    raise ValueError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - known)
  if unknown:
    raise ValueError(
        f"{cls.__name__}: unknown keys {unknown}; expected a subset of {sorted(known)}")
  return dict(data)


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
  """The codebook.

  Attributes:
    num_embeddings: K, the number of codes.
    embedding_dim: D, the size of each code vector.
    commitment_cost: beta, the weight of the commitment term.
    ema: update the codebook by exponential moving averages (state) instead of
      the embedding loss (params).
    decay: EMA decay; also the decay of the code-usage statistics.
    epsilon: Laplace smoothing of EMA cluster sizes.
    dead_code_threshold: codes whose EMA usage (vectors per batch) falls below
      this are re-seeded from encoder outputs while training; 0 disables it.
  """

  num_embeddings: int = 512
  embedding_dim: int = 64
  commitment_cost: float = 0.25
  ema: bool = False
  decay: float = 0.99
  epsilon: float = 1e-5
  dead_code_threshold: float = 0.0

  def __post_init__(self):
    _require(_is_int(self.num_embeddings) and self.num_embeddings >= 1,
             "quantizer.num_embeddings", "an integer >= 1", self.num_embeddings)
    _require(_is_int(self.embedding_dim) and self.embedding_dim >= 1,
             "quantizer.embedding_dim", "an integer >= 1", self.embedding_dim)
    _require(_is_number(self.commitment_cost) and self.commitment_cost >= 0,
             "quantizer.commitment_cost", "a number >= 0", self.commitment_cost)
    _require(isinstance(self.ema, bool), "quantizer.ema", "a bool", self.ema)
    _require(_is_number(self.decay) and 0.0 <= self.decay <= 1.0,
             "quantizer.decay", "a number in [0, 1]", self.decay)
    _require(_is_number(self.epsilon) and self.epsilon > 0,
             "quantizer.epsilon", "a number > 0", self.epsilon)
    _require(_is_number(self.dead_code_threshold) and self.dead_code_threshold >= 0,
             "quantizer.dead_code_threshold", "a number >= 0", self.dead_code_threshold)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "QuantizerConfig":
    return cls(**_strict_kwargs(cls, data))


@dataclasses.dataclass(frozen=True)
class MLPConfig:
  """MLP encoder/decoder sizes (the seed: 784 -> 128 -> 64 -> D; D -> 128 -> 784)."""

  encoder_sizes: tuple[int, ...] = (128, 64)
  decoder_sizes: tuple[int, ...] = (128,)

  def __post_init__(self):
    for name in ("encoder_sizes", "decoder_sizes"):
      sizes = tuple(getattr(self, name))
      object.__setattr__(self, name, sizes)
      _require(all(_is_int(s) and s >= 1 for s in sizes),
               f"mlp.{name}", "a sequence of integers >= 1", sizes)

  def to_dict(self) -> dict[str, Any]:
    return {"encoder_sizes": list(self.encoder_sizes),
            "decoder_sizes": list(self.decoder_sizes)}

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "MLPConfig":
    return cls(**_strict_kwargs(cls, data))


@dataclasses.dataclass(frozen=True)
class ConvConfig:
  """Conv encoder/decoder: two stride-2 stages, a 3x3 conv and a residual stack."""

  num_hiddens: int = 64
  num_residual_layers: int = 2
  num_residual_hiddens: int = 32

  def __post_init__(self):
    _require(_is_int(self.num_hiddens) and self.num_hiddens >= 2 and self.num_hiddens % 2 == 0,
             "conv.num_hiddens", "an even integer >= 2", self.num_hiddens)
    _require(_is_int(self.num_residual_layers) and self.num_residual_layers >= 0,
             "conv.num_residual_layers", "an integer >= 0", self.num_residual_layers)
    _require(_is_int(self.num_residual_hiddens) and self.num_residual_hiddens >= 1,
             "conv.num_residual_hiddens", "an integer >= 1", self.num_residual_hiddens)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "ConvConfig":
    return cls(**_strict_kwargs(cls, data))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A whole VQ-VAE: image shape, architecture and codebook.

  Attributes:
    arch: ``"mlp"`` (one code per image) or ``"conv"`` (an ``H/4 x W/4`` grid).
    image_shape: ``(H, W, C)`` of the images the model reads and writes.
    quantizer: the codebook.
    mlp: sizes for ``arch="mlp"`` (defaults to the seed's).
    conv: sizes for ``arch="conv"``.
    output_activation: ``"none"`` (the seed) or ``"sigmoid"`` on the decoder output.
  """

  arch: str = "mlp"
  image_shape: tuple[int, int, int] = (28, 28, 1)
  quantizer: QuantizerConfig = dataclasses.field(default_factory=QuantizerConfig)
  mlp: MLPConfig | None = None
  conv: ConvConfig | None = None
  output_activation: str = "none"

  def __post_init__(self):
    _require(self.arch in ARCHITECTURES, "arch", f"one of {ARCHITECTURES}", self.arch)
    shape = tuple(self.image_shape)
    object.__setattr__(self, "image_shape", shape)
    _require(len(shape) == 3 and all(_is_int(s) and s >= 1 for s in shape),
             "image_shape", "(height, width, channels) of integers >= 1", shape)
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

  def to_dict(self) -> dict[str, Any]:
    return {
        "arch": self.arch,
        "image_shape": list(self.image_shape),
        "quantizer": self.quantizer.to_dict(),
        "mlp": None if self.mlp is None else self.mlp.to_dict(),
        "conv": None if self.conv is None else self.conv.to_dict(),
        "output_activation": self.output_activation,
    }

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
    kwargs = _strict_kwargs(cls, data)
    if "quantizer" in kwargs:
      kwargs["quantizer"] = QuantizerConfig.from_dict(kwargs["quantizer"])
    if kwargs.get("mlp") is not None:
      kwargs["mlp"] = MLPConfig.from_dict(kwargs["mlp"])
    if kwargs.get("conv") is not None:
      kwargs["conv"] = ConvConfig.from_dict(kwargs["conv"])
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training recipe: data, steps and optimiser (Adam; linear warmup, then cosine decay to
  ``final_lr_fraction`` of the peak, or a constant rate)."""

  dataset: str = "mnist"
  split: str = "train"
  steps: int = 2000
  batch_size: int = 128
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  final_lr_fraction: float = 0.1
  seed: int = 0
  schedule: str = "cosine"

  def __post_init__(self):
    _require(isinstance(self.dataset, str) and self.dataset, "dataset", "a dataset name", self.dataset)
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

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
    return cls(**_strict_kwargs(cls, data))
