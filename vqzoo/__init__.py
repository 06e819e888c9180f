"""vqzoo: a model zoo of VQ-VAEs in dm-haiku/JAX.

    import vqzoo
    vqzoo.list_models()
    model = vqzoo.load("mnist-mlp")
    codes = model.encode(images); recon = model.decode(codes)
"""

from vqzoo.configs import ConvConfig, MLPConfig, ModelConfig, QuantizerConfig, TrainConfig
from vqzoo.evaluate import evaluate
from vqzoo.loading import load
from vqzoo.model import VQVAE, VQVAEOutput, build, build_codec
from vqzoo.pretrained import IntegrityError, PretrainedVQVAE
from vqzoo.quantizers import QuantizerOutput, VectorQuantizer, VectorQuantizerEMA
from vqzoo.registry import get_config, list_models

__version__ = "0.1.0"

__all__ = [
    "ConvConfig", "MLPConfig", "ModelConfig", "QuantizerConfig", "TrainConfig",
    "VQVAE", "VQVAEOutput", "build", "build_codec",
    "VectorQuantizer", "VectorQuantizerEMA", "QuantizerOutput",
    "PretrainedVQVAE", "IntegrityError", "load", "list_models", "get_config", "evaluate",
]
