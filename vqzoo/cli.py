"""The ``vqzoo`` command: one function per subcommand, registered in :data:`COMMANDS`.

Subcommands: list, info, reconstruct, eval, push, pull, demo, train, finetune, fit-prior,
sample, encode, decode. Argument parsing and printing only; the work is done by the library.
The library is imported inside each subcommand, so that ``vqzoo --help`` and usage errors answer
before JAX has loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vqzoo.images import uint8_to_float

DEMO_MODELS = ("mnist-mlp", "mnist-conv-ema")
DEMO_DIGITS = "mnist_test_digits.npy"
DIGITS_SHAPE = (28, 28, 1)  # the bundled digits'


def _load(name):
  from vqzoo.pretrained import load
  return load(name)


def _bundled_digits() -> np.ndarray:
  """32 real MNIST test digits (LeCun, Cortes & Burges; CC BY-SA 3.0) shipped with vqzoo."""
  with resources.files("vqzoo.assets").joinpath(DEMO_DIGITS).open("rb") as f:
    return np.load(f, allow_pickle=False)


def _read_input(path: str, image_shape, convert: str | None = None,
                resize: bool = False) -> np.ndarray:
  """``--input``: a ``.npy`` array as saved, one PNG/JPEG image or a folder of them -> uint8.

  Image files follow the one image rule of :mod:`vqzoo.image_folder`: a file
  whose size or channel kind differs from the model's is an error unless
  ``convert`` (``--convert grey|rgb``) or ``resize`` (``--resize``) ask for
  conversion. A folder is read like ``--images`` of the other commands.

  Raises:
    ValueError: a bad ``.npy`` file, an image that differs from the model's shape,
      an image too large to decode, or a model whose channel count no image mode gives.
    OSError: unreadable file, or not a PNG/JPEG.
  """
  from vqzoo.image_folder import load_image_folder, read_image
  if os.path.isdir(path):
    return load_image_folder(path, image_shape, convert, resize)[0]
  if path.lower().endswith(".npy"):
    try:
      return np.load(path, allow_pickle=False)
    except EOFError as e:  # an empty or truncated file
      raise ValueError(f"{path}: not a complete .npy file ({e})") from e
  channels = image_shape[-1]
  if channels not in (1, 3):
    raise ValueError(f"{path}: images feed 1- or 3-channel models, this one has {channels} "
                     "channels; pass a .npy array instead")
  return read_image(path, image_shape, convert, resize)[None]


def _conversion(args) -> dict:
  """``{"convert", "resize"}`` of the ``--convert`` / ``--resize`` flags."""
  from vqzoo.image_folder import conversion_record
  return conversion_record(args.convert, args.resize)


def _check_image_flags(args, reads_files: bool) -> None:
  """``--convert`` / ``--resize`` without image files to convert is a usage error, not a no-op."""
  if (args.convert or args.resize) and not reads_files:
    flag = f"--convert {args.convert}" if args.convert else "--resize"
    raise ValueError(f"{flag}: converts image files (--images, or --input with a PNG/JPEG file "
                     "or folder); this command reads none")


def _image_flags(p) -> None:
  """``--convert`` and ``--resize``: the conversions the image rule allows on request.

  Also puts the rule itself (:data:`vqzoo.image_folder.FOLDER_RULE`) in the command's help.
  """
  from vqzoo.image_folder import FOLDER_RULE
  if not p.description:
    p.description = f"Image files: {FOLDER_RULE}."
    p.formatter_class = argparse.RawDescriptionHelpFormatter
  p.add_argument("--convert", choices=("grey", "rgb"),
                 help="convert image files of the other channel kind: grey for 1-channel "
                      "models, rgb for 3-channel ones (default: such a file is an error)")
  p.add_argument("--resize", action="store_true",
                 help="resize image files to the model's HxW, bilinear, aspect ratio not kept "
                      "(default: a file of another size is an error)")


def _summary(model, images_u8_or_f, recon) -> dict:
  x = model.preprocess(images_u8_or_f)
  mse = float(np.mean((recon - x) ** 2))
  codes = model.encode(images_u8_or_f)
  return {"images": len(x), "mse": mse, "psnr": 10 * math.log10(1 / mse) if mse else math.inf,
          "codes_used": int(len(np.unique(codes)))}


def cmd_list(args):
  from vqzoo.pretrained import registry
  rows = []
  for name in registry.list_models(args.pattern):
    entry = registry.get_entry(name)
    m = entry.metrics
    rows.append({"name": name, "description": entry.description,
                 "mse": m.get("mse"), "codes_used": m.get("codes_used"),
                 "prior_bits": m.get("prior", {}).get("prior_bits")})
  if args.json:
    print(json.dumps(rows, indent=2))
    return
  name_width = max((len(r["name"]) for r in rows), default=0)
  description_width = max((len(r["description"]) for r in rows), default=0)
  for r in rows:  # columns as wide as their widest entry
    tail = (f"mse {r['mse']:.4f}  codes {r['codes_used']}" if r["mse"] is not None
            else "(not trained)")
    print(f"{r['name']:{name_width}s}  {r['description']:{description_width}s}  {tail}")


def _model_dataset(model, spec: str) -> str | None:
  """The TFDS dataset a model is measured on: the zoo's, else the one its card names."""
  from vqzoo.pretrained import registry
  from vqzoo.pretrained.cards import HUB_DATASET_IDS
  if "zoo" in model.source:
    return registry.get_entry(model.source["zoo"]).eval_dataset
  if model.card:
    from huggingface_hub import ModelCard
    try:
      named = ModelCard(model.card).data.datasets or []
    except Exception:  # a card without valid front matter names nothing
      named = []
    by_hub_id = {v: k for k, v in HUB_DATASET_IDS.items()}
    for dataset in named:
      if dataset in by_hub_id or dataset in HUB_DATASET_IDS:
        return by_hub_id.get(dataset, dataset)
  return None


