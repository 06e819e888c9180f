"""PyTorch twins of the zoo architectures, with vector-quantize-pytorch's ``VectorQuantize``.

Same layers, sizes, K, D, beta and EMA decay as the vqzoo configs they mirror; only the
framework differs. Used by the benchmarks, never by vqzoo itself.
"""

from __future__ import annotations

import torch
from torch import nn
from vector_quantize_pytorch import VectorQuantize


def _vq(q) -> VectorQuantize:
  if q.ema:
    return VectorQuantize(dim=q.embedding_dim, codebook_size=q.num_embeddings, decay=q.decay,
                          eps=q.epsilon, commitment_weight=q.commitment_cost)
  # Plain VQ: the codebook learns by gradient (embedding loss), no EMA.
  return VectorQuantize(dim=q.embedding_dim, codebook_size=q.num_embeddings,
                        commitment_weight=q.commitment_cost, learnable_codebook=True,
                        ema_update=False)


class TorchMLPVQVAE(nn.Module):
  def __init__(self, config):
    super().__init__()
    h, w, c = config.image_shape
    sizes = [h * w * c, *config.mlp.encoder_sizes, config.quantizer.embedding_dim]
    self.encoder = _mlp(sizes)
    self.vq = _vq(config.quantizer)
    self.decoder = _mlp([config.quantizer.embedding_dim, *config.mlp.decoder_sizes, h * w * c])
    self.shape = (h, w, c)

  def forward(self, x):  # x: [B, H, W, C]
    z = self.encoder(x.flatten(1))
    z_q, codes, commit = self.vq(z)
    x_hat = self.decoder(z_q).view(x.shape)
    return x_hat, codes, commit


def _mlp(sizes):
  layers = []
  for i in range(len(sizes) - 1):
    layers.append(nn.Linear(sizes[i], sizes[i + 1]))
    if i < len(sizes) - 2:
      layers.append(nn.ReLU())
  return nn.Sequential(*layers)


class _Residual(nn.Module):
  def __init__(self, hidden, layers, res_hidden):
    super().__init__()
    self.blocks = nn.ModuleList(nn.Sequential(
        nn.ReLU(), nn.Conv2d(hidden, res_hidden, 3, padding=1), nn.ReLU(),
        nn.Conv2d(res_hidden, hidden, 1)) for _ in range(layers))

  def forward(self, x):
    for block in self.blocks:
      x = x + block(x)
    return torch.relu(x)


class TorchConvVQVAE(nn.Module):
  def __init__(self, config):
    super().__init__()
    c = config.image_shape[-1]
    cc, d = config.conv, config.quantizer.embedding_dim
    h = cc.num_hiddens
    self.encoder = nn.Sequential(
        nn.Conv2d(c, h // 2, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(h // 2, h, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(h, h, 3, padding=1), _Residual(h, cc.num_residual_layers, cc.num_residual_hiddens),
        nn.Conv2d(h, d, 1))
    self.vq = _vq(config.quantizer)
    self.decoder = nn.Sequential(
        nn.Conv2d(d, h, 3, padding=1), _Residual(h, cc.num_residual_layers, cc.num_residual_hiddens),
        nn.Conv2d(h, 4 * (h // 2), 3, padding=1), nn.PixelShuffle(2), nn.ReLU(),
        nn.Conv2d(h // 2, 4 * c, 3, padding=1), nn.PixelShuffle(2))

  def forward(self, x):  # x: [B, H, W, C] like vqzoo; NCHW inside
    z = self.encoder(x.permute(0, 3, 1, 2))
    b, d, gh, gw = z.shape
    z_q, codes, commit = self.vq(z.permute(0, 2, 3, 1).reshape(b, gh * gw, d))
    z_q = z_q.reshape(b, gh, gw, d).permute(0, 3, 1, 2)
    return self.decoder(z_q).permute(0, 2, 3, 1), codes, commit


def build_torch(config) -> nn.Module:
  return TorchMLPVQVAE(config) if config.arch == "mlp" else TorchConvVQVAE(config)


def torch_train_step(model, optimizer):
  def step(x):
    optimizer.zero_grad(set_to_none=True)
    x_hat, _, commit = model(x)
    loss = torch.mean((x - x_hat) ** 2) + commit.sum()
    loss.backward()
    optimizer.step()
    return loss
  return step
