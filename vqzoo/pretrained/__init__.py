"""The artifact: the loaded-model container, ``load``, serialization, integrity, cards, the zoo.

No performance tuning lives here (see :mod:`vqzoo.cpu_tuning`).
"""

from vqzoo.pretrained.integrity import IntegrityError
from vqzoo.pretrained.loading import create_model, load, parse_hub_id
from vqzoo.pretrained.model import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, PretrainedVQVAE
from vqzoo.pretrained.registry import ZooEntry, get_config, get_entry, list_models

__all__ = ["IntegrityError", "create_model", "load", "parse_hub_id", "CARD_NAME", "CONFIG_NAME", "WEIGHTS_NAME",
           "PretrainedVQVAE", "ZooEntry", "get_config", "get_entry", "list_models"]