def cmd_info(args):
  from vqzoo.pretrained import registry
  model = _load(args.name)
  info = {"model": args.name, "source": model.source, "config": model.config.to_dict(),
          "parameters": model.num_parameters,
          "prior": None if model.prior is None else model.prior.to_dict()}
  if "zoo" in model.source:
    entry = registry.get_entry(model.source["zoo"])
    info.update(description=entry.description, recipe=entry.recipe.to_dict(), bar=entry.bar,
                metrics=entry.metrics, pins=dict(entry.weights.files))
  if args.json:
    print(json.dumps(info, indent=2, default=str))
    return
  q = model.config.quantizer
  print(f"{args.name}: {info.get('description', model.config.arch + ' VQ-VAE')}")
  print(f"  {model.config.arch}, images {'x'.join(map(str, model.config.image_shape))}, "
        f"K={q.num_embeddings} D={q.embedding_dim} {'EMA' if q.ema else 'plain'} codebook, "
        f"{model.num_parameters:,} parameters")
  print(f"  prior: {'none' if model.prior is None else model.prior.kind}")
  print(f"  source: {json.dumps(model.source, default=str)}")
  if "metrics" in info and info["metrics"]:
    m = info["metrics"]
    print(f"  test MSE {m['mse']:.5f}, PSNR {m['psnr']:.2f} dB, codes used {m['codes_used']}")


def cmd_reconstruct(args):
  from vqzoo.grid import save_comparison
  model = _load(args.name)
  _check_image_flags(args, bool(args.input) and not args.input.lower().endswith(".npy"))
  if args.input:
    images = _read_input(args.input, model.config.image_shape, args.convert, args.resize)
    if os.path.isdir(args.input):
      images = images[:args.count]  # the first --count files, sorted by path
  elif args.dataset or tuple(model.config.image_shape) != DIGITS_SHAPE:
    from vqzoo.training.data import load_images
    dataset = args.dataset or _model_dataset(model, args.name)
    if dataset is None:
      shape = "x".join(map(str, model.config.image_shape))
      raise ValueError(f"{args.name} reads {shape} images, not the bundled 28x28 grey MNIST "
                       "digits, and names no dataset: pass --input or --dataset")
    images = _first(load_images(dataset, args.split, args.data_dir), args.count,
                    f"{dataset} {args.split}")
  else:
    images = _first(_bundled_digits(), args.count, "the bundled MNIST digits")
  x = model.preprocess(images)
  recon = model.reconstruct(x)
  save_comparison(args.out, x, recon)
  s = {**_summary(model, x, recon), "grid": str(args.out)}
  _emit(args, s, f"{s['images']} images: MSE {s['mse']:.5f}, PSNR {s['psnr']:.2f} dB, "
                 f"{s['codes_used']} codes used; grid (originals above reconstructions): "
                 f"{args.out}")


def _first(images: np.ndarray, count: int, what: str) -> np.ndarray:
  if count > len(images):
    raise ValueError(f"--count {count}: {what} hold {len(images)} images; expected --count <= "
                     f"{len(images)}")
  return images[:count]


def _eval_summary(metrics: dict) -> str:
  """One line of :func:`~vqzoo.training.metrics.evaluate`'s metrics (a residual model's per
  stage too)."""
  line = (f"MSE {metrics['mse']:.5f}, PSNR {metrics['psnr']:.2f} dB, perplexity "
          f"{metrics['perplexity']:.1f}, codes used {metrics['codes_used']}")
  if "perplexity_by_stage" in metrics:
    line += (" (stages pooled; each stage's own: perplexity "
             + "/".join(f"{p:.1f}" for p in metrics["perplexity_by_stage"]) + ", codes used "
             + "/".join(map(str, metrics["codes_used_by_stage"])) + ")")
  return line


