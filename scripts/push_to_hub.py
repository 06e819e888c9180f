#!/usr/bin/env python
"""Publish bundled zoo variants to the Hugging Face Hub, one commit per variant.

  python scripts/push_to_hub.py --variant mnist-mlp             # -> vqzoo/mnist-mlp
  python scripts/push_to_hub.py --all --org my-org

Each variant is loaded with ``vqzoo.load(name)`` (the bundled weights, checked against
their sha256 pin) and pushed with ``model.push_to_hub`` together with its config and
model card. One JSON line per variant goes to stdout::

  {"variant": "mnist-mlp", "repo_id": "vqzoo/mnist-mlp", "commit": "<40 hex>", "sha256": "..."}

so ``vqzoo/weights/pins.json`` can pin ``repo_id``, ``revision`` (the commit) and
``sha256``. The pushed file must hash to the registry pin (the Hub copy and the bundled
copy share one pin); a mismatch is reported and makes the script exit with status 1.
Uses the usual ``huggingface_hub`` settings (``HF_TOKEN``, ``HF_ENDPOINT``).
"""

from __future__ import annotations

import argparse
import json
import sys


def _pushed_sha256(repo_id: str, commit: str, cache_dir: str | None) -> str:
  """sha256 of the ``model.safetensors`` the Hub serves at ``commit`` (downloaded back)."""
  from huggingface_hub import hf_hub_download

  from vqzoo.io import sha256_file
  from vqzoo.pretrained import WEIGHTS_NAME
  return sha256_file(hf_hub_download(repo_id, WEIGHTS_NAME, revision=commit, cache_dir=cache_dir))


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  which = p.add_mutually_exclusive_group(required=True)
  which.add_argument("--variant", action="append", metavar="NAME",
                     help="zoo variant to publish (repeatable)")
  which.add_argument("--all", action="store_true",
                     help="every zoo variant whose weights are bundled")
  p.add_argument("--org", default="vqzoo", help="Hub namespace (default: vqzoo)")
  p.add_argument("--message", default=None,
                 help="commit message (default: 'Upload vqzoo zoo variant NAME')")
  p.add_argument("--private", action="store_true", help="create the repos as private")
  p.add_argument("--cache-dir", default=None,
                 help="where to download the pushed file back to check its sha256")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  from vqzoo import compilation_cache
  compilation_cache.enable()  # vqzoo's own process: compile each step once
  from vqzoo.pretrained import registry
  from vqzoo.pretrained import load
  from vqzoo.pretrained import WEIGHTS_NAME

  if args.all:
    names = registry.list_models()
  else:
    names = list(dict.fromkeys(args.variant))
    for name in names:
      registry.get_entry(name)  # unknown names fail here, with suggestions, before any push
  status, pushed = 0, 0
  for name in names:
    entry = registry.get_entry(name)
    if entry.weights.sha256 is None or not (entry.bundled_dir / WEIGHTS_NAME).exists():
      print(f"skipping {name}: its weights are not bundled yet (train it with "
            f"`python scripts/train.py --variant {name} --bundle`)", file=sys.stderr)
      if not args.all:
        status = 1
      continue
    model = load(name)  # the bundled weights, verified against the pin
    if model.card is None:
      print(f"warning: {name} has no bundled model card", file=sys.stderr)
    repo_id = f"{args.org}/{name}"
    message = args.message or f"Upload vqzoo zoo variant {name}"
    info = model.push_to_hub(repo_id, commit_message=message, private=args.private or None)
    commit = getattr(info, "oid", None)
    if commit is None:
      print(f"error: pushing {name} to {repo_id} returned no commit id ({info!r})", file=sys.stderr)
      status = 1
      continue
    sha256 = _pushed_sha256(repo_id, commit, args.cache_dir)
    print(json.dumps({"variant": name, "repo_id": repo_id, "commit": commit, "sha256": sha256}),
          flush=True)
    pushed += 1
    if sha256 != entry.weights.sha256:
      print(f"error: {repo_id}@{commit} serves {WEIGHTS_NAME} with sha256 {sha256}, but the "
            f"registry pins {entry.weights.sha256}; do not pin this commit", file=sys.stderr)
      status = 1
  if pushed == 0 and status == 0:
    print("nothing to push", file=sys.stderr)
    status = 1
  return status


if __name__ == "__main__":
  sys.exit(main())
