"""The artifact: the loaded-model container, ``load``, serialization, integrity, cards, the zoo.

Imports run one way: ``loading`` reads files into an ``Artifact`` record, ``model`` builds a
``PretrainedVQVAE`` from one, and ``factory`` (``load``, ``create_model``) uses both.

No performance tuning lives here (see :mod:`vqzoo.cpu_tuning`).
"""

from vqzoo.pretrained.artifact import Artifact
from vqzoo.pretrained.hub import HubError, HubOutcomeUnknown
from vqzoo.pretrained.integrity import IntegrityError
from vqzoo.pretrained.factory import create_model, load
from vqzoo.pretrained.loading import parse_hub_id
from vqzoo.pretrained.model import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, PretrainedVQVAE
from vqzoo.pretrained.registry import ZooEntry, get_config, get_entry, list_models

__all__ = ["IntegrityError", "HubError", "HubOutcomeUnknown", "Artifact", "create_model", "load",
           "parse_hub_id", "CARD_NAME", "CONFIG_NAME", "WEIGHTS_NAME", "PretrainedVQVAE",
           "ZooEntry", "get_config", "get_entry", "list_models"]