def cmd_eval(args):
  from vqzoo.training.data import load_images
  from vqzoo.training.metrics import evaluate
  _check_image_flags(args, bool(args.images))
  model = _load(args.name)
  if args.images:
    from vqzoo.image_folder import load_image_folder
    images, _ = load_image_folder(args.images, model.config.image_shape, args.convert,
                                  args.resize)
    metrics = evaluate(model.config, model.params, model.state, images)
    _emit(args, {"model": args.name, "images_dir": args.images,
                 "conversion": _conversion(args), **metrics},
          f"{args.name} on the images of {args.images} ({metrics['num_images']} images): "
          f"{_eval_summary(metrics)}")
    return 0
  dataset = args.dataset or _model_dataset(model, args.name)
  if dataset is None:
    raise ValueError(f"{args.name}: neither the zoo nor its model card names a dataset; say "
                     "which one to measure it on with --dataset or --images")
  images = load_images(dataset, args.split, args.data_dir)
  metrics = evaluate(model.config, model.params, model.state, images)
  _emit(args, {"model": args.name, "dataset": dataset, "split": args.split, **metrics},
        f"{args.name} on {dataset} {args.split} ({metrics['num_images']} images): "
        f"{_eval_summary(metrics)}")
  if args.check_bar and "zoo" in model.source:
    failures = registry_entry(model).check_bar(metrics)
    if failures:
      print(f"{args.name} misses its bar: {'; '.join(failures)}", file=sys.stderr)
      return 1
  return 0


def registry_entry(model):
  from vqzoo.pretrained import registry
  return registry.get_entry(model.source["zoo"])


def cmd_push(args):
  model = _load(args.dir)
  info = model.push_to_hub(args.repo_id, commit_message=args.message, private=args.private)
  payload = {"repo_id": args.repo_id, "commit": getattr(info, "oid", None),
             "url": str(getattr(info, "commit_url", info))}
  _emit(args, payload, f"pushed {args.dir} to {args.repo_id} at commit {payload['commit']}; "
                       f"load it with vqzoo.load('hf-hub:{args.repo_id}@{payload['commit']}')")


def cmd_pull(args):
  model = _load(args.repo if args.repo.startswith("hf-hub:") else "hf-hub:" + args.repo)
  if args.out:
    model.save_pretrained(args.out)
  _emit(args, {"repo": args.repo, **model.source, "saved_to": args.out},
        f"pulled {args.repo} (commit {model.source.get('commit')}, manifest sha256 "
        f"{model.source.get('manifest_sha256')})" + (f" into {args.out}" if args.out else ""))


def cmd_demo(args):
  from vqzoo.grid import make_grid, save_png
  digits = _bundled_digits()
  x = uint8_to_float(digits)
  rows = [x]
  for name in DEMO_MODELS:
    model = _load(name)
    recon = model.reconstruct(digits)
    rows.append(recon)
    s = _summary(model, digits, recon)
    print(f"{name:16s} MSE {s['mse']:.5f}  PSNR {s['psnr']:.2f} dB  codes used {s['codes_used']}"
          f"  ({s['images']} bundled MNIST test digits)")
  per_row = 16
  grid = [row for chunks in zip(*(_rows(r, per_row) for r in rows)) for row in chunks]
  sampled = []
  for name in DEMO_MODELS:  # samples from each model's class-conditional prior, digits 0-9 in turn
    model = _load(name)
    if model.prior is not None:
      labels = np.arange(len(x)) % 10 if model.prior.num_classes else None
      samples = model.sample(len(x), seed=0, label=labels)
      grid += _rows(samples, per_row)
      sampled.append(name)
  save_png(args.out, make_grid(grid))
  print(f"grid: {args.out} (rows: originals, {', '.join(DEMO_MODELS)}"
        + (f"; then samples of {', '.join(sampled)}, digits 0-9 in turn" if sampled else "")
        + f"; {per_row} images a row)")


def _base_arch(base: str) -> str | None:
  """The architecture of a zoo name or a model directory, read without touching a device."""
  from vqzoo.pretrained import registry
  if base in registry.list_models():
    return registry.get_entry(base).config.arch
  try:
    return json.loads((Path(base) / "config.json").read_text()).get("arch")
  except (OSError, ValueError, AttributeError):
    return None  # a Hub model: the default for an unknown architecture


def cmd_finetune(args):
  from vqzoo import cli_devices
  from vqzoo.configs import FinetuneConfig
  from vqzoo.training import distributed
  from vqzoo.training.finetuning import finetune
  _check_image_flags(args, bool(args.images))
  multi_process = cli_devices.start_from_flags(args, _base_arch(args.base))  # before any device
  _check_model_out(args.out)
  config = FinetuneConfig(
      recipe=_recipe(args, args.dataset or "image-folder"), eval_split=args.eval_split,
      holdout_fraction=args.holdout_fraction, freeze=tuple(args.freeze),
      reseed_before=args.reseed_before, reseed_threshold=args.reseed_threshold)
  run = _run_config(args, checkpoint_every=500)
  # A failed process of a multi-process run exits now, not at JAX's exit-time barrier.
  with cli_devices.fail_fast(multi_process, prog="vqzoo finetune"):
    result = finetune(args.base, args.out, config, dataset=args.dataset, images_dir=args.images,
                      data_dir=args.data_dir, workdir=args.workdir, run=run,
                      push_to_hub=args.push_to_hub, convert=args.convert, resize=args.resize)
  if not distributed.is_main_process():
    return 0  # process 0 reports
  before, after = result.metrics_before, result.metrics_after
  _emit(args, {"out": args.out, "before": before, "after": after},
        f"fine-tuned {args.base} into {args.out}: held-out MSE {before['mse']:.5f} -> "
        f"{after['mse']:.5f}, PSNR {before['psnr']:.2f} -> {after['psnr']:.2f} dB, codes used "
        f"{before['codes_used']} -> {after['codes_used']}")


