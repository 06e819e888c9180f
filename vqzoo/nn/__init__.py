"""Plain Haiku: quantizers, encoders and decoders, the VQ-VAE module and its transforms, and
priors over its codes.

Everything here works inside a user's own ``hk.transform``; nothing loads files, parses
arguments or tunes for a backend (:mod:`vqzoo.nn.hooks` declares what a backend may change).
Quantizers: :class:`VectorQuantizer` (a learnt codebook), :class:`VectorQuantizerEMA` (a
moving-average codebook), :class:`FSQ` (finite scalar quantization, an implicit codebook),
:class:`ResidualVQ` (stages of codebooks on residuals) and :class:`LFQ` (lookup-free, signs);
:func:`make_quantizer` builds the one a :class:`QuantizerConfig` names.

    import haiku as hk, vqzoo.nn as vnn
    model = vnn.build(vnn.ModelConfig(arch="conv"))             # hk.TransformedWithState
    def forward(x, is_training):                                # or your own modules
      quantizer = vnn.VectorQuantizerEMA(embedding_dim=16, num_embeddings=128, commitment_cost=0.25)
      return vnn.VQVAE(MyEncoder(), MyDecoder(), quantizer)(x, is_training)
"""

from vqzoo.configs import ConvConfig, MLPConfig, ModelConfig, PriorConfig, QuantizerConfig
from vqzoo.nn import fsq, hooks, lfq, residual
from vqzoo.nn.fsq import FSQ
from vqzoo.nn.lfq import LFQ
from vqzoo.nn.residual import ResidualVQ
from vqzoo.nn.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from vqzoo.nn.priors import (CategoricalPrior, GatedPixelCNN, bits_from_logits, build_prior,
                             make_prior, position_bits, prior_bits, sample_codes)
from vqzoo.nn.quantizers import (QuantizerOutput, VectorQuantizer, VectorQuantizerEMA,
                                 apply_reseeds, nearest_codes, squared_distances)
from vqzoo.nn.vqvae import (PARTS, VQVAE, Codec, ModelSpec, VQVAEOutput, build, build_codec,
                            make_quantizer, make_vqvae, part_of, part_prefixes, replace_codes)

__all__ = [
    "ConvConfig", "MLPConfig", "ModelConfig", "PriorConfig", "QuantizerConfig",
    "ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder",
    "QuantizerOutput", "VectorQuantizer", "VectorQuantizerEMA", "apply_reseeds",
    "nearest_codes", "squared_distances", "FSQ", "fsq", "hooks", "ResidualVQ", "residual",
    "LFQ", "lfq",
    "PARTS", "VQVAE", "Codec", "ModelSpec", "VQVAEOutput", "build", "build_codec", "make_vqvae",
    "make_quantizer",
    "part_of", "part_prefixes", "replace_codes",
    "CategoricalPrior", "GatedPixelCNN", "bits_from_logits", "build_prior", "make_prior",
    "position_bits", "prior_bits", "sample_codes",
]
