#!/usr/bin/env python
"""Fine-tune a zoo or Hub model on a TFDS dataset or a folder of images (see --help).

  python scripts/finetune.py --from mnist-conv-ema --dataset fashion_mnist --out runs/ft --steps 2000
  python scripts/finetune.py --from mnist-mlp --images my_digits/ --freeze decoder --out runs/ft2

The same as ``vqzoo finetune``.
"""

import sys

from vqzoo.cli import main

if __name__ == "__main__":
  sys.exit(main(["finetune", *sys.argv[1:]]))