def cmd_sample(args):
  from vqzoo.grid import make_grid, save_png
  from vqzoo.sampling import sample_images
  model = _load(args.name)
  label = args.label
  images = sample_images(model, args.n, seed=args.seed, temperature=args.temperature,
                         label=label, progress=not args.no_progress)
  save_png(args.out, make_grid(_rows(images, args.per_row)))
  print(f"{args.n} samples of {args.name} (seed {args.seed}, temperature {args.temperature}"
        + (f", label {label}" if label is not None else "") + f"): {args.out}")


def _check_model_out(out: str) -> None:
  """Before any training: ``out`` is a folder a saved model may replace."""
  from vqzoo.folders import check_replaceable
  from vqzoo.pretrained.saving import replaceable
  check_replaceable(out, replaceable)


def cmd_fit_prior(args):
  _check_image_flags(args, bool(args.images))
  _check_model_out(args.out)
  from vqzoo.pretrained.registry import PRIOR_RECIPE
  from vqzoo.training.prior_fitting import fit_model_prior
  recipe = dataclasses.replace(
      PRIOR_RECIPE, dataset=args.dataset or "image-folder", split=args.split, steps=args.steps,
      batch_size=args.batch_size, learning_rate=args.lr,
      warmup_steps=min(PRIOR_RECIPE.warmup_steps, args.steps - 1), seed=args.seed)
  run = _run_config(args, checkpoint_every=500, log_every=100)
  _, metrics = fit_model_prior(args.name, args.out, recipe, dataset=args.dataset,
                               images_dir=args.images, data_dir=args.data_dir,
                               eval_split=args.eval_split,
                               conditional=not args.unconditional, hidden=args.hidden,
                               num_layers=args.layers, workdir=args.workdir, run=run,
                               convert=args.convert, resize=args.resize,
                               mirrored=args.mirror)
  _emit(args, {"out": args.out, **metrics},
        f"prior saved with the model in {args.out}: {metrics['eval_split']} "
        f"{metrics['prior_bits']:.1f} bits per "
        f"image (unigram {metrics['unigram_bits']:.1f}, uniform {metrics['uniform_bits']:.1f})")


def _source_images(args, image_shape):
  """``(images, labels or None, names or None)`` from --dataset NAME[:split] or --images DIR."""
  if args.images:
    from vqzoo.image_folder import load_image_folder
    images, paths = load_image_folder(args.images, image_shape, args.convert, args.resize)
    return images, None, [os.path.relpath(p, args.images) for p in paths]
  from vqzoo.training.data import load_images, load_labels
  name, _, split = args.dataset.partition(":")
  split = split or "test"
  return load_images(name, split, args.data_dir), load_labels(name, split, args.data_dir), None


def cmd_encode(args):
  from vqzoo.pretrained.tokenizing import encode_to_file
  _check_image_flags(args, bool(args.images))
  model = _load(args.name)
  images, labels, names = _source_images(args, model.config.image_shape)
  summary = encode_to_file(model, args.name, images, args.out, labels=labels, names=names,
                           progress=not args.no_progress,
                           conversion=_conversion(args) if args.images else None)
  _emit(args, summary, f"encoded {summary['images']} images with {args.name} to {args.out}: "
                       f"codes {summary['codes_shape']}, {summary['codes_used']} distinct")


def cmd_decode(args):
  from vqzoo import decoded_images
  from vqzoo.grid import make_grid
  from vqzoo.io import atomic_write_bytes
  from vqzoo.pretrained.tokenizing import decode_file
  model = _load(args.name)
  images, content = decode_file(model, args.codes, progress=not args.no_progress)
  names = content.get("names")
  out = Path(args.out)
  grid = out.suffix.lower() == ".png"
  files, renamed = ([out], []) if grid else decoded_images.file_names(names, len(images))
  paths = files if grid else [out / name for name in files]
  decoded_images.check_targets(paths, names, args.overwrite)
  if grid:
    atomic_write_bytes(out, decoded_images.png_bytes(make_grid(_rows(images))))
  else:
    out.mkdir(parents=True, exist_ok=True)
    for path, image in zip(paths, images):
      atomic_write_bytes(path, decoded_images.png_bytes(make_grid([image[None]], pad=0, scale=1)))
  if renamed:
    shown = ", ".join(f"{a} -> {b}" for a, b in renamed[:3])
    print(f"vqzoo decode: note: {len(renamed)} images would have shared a file name with "
          f"another, so they got their own: {shown}{', ...' if len(renamed) > 3 else ''}",
          file=sys.stderr)
  _emit(args, {"out": str(out), "images": int(len(images)),
               "renamed": [{"from": a, "to": b} for a, b in renamed]},
        f"decoded {len(images)} images to {out}" + ("" if grid else f" ({len(images)} files)"))


def _rows(images, per_row: int = 16) -> list:
  """``images`` ``[N, ...]`` cut into grid rows of ``per_row`` (the last may be shorter)."""
  return [images[i:i + per_row] for i in range(0, len(images), per_row)]


def _emit(args, payload: dict, text: str) -> None:
  print(json.dumps(payload, indent=2) if getattr(args, "json", False) else text)


