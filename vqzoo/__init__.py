"""vqzoo: a model zoo of VQ-VAEs in dm-haiku/JAX.

    import vqzoo
    vqzoo.list_models()
    model = vqzoo.load("mnist-mlp")
    codes = model.encode(images); recon = model.decode(codes)

The modules, in four layers and a few helpers:

- `vqzoo.nn`: plain Haiku modules (quantizers, encoders and decoders, `VQVAE`, priors).
- `vqzoo.pretrained`: loaded and saved models, the zoo's registry, cards, the Hub.
- `vqzoo.training`: data, training, fine-tuning, prior fitting, reconstruction metrics.
- `vqzoo.evaluation`: the measuring instruments: Fréchet distance, likelihood bound, sample
  quality.
- `vqzoo.configs`: the validated config dataclasses.
- `vqzoo.cpu_tuning`: the CPU-only speed-ups.
- `vqzoo.images`: checking user images and codes.
- `vqzoo.grid`: PNG grids of images.
- `vqzoo.io` and `vqzoo.folders`: atomic file writes; folders replaced whole.
- `vqzoo.cli`: the ``vqzoo`` command.

The guide below is the repository's README.

.. include:: ../README.md
"""

from vqzoo._version import __version__  # first: a module imported below may read it

import importlib.abc as _abc
import sys as _sys

# Modules of the flat 0.1 layout (and the measuring instruments once in vqzoo.training), and
# what replaced them.
_MOVED = {
    "vqzoo.model": "vqzoo.nn (VQVAE, build, build_codec)",
    "vqzoo.evaluate": "vqzoo.training.metrics (vqzoo.evaluate is the function)",
    "vqzoo.quantizers": "vqzoo.nn.quantizers",
    "vqzoo.nets": "vqzoo.nn.nets",
    "vqzoo.compilation": "vqzoo.cpu_tuning",
    "vqzoo.loading": "vqzoo.pretrained (load)",
    "vqzoo.registry": "vqzoo.pretrained.registry",
    "vqzoo.serialization": "vqzoo.pretrained.serialization",
    "vqzoo.cards": "vqzoo.pretrained.cards",
    "vqzoo.data": "vqzoo.training.data",
    "vqzoo.train": "vqzoo.training.trainer",
    "vqzoo.finetune": "vqzoo.training.finetuning",
    "vqzoo.zoo": "scripts/zoo_tools.py (maintainer tooling) and vqzoo.pretrained.cards.zoo_table",
    "vqzoo.training.frechet": "vqzoo.evaluation.frechet",
    "vqzoo.training.likelihood": "vqzoo.evaluation.likelihood",
    "vqzoo.training.sample_quality": "vqzoo.evaluation.sample_quality",
}


class _MovedModuleFinder(_abc.MetaPathFinder):
  """Makes ``import vqzoo.<old module>`` fail with a message naming its replacement."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname in _MOVED:
      raise ModuleNotFoundError(
          f"{fullname} was moved in vqzoo 0.2: use {_MOVED[fullname]}", name=fullname)
    return None


if not any(isinstance(f, _MovedModuleFinder) for f in _sys.meta_path):
  _sys.meta_path.insert(0, _MovedModuleFinder())

from vqzoo.configs import (ConvConfig, FinetuneConfig, MLPConfig, ModelConfig,  # noqa: E402
                           QuantizerConfig, RunConfig, TrainConfig)
from vqzoo.nn import (FSQ, LFQ, VQVAE, QuantizerOutput, ResidualVQ,  # noqa: E402
                      VectorQuantizer, VectorQuantizerEMA, VQVAEOutput, build, build_codec)
from vqzoo.pretrained import (IntegrityError, PretrainedVQVAE, create_model,  # noqa: E402
                              get_config, list_models, load)
from vqzoo.training.metrics import evaluate  # noqa: E402

__all__ = [
    "ConvConfig", "FinetuneConfig", "MLPConfig", "ModelConfig", "QuantizerConfig", "RunConfig",
    "TrainConfig",
    "VQVAE", "VQVAEOutput", "build", "build_codec",
    "VectorQuantizer", "VectorQuantizerEMA", "FSQ", "ResidualVQ", "LFQ", "QuantizerOutput",
    "PretrainedVQVAE", "IntegrityError", "create_model", "load", "list_models", "get_config",
    "evaluate",
]
