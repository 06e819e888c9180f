"""Warnings about results and recipes that should not be trusted as they stand.

Each check returns plain sentences; :func:`emit` raises each as a :class:`ResultWarning`
(which ``vqzoo`` prints as one ``vqzoo CMD: warning: ...`` line), and the commands that write
a model card also list them there, under "Warnings".
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping

from vqzoo.configs import TrainConfig

MIN_HELD_OUT = 20  # fewer held-out images than this measure too little to compare models


class ResultWarning(UserWarning):
  """A result or a recipe that is probably not what the user wants."""


def recipe_warnings(recipe: TrainConfig, num_train: int | None = None) -> list[str]:
  """Warm-up not shorter than the run (the schedule then compresses it to
  :attr:`~vqzoo.configs.TrainConfig.warmup_length`); a batch larger than the ``num_train``
  training images (where the batch is cut to the images, as in fine-tuning; ``None``: not
  checked)."""
  out = []
  if recipe.warmup_steps >= recipe.steps:
    lr, steps = recipe.learning_rate, recipe.warmup_length
    climb = (f"the rate climbs to its peak ({lr:g}) by the run's last step, by {lr / steps:g} a "
             f"step instead of {lr / recipe.warmup_steps:g}" if steps else
             f"its one step runs at the peak rate ({lr:g})")
    out.append(f"the learning-rate warm-up ({recipe.warmup_steps} steps) is not shorter than "
               f"the run ({recipe.steps} steps): it is compressed to {steps} "
               f"step{'s' if steps != 1 else ''}, so {climb}; lower --lr, or run more "
               "steps than the warm-up")
  if num_train is not None and recipe.batch_size > num_train:
    out.append(f"batch size {recipe.batch_size} is larger than the {num_train} training images: "
               f"each batch holds every image (batch {num_train}); lower --batch-size or add "
               "images")
  return out


def held_out_warnings(num_held_out: int, what: str = "held-out") -> list[str]:
  """Too few held-out images (fewer than :data:`MIN_HELD_OUT`) to measure a model."""
  if num_held_out >= MIN_HELD_OUT:
    return []
  return [f"only {num_held_out} {what} image{'s' if num_held_out != 1 else ''} to measure on "
          f"(at least {MIN_HELD_OUT} are needed for a usable measurement): the metrics are "
          "noise; add images or raise the held-out fraction"]


def prior_warnings(metrics: Mapping[str, Any]) -> list[str]:
  """A fitted prior that scores worse than the unigram (or uniform) baseline."""
  prior, unigram = metrics["prior_bits"], metrics["unigram_bits"]
  if prior <= unigram:
    return []
  uniform = metrics.get("uniform_bits", float("inf"))
  where = metrics.get("eval_split", "held-out")
  return [f"the fitted prior scores {prior:.1f} bits per image on the {where} codes, worse than "
          f"the unigram baseline ({unigram:.1f})"
          + (f" and the uniform one ({uniform:.1f})" if prior > uniform else "")
          + ": it is not a useful model of the codes; fit it for more steps or on more images"]


#: Fewer latent positions than this measure too little to call a model's codes collapsed.
MIN_POSITIONS = 100


def code_usage_warnings(metrics: Mapping[str, Any], positions_per_image: int) -> list[str]:
  """A trained model whose codes collapsed: a code perplexity under 2 on the held-out images
  (less than two codes in real use), measured on at least :data:`MIN_POSITIONS` positions.

  FSQ with levels of 3 can start this way: every position rounds to the centre value and the
  decoder sees one constant input (``benchmarks/fsq_levels.py``: with levels ``(3, 3, 3, 3)``
  two of three seeds never left it).
  """
  positions = metrics["num_images"] * positions_per_image
  if positions < MIN_POSITIONS or metrics["perplexity"] >= 2.0:
    return []
  used = metrics["codes_used"]
  return [f"the trained model's codes collapsed: over {positions} latent positions of the "
          f"held-out images the code perplexity is {metrics['perplexity']:.2f} ({used} distinct "
          f"code{'' if used == 1 else 's'}), so it decodes nearly the same image for every "
          "input; train again with another seed (or, for FSQ, levels of 4 or more per "
          "dimension)"]


def emit(messages: Iterable[str]) -> list[str]:
  """Raises each message as a :class:`ResultWarning`; returns them, for the model card."""
  messages = list(messages)
  for message in messages:
    warnings.warn(message, ResultWarning, stacklevel=2)
  return messages


def card_section(messages: Iterable[str]) -> dict[str, str]:
  """``{"Warnings": bulleted list}`` for a card's ``extra_sections``; empty without messages."""
  messages = list(messages)
  if not messages:
    return {}
  return {"Warnings": "\n".join(f"- {m[0].upper()}{m[1:]}." for m in messages)}