def _args_list(p) -> None:
  p.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'mnist-*' (default: all)")


def _args_info(p) -> None:
  p.add_argument("name", help=SPEC_HELP)


def _args_reconstruct(p) -> None:
  p.add_argument("name", help=SPEC_HELP)
  src = p.add_mutually_exclusive_group()
  src.add_argument("--input", help="a PNG/JPEG image, a folder of them, or a .npy array of "
                                   "images (image files: see --convert and --resize)")
  src.add_argument("--dataset", help="TFDS dataset name, e.g. cifar10 (default: the bundled "
                                     "MNIST digits for a 28x28 grey model, else the model's "
                                     "own dataset, e.g. cifar10 for a CIFAR-10 model)")
  p.add_argument("--split", default="test", help="TFDS split (default test)")
  p.add_argument("--count", type=_int_in(1, MAX_COUNT), default=16,
                 help=f"images to reconstruct from a dataset or the 32 bundled digits, 1 to "
                      f"{MAX_COUNT} and at most as many as there are; from an --input folder, "
                      "its first COUNT files by path (default 16)")
  p.add_argument("--data-dir", help=DATA_DIR_HELP)
  p.add_argument("--out", default="reconstruction.png",
                 help="grid image, .png or .jpg (default reconstruction.png)")
  _image_flags(p)


def _args_eval(p) -> None:
  p.add_argument("name", help=SPEC_HELP)
  src = p.add_mutually_exclusive_group()
  src.add_argument("--dataset",
                   help="TFDS dataset (default: the zoo's, or the one the card names)")
  src.add_argument("--images", help="folder of PNG/JPEG images to measure the model on")
  p.add_argument("--split", default="test", help="TFDS split (default test)")
  p.add_argument("--data-dir", help=DATA_DIR_HELP)
  p.add_argument("--check-bar", action="store_true",
                 help="zoo models: exit 1 when the measurement misses the variant's bar")
  _image_flags(p)


def _args_push(p) -> None:
  p.add_argument("dir", help="a directory written by save_pretrained (or any model spec)")
  p.add_argument("repo_id", help="owner/name on the Hub")
  p.add_argument("--message", default="Upload vqzoo model",
                 help="commit message (default 'Upload vqzoo model')")
  p.add_argument("--private", action="store_true", help="create the repo private")


def _args_pull(p) -> None:
  p.add_argument("repo", help="owner/name[@rev] or hf-hub:owner/name[@rev][#sha256=DIGEST]")
  p.add_argument("--out", help="also save it to this directory")


def _args_demo(p) -> None:
  p.add_argument("--out", default="vqzoo_demo.png", help="grid image (default vqzoo_demo.png)")


def _args_encode(e) -> None:
  e.add_argument("name", help="zoo name, hf-hub:owner/repo[@rev] or a path")
  src = e.add_mutually_exclusive_group(required=True)
  src.add_argument("--dataset", help="TFDS dataset, NAME[:split] (default split: test)")
  src.add_argument("--images", help="folder of PNG/JPEG images")
  e.add_argument("--out", required=True, help="codes file to write (.npz)")
  _image_flags(e)
  e.add_argument("--data-dir", help=DATA_DIR_HELP)
  e.add_argument("--no-progress", action="store_true", help="no progress bar")


def _args_decode(d) -> None:
  d.add_argument("name", help="the model that made the codes")
  d.add_argument("codes", help="codes file written by `vqzoo encode`")
  d.add_argument("--out", required=True,
                 help="a folder (one PNG per image, named after its source file; names that "
                      "would collide get -2, -3...) or a grid .png")
  d.add_argument("--overwrite", action="store_true",
                 help="replace files already in --out (never the images that were encoded)")
  d.add_argument("--no-progress", action="store_true", help="no progress bar")


def _args_sample(s) -> None:
  s.add_argument("name", help="zoo name, hf-hub:owner/repo[@rev] or a path")
  s.add_argument("--n", type=_int_in(1, MAX_SAMPLES), default=64,
                 help=f"number of samples, 1 to {MAX_SAMPLES} (default 64)")
  s.add_argument("--label", type=int, help="class to draw (class-conditional priors; default: "
                                           "drawn at random)")
  s.add_argument("--temperature", type=float, default=1.0,
                 help="divides the prior's logits; 0 = most likely codes (default 1.0)")
  s.add_argument("--seed", type=_seed, default=0, help=SEED_HELP.format(0))
  s.add_argument("--per-row", type=_positive_int, default=16, help="images per row (default 16)")
  s.add_argument("--out", default="samples.png", help="PNG to write (default samples.png)")
  s.add_argument("--no-progress", action="store_true", help="no progress bar")


