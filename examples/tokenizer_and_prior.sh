#!/usr/bin/env bash
# A VQ-VAE as a tokenizer, then a prior over its tokens, from the shell:
#   bash examples/tokenizer_and_prior.sh OUT_DIR [SPLIT] [STEPS] [TRAIN_SPLIT]
# in the environment README.md sets up (source .venv-test/bin/activate; TFDS_DATA_DIR naming the
# prepared datasets), e.g. `bash examples/tokenizer_and_prior.sh out "test[:500]" 50` for a
# quick try (defaults: the whole test split, 2000 steps, the prior fitted on the whole train
# split).
set -euo pipefail
out=${1:-example_output}; split=${2:-test}; steps=${3:-2000}; train_split=${4:-train}
mkdir -p "$out"
# Fashion-MNIST images -> codes (with labels and the model's digest) -> images again.
vqzoo encode fashion-mnist-conv-ema --dataset "fashion_mnist:$split" --out "$out/codes.npz"
vqzoo decode fashion-mnist-conv-ema "$out/codes.npz" --out "$out/decoded.png"
# Fit a class-conditional prior over the model's training codes, measure it on SPLIT's codes,
# and sample from it.
vqzoo fit-prior fashion-mnist-conv-ema --dataset fashion_mnist --split "$train_split" \
  --eval-split "$split" --steps "$steps" --out "$out/with-prior"
vqzoo sample "$out/with-prior" --n 32 --label 7 --out "$out/sneakers.png"