def _args_fit_prior(f) -> None:
  f.add_argument("name", help="zoo name, hf-hub:owner/repo[@rev] or a path (e.g. a fine-tune)")
  f.add_argument("--out", required=True, help="output model directory (model + prior)")
  src = f.add_mutually_exclusive_group(required=True)
  src.add_argument("--dataset", help="TFDS dataset whose codes (and labels) to fit")
  src.add_argument("--images", help="folder of PNG/JPEG images (unconditional prior)")
  _image_flags(f)
  f.add_argument("--split", default="train", help="TFDS split to fit (default train)")
  f.add_argument("--eval-split", default="test",
                 help="TFDS split the prior is measured on (default test)")
  f.add_argument("--unconditional", action="store_true", help="ignore the dataset's labels")
  f.add_argument("--mirror", action="store_true",
                 help="also fit the codes of the images mirrored left-right (twice the data)")
  from vqzoo.pretrained.registry import PRIOR_HIDDEN, PRIOR_LAYERS, PRIOR_RECIPE as r
  f.add_argument("--steps", type=_positive_int, default=r.steps, help=f"default {r.steps}")
  f.add_argument("--batch-size", type=_positive_int, default=r.batch_size,
                 help=f"default {r.batch_size}")
  f.add_argument("--lr", type=float, default=r.learning_rate,
                 help=f"peak learning rate (default {r.learning_rate})")
  f.add_argument("--hidden", type=_positive_int, default=PRIOR_HIDDEN,
                 help=f"PixelCNN channels (default {PRIOR_HIDDEN})")
  f.add_argument("--layers", type=int, default=PRIOR_LAYERS,
                 help=f"PixelCNN gated layers (default {PRIOR_LAYERS})")
  f.add_argument("--seed", type=_seed, default=r.seed, help=SEED_HELP.format(r.seed))
  _run_args(f)
  f.add_argument("--data-dir", help=DATA_DIR_HELP)


def _args_finetune(p) -> None:
  from vqzoo.configs import PARTS, FinetuneConfig
  from vqzoo.image_folder import FOLDER_RULE
  d = FinetuneConfig()
  p.description = ("Fine-tune a pretrained VQ-VAE on a TFDS dataset or a folder of images.\n\n"
                   "Image folders: " + FOLDER_RULE + ".")
  p.formatter_class = argparse.RawDescriptionHelpFormatter
  p.add_argument("--from", dest="base", required=True,
                 help="zoo name, hf-hub:owner/repo[@rev] or a model directory")
  p.add_argument("--out", required=True, help="output model directory")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--dataset", help="TFDS dataset name, e.g. fashion_mnist")
  src.add_argument("--images", help="folder of PNG/JPEG images")
  _image_flags(p)
  _recipe_args(p, d.recipe)
  p.add_argument("--eval-split", default=d.eval_split,
                 help=f"TFDS held-out split (default {d.eval_split})")
  p.add_argument("--holdout-fraction", type=float, default=d.holdout_fraction,
                 help=f"share of an image folder held out for evaluation "
                      f"(default {d.holdout_fraction})")
  p.add_argument("--freeze", action="append", default=[], choices=PARTS,
                 help="part that does not train (repeatable)")
  p.add_argument("--reseed-before", action="store_true",
                 help="re-seed codes unused on the training data before training")
  p.add_argument("--reseed-threshold", type=float, default=None,
                 help="re-seed codes used less than this (vectors per batch) while training; "
                      "0 turns re-seeding off (default: the base model's own threshold)")
  _run_args(p)
  p.add_argument("--data-dir", help=DATA_DIR_HELP)
  p.add_argument("--push-to-hub", metavar="REPO_ID", help="publish the result")
  from vqzoo import cli_devices
  cli_devices.add_flags(p)


def _recipe_args(p, r) -> None:
  """The optimiser and data-order flags of a :class:`~vqzoo.TrainConfig`, defaults from ``r``."""
  from vqzoo.configs import SCHEDULES
  p.add_argument("--split", default=r.split, help=f"TFDS training split (default {r.split})")
  p.add_argument("--steps", type=_positive_int, default=r.steps, help=f"default {r.steps}")
  p.add_argument("--batch-size", type=_positive_int, default=r.batch_size,
                 help=f"default {r.batch_size}")
  p.add_argument("--lr", type=float, default=r.learning_rate,
                 help=f"peak learning rate (default {r.learning_rate})")
  p.add_argument("--schedule", choices=SCHEDULES, default=r.schedule,
                 help=f"after the warm-up (default {r.schedule})")
  p.add_argument("--warmup-steps", type=int, default=r.warmup_steps,
                 help=f"default {r.warmup_steps}")
  p.add_argument("--final-lr-fraction", type=float, default=r.final_lr_fraction,
                 help=f"default {r.final_lr_fraction}")
  p.add_argument("--seed", type=_seed, default=r.seed, help=SEED_HELP.format(r.seed))


def _recipe(args, dataset: str):
  """The :class:`~vqzoo.TrainConfig` of :func:`_recipe_args`' flags."""
  from vqzoo.configs import TrainConfig
  return TrainConfig(dataset=dataset, split=args.split, steps=args.steps,
                     batch_size=args.batch_size, learning_rate=args.lr, schedule=args.schedule,
                     warmup_steps=args.warmup_steps, final_lr_fraction=args.final_lr_fraction,
                     seed=args.seed)


def _run_args(p) -> None:
  """The workdir flags of every training command (the one resume rule)."""
  p.add_argument("--workdir", help="checkpoints and metrics (default OUT.work)")
  p.add_argument("--resume", action="store_true", help="continue from the workdir checkpoint")
  p.add_argument("--overwrite", action="store_true",
                 help="start afresh over an earlier run's checkpoint in the workdir")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_config(args, **kwargs):
  """The :class:`~vqzoo.RunConfig` of :func:`_run_args`' flags."""
  from vqzoo.configs import RunConfig
  return RunConfig(resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                   **kwargs)


def _args_train(p) -> None:
  from vqzoo.configs import ARCHITECTURES, TrainConfig
  from vqzoo.image_folder import FOLDER_RULE
  p.description = ("Train a new VQ-VAE from scratch on a TFDS dataset or a folder of images, "
                   "from a model config file or from flags; the result is a model directory "
                   "with a card, loadable by vqzoo.load(OUT).\n\nImage folders: "
                   + FOLDER_RULE + ".")
  p.formatter_class = argparse.RawDescriptionHelpFormatter
  p.add_argument("--out", required=True, help="output model directory")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--dataset", help="TFDS dataset name, e.g. fashion_mnist")
  src.add_argument("--images", help="folder of PNG/JPEG images")
  _image_flags(p)
  model = p.add_argument_group("the model (a --config file, or these flags)")
  model.add_argument("--config", help="a JSON ModelConfig (e.g. a saved model's config.json)")
  model.add_argument("--arch", choices=ARCHITECTURES, default="conv", help="default conv")
  model.add_argument("--image-shape", default="28x28x1",
                     help="HxWxC of the images, e.g. 32x32x3 (default 28x28x1)")
  model.add_argument("--num-embeddings", type=_positive_int, default=128,
                     help="K, codes in the codebook (default 128)")
  model.add_argument("--embedding-dim", type=_positive_int, default=16,
                     help="D, size of each code (default 16)")
  model.add_argument("--hidden", type=_positive_int, default=64,
                     help="conv channels (default 64)")
  model.add_argument("--ema", action="store_true", help="EMA codebook (default: learnt)")
  model.add_argument("--dead-code-threshold", type=float, default=1.0,
                     help="re-seed codes used by fewer vectors per batch; 0 = off (default 1.0)")
  _recipe_args(p, TrainConfig(steps=2000, learning_rate=2e-3, warmup_steps=100,
                              final_lr_fraction=0.05))
  p.add_argument("--eval-split", default="test",
                 help="TFDS split the model is measured on (default test)")
  p.add_argument("--holdout-fraction", type=float, default=0.1,
                 help="share of an image folder held out to measure the model (default 0.1)")
  p.add_argument("--checkpoint-every", type=_positive_int, default=500,
                 help="steps between checkpoints (default 500)")
  _run_args(p)
  p.add_argument("--data-dir", help=DATA_DIR_HELP)


def _model_config(args):
  """The :class:`~vqzoo.ModelConfig` of ``vqzoo train``: a --config file, else the flags."""
  from vqzoo.configs import ConvConfig, ModelConfig, QuantizerConfig
  from vqzoo.training.from_scratch import read_model_config
  if args.config:
    return read_model_config(args.config)
  try:
    shape = tuple(int(v) for v in args.image_shape.lower().split("x"))
  except ValueError:
    shape = ()
  if len(shape) != 3:
    raise ValueError(f"--image-shape: expected HxWxC such as 28x28x1 or 32x32x3, got "
                     f"{args.image_shape!r}")
  quantizer = QuantizerConfig(num_embeddings=args.num_embeddings,
                              embedding_dim=args.embedding_dim, ema=args.ema,
                              dead_code_threshold=args.dead_code_threshold)
  conv = ConvConfig(num_hiddens=args.hidden) if args.arch == "conv" else None
  return ModelConfig(arch=args.arch, image_shape=shape, quantizer=quantizer, conv=conv)


def cmd_train(args):
  from vqzoo.training.from_scratch import train_new_model
  _check_image_flags(args, bool(args.images))
  _check_model_out(args.out)
  config = _model_config(args)
  result = train_new_model(
      config, _recipe(args, args.dataset or "image-folder"), args.out, images_dir=args.images,
      eval_split=args.eval_split, holdout_fraction=args.holdout_fraction,
      data_dir=args.data_dir, workdir=args.workdir,
      run=_run_config(args, checkpoint_every=args.checkpoint_every), convert=args.convert,
      resize=args.resize)
  m = result.metrics
  _emit(args, {"out": args.out, "config": config.to_dict(), **m},
        f"trained {args.out}: MSE {m['mse']:.5f}, PSNR {m['psnr']:.2f} dB, perplexity "
        f"{m['perplexity']:.1f}, codes used {m['codes_used']} of "
        f"{config.quantizer.num_embeddings}; load it with vqzoo.load({args.out!r})")


MAX_SAMPLES = 10_000  # `vqzoo sample --n`: a 100x100 grid
MAX_COUNT = 1024  # `vqzoo reconstruct --count`: 64 row pairs
SEED_HELP = "an integer from 0 to 2**32-1 (default {})"


def _int_in(low: int, high: int):
  """An argparse type: an integer in ``[low, high]``."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      value = None
    if value is None or not low <= value <= high:
      raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {text!r}")
    return value
  return parse


_seed = _int_in(0, 2**32 - 1)


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
  return value


EXIT_CODES = ("exit status: 0 done; 1 a quality bar was missed (only `vqzoo eval --check-bar`); "
              "2 a usage or input error, a failed integrity check or an unreachable Hub (one "
              "line on stderr, no traceback); 141 the reader of the output went away (as in "
              "`vqzoo list | head -1`), quietly")
SPEC_HELP = "zoo name, hf-hub:owner/repo[@rev][#sha256=DIGEST], or a path (./dir)"
DATA_DIR_HELP = "TFDS data directory (default $TFDS_DATA_DIR)"


class _Parser(argparse.ArgumentParser):
  """Usage errors in one line (status 2), like every other error of the command."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


@dataclasses.dataclass(frozen=True)
class Command:
  """A subcommand: its name, one-line help, argument definitions and the function it runs."""

  name: str
  help: str
  add_arguments: Callable[[argparse.ArgumentParser], None]
  run: Callable[[argparse.Namespace], Any]


COMMANDS = (
    Command("list", "list zoo models", _args_list, cmd_list),
    Command("info", "config, source, digests, size and metrics of a model", _args_info, cmd_info),
    Command("reconstruct", "write an image grid: originals above reconstructions",
            _args_reconstruct, cmd_reconstruct),
    Command("eval", "measure a model on a full split", _args_eval, cmd_eval),
    Command("push", "push a saved model directory to the Hub", _args_push, cmd_push),
    Command("pull", "download and verify a model from the Hub", _args_pull, cmd_pull),
    Command("demo", "reconstruct and sample with two zoo models, offline", _args_demo, cmd_demo),
    Command("train", "train a new model from scratch on a TFDS dataset or a folder of images",
            _args_train, cmd_train),
    Command("finetune", "fine-tune a model on a TFDS dataset or a folder of images",
            _args_finetune, cmd_finetune),
    Command("fit-prior", "fit a prior over a model's codes (to sample from it)", _args_fit_prior,
            cmd_fit_prior),
    Command("sample", "draw images from a model's prior into a PNG grid", _args_sample,
            cmd_sample),
    Command("encode", "encode a dataset or a folder of images to a codes file", _args_encode,
            cmd_encode),
    Command("decode", "decode a codes file (made by the same model) to images", _args_decode,
            cmd_decode),
)


def build_parser() -> argparse.ArgumentParser:
  from vqzoo._version import __version__
  p = _Parser(prog="vqzoo", description="A model zoo of VQ-VAEs in JAX/haiku.",
              epilog=EXIT_CODES)
  p.add_argument("--version", action="version", version=f"vqzoo {__version__}")
  sub = p.add_subparsers(dest="command", required=True)
  output = argparse.ArgumentParser(add_help=False)  # every subcommand: JSON on request
  output.add_argument("--json", action="store_true", help="print the result as JSON (default: text)")
  for command in COMMANDS:
    s = sub.add_parser(command.name, help=command.help, parents=[output], epilog=EXIT_CODES)
    command.add_arguments(s)
    s.set_defaults(fn=command.run)
  return p


def _missing_extra(error: ImportError) -> str:
  import importlib.util
  editable = importlib.util.find_spec("vqzoo") is not None and Path(
      __file__).resolve().parent.parent.joinpath("pyproject.toml").exists()
  install = "pip install -e '.[data]'" if editable else "pip install 'vqzoo[data]'"
  return (f"this needs the optional data dependencies ({error.name or error}): {install}")


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  import warnings
  from vqzoo import compilation_cache
  compilation_cache.enable()  # the command's own process: each step compiles once, ever
  shown_by_python = warnings.showwarning
  warnings.showwarning = _one_line_warnings(args.command, shown_by_python)
  try:
    status = args.fn(args) or 0
    sys.stdout.flush()  # a reader that went away shows here, not at exit
    return status
  except BrokenPipeError:
    return _reader_gone()
  except ImportError as e:
    print(f"vqzoo {args.command}: error: {_missing_extra(e)}", file=sys.stderr)
    return 2
  except (ValueError, KeyError, OSError, FloatingPointError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"vqzoo {args.command}: error: {message}", file=sys.stderr)
    return 2
  finally:
    warnings.showwarning = shown_by_python


def _one_line_warnings(command: str, default: Callable) -> Callable:
  """A ``warnings.showwarning`` printing vqzoo's own warnings as ``vqzoo CMD: warning: ...``.

  A warning raised inside the library (skipped image files, a prior worse than its baseline,
  a recipe that does not fit its data) is a message to the user, not a Python location; other
  packages' warnings go to ``default``.
  """
  package = str(Path(__file__).resolve().parent)

  def show(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, UserWarning) and str(Path(filename).resolve()).startswith(package):
      print(f"vqzoo {command}: warning: {message}", file=sys.stderr if file is None else file)
    else:
      default(message, category, filename, lineno, file, line)

  return show


def _reader_gone() -> int:
  """stdout's reader went away (``vqzoo list | head -1``): stop quietly, as the Python docs
  recommend, with the status a shell gives a program its SIGPIPE ended."""
  try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again
    os.close(devnull)
  except (OSError, ValueError):  # a stdout without a file descriptor: nothing to redirect
    pass
  return 128 + 13


if __name__ == "__main__":
  sys.exit(main())
