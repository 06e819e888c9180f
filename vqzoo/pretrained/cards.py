"""Model cards in the Hugging Face format (YAML front matter + Markdown)."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from vqzoo.configs import ModelConfig, TrainConfig

DATASET_CREDITS = {
    "mnist": ("MNIST", "Y. LeCun, C. Cortes and C. J. C. Burges", "cc-by-sa-3.0",
              "CC BY-SA 3.0"),
    "fashion_mnist": ("Fashion-MNIST", "H. Xiao, K. Rasul and R. Vollgraf (Zalando Research)",
                      "mit", "MIT"),
    # The CIFAR-10 page states no licence (the Hub's copy says "unknown").
    "cifar10": ("CIFAR-10", "A. Krizhevsky (2009, University of Toronto)", "unknown", None),
}
HUB_DATASET_IDS = {"mnist": "ylecun/mnist", "fashion_mnist": "zalando-datasets/fashion_mnist",
                   "cifar10": "uoft-cs/cifar10"}

METRIC_ROWS = (("mse", "MSE (per pixel, [0, 1] scale)", "{:.5f}"),
               ("nmse", "NMSE (MSE / variance of the split's pixels)", "{:.4f}"),
               ("psnr", "PSNR (dB)", "{:.2f}"),
               ("perplexity", "Perplexity", "{:.1f}"), ("codes_used", "Codes used", "{:d}"),
               ("bits_per_image", "Bits per image", "{:.0f}"))


def _front_matter(name: str, dataset: str | None, metrics: Mapping[str, Any] | None,
                  held_out: int | None = None, base_datasets: Sequence[str] = ()) -> str:
  lines = ["---", "library_name: vqzoo", "license: apache-2.0",
           "tags:", "- vq-vae", "- jax", "- haiku", "- vqzoo", "- image-reconstruction"]
  named = list(dict.fromkeys(d for d in (dataset, *base_datasets) if d))
  if named:
    lines += ["datasets:", *(f"- {HUB_DATASET_IDS.get(d, d)}" for d in named)]
  if metrics:
    if dataset:
      data = [f"      type: {HUB_DATASET_IDS.get(dataset, dataset)}",
              f"      name: {json.dumps(DATASET_CREDITS.get(dataset, (dataset,))[0])}",
              "      split: test"]
    else:  # an image folder: its held-out images
      data = ["      type: image-folder",
              f"      name: {json.dumps(f'image folder, {held_out} held-out images')}",
              "      split: held-out"]
    lines += ["model-index:", f"- name: {name}", "  results:", "  - task:",
              "      type: image-to-image", "      name: Image reconstruction", "    dataset:",
              *data, "    metrics:"]
    for key, label, _ in METRIC_ROWS:
      if key in metrics:
        lines += [f"    - type: {key}", f"      name: {json.dumps(label)}",
                  f"      value: {metrics[key]}"]
  return "\n".join(lines + ["---", ""])


def metrics_table(metrics: Mapping[str, Any], columns: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> str:
  """A Markdown table of metrics (one column, or several named columns)."""
  columns = columns or {"value": metrics}
  out = ["| metric | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
  for key, label, fmt in METRIC_ROWS:
    if any(key in c for c in columns.values()):
      cells = [fmt.format(c[key]) if key in c else "" for c in columns.values()]
      out.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(out)


def _kind_of_images(image_shape: Sequence[int]) -> str:
  """``"32x32 colour images"`` for ``(32, 32, 3)``, ``"28x28 grayscale images"`` for one channel."""
  height, width, channels = image_shape
  return f"{height}x{width} {'colour' if channels == 3 else 'grayscale'} images"


def quantizer_summary(q: Any) -> str:
  """One line that describes a :class:`~vqzoo.configs.QuantizerConfig` by its kind and shape."""
  if q.kind == "fsq":
    return (f"finite scalar quantization (Mentzer et al. 2023), levels {list(q.levels)}: "
            f"{q.num_embeddings} implicit codes of D={q.embedding_dim}, no codebook")
  if q.kind == "lfq":
    return (f"lookup-free quantization (Yu et al. 2023), {q.embedding_dim} sign bits: "
            f"{q.num_embeddings} implicit codes, entropy weight {q.entropy_weight}, "
            f"beta={q.commitment_cost}")
  book = (f"codebook K={q.num_embeddings}, D={q.embedding_dim}, beta={q.commitment_cost}, "
          + (f"EMA (decay {q.decay}, epsilon {q.epsilon})" if q.ema
             else "learnt by the embedding loss")
          + (f", dead codes re-seeded below usage {q.dead_code_threshold}"
             if q.dead_code_threshold else ""))
  extras = [name for name, on in (("cosine (l2-normalised) codes", q.cosine),
                                  (f"lookup space of {q.lookup_dim}", q.lookup_dim),
                                  ("k-means initialisation", q.kmeans_init),
                                  ("rotation-trick gradients",
                                   q.gradient_estimator == "rotation")) if on]
  book += "".join(f", {e}" for e in extras)
  if q.kind == "rvq":
    return (f"residual VQ (Zeghidour et al. 2021), {q.num_stages} stages, each a {book}; "
            f"quantizer dropout {q.quantizer_dropout} (decodes at any depth 1..{q.num_stages})")
  return book


def render_card(name: str, config: ModelConfig, description: str = "",
                recipe: TrainConfig | None = None, metrics: Mapping[str, Any] | None = None,
                dataset: str | None = None, lineage: Mapping[str, Any] | None = None,
                extra_sections: Mapping[str, str] | None = None,
                held_out: int | None = None, load_spec: str | None = None,
                base_datasets: Sequence[str] = ()) -> str:
  """Renders a full model card for a vqzoo model.

  Args:
    name: the model's name (the card's title).
    config: the model.
    description: the card's first paragraph.
    recipe: the training recipe, if trained.
    metrics: reconstruction metrics (see :data:`METRIC_ROWS`).
    dataset: the TFDS dataset the metrics were measured on (its full test split); without
      one, ``held_out`` says how many held-out images of an image folder they come from.
    lineage: where the model came from (a JSON record).
    extra_sections: more sections, title -> Markdown.
    held_out: see ``dataset``.
    load_spec: what the usage snippet loads (default ``name``, a zoo name; a saved folder
      is ``"./NAME"``).
    base_datasets: TFDS datasets a base model was trained on, credited beside ``dataset``.
  """
  q = config.quantizer
  arch = ("MLP encoder/decoder " + f"{list(config.mlp.encoder_sizes)} / {list(config.mlp.decoder_sizes)}"
          if config.arch == "mlp" else
          f"conv encoder/decoder, {config.conv.num_hiddens} channels, "
          f"{config.conv.num_residual_layers} residual layers of {config.conv.num_residual_hiddens}")
  parts = [_front_matter(name, dataset, metrics, held_out, base_datasets), f"# {name}", "",
           description or
           "A VQ-VAE (van den Oord et al., 2017, arXiv:1711.00937) from vqzoo.", "",
           "## Architecture", "",
           f"- {arch}; input {'x'.join(map(str, config.image_shape))}, latent grid "
           f"{'x'.join(map(str, config.latent_shape)) or '1 code per image'}",
           f"- {quantizer_summary(q)}",
           f"- output activation: {config.output_activation}", "",
           "```json", json.dumps(config.to_dict(), indent=2), "```", ""]
  if recipe is not None:
    parts += ["## Training recipe", "", "```json", json.dumps(recipe.to_dict(), indent=2), "```", ""]
  if lineage:
    parts += ["## Lineage", "", "```json", json.dumps(dict(lineage), indent=2, default=str), "```",
              ""]
  if metrics:
    where = ("the full test split" if dataset else
             f"the {held_out} images of the folder held out from training")
    parts += ["## Measured on the test split" if dataset else "## Measured on held-out images", "",
              f"Measured by `vqzoo eval` (code in `vqzoo/training/metrics.py`) on {where}; "
              "reconstructions clipped to [0, 1]; PSNR = 10 log10(1 / MSE); bits per image = "
              "latent positions x log2 K.", "", metrics_table(metrics), ""]
  for title, body in (extra_sections or {}).items():
    parts += [f"## {title}", "", body.strip(), ""]
  parts += ["## Usage", "", "```python", "import vqzoo",
            f'model = vqzoo.load("{load_spec or name}")',
            "codes = model.encode(images)   # uint8 or [0, 1] floats",
            "recon = model.decode(codes)", "```", "",
            "## Limitations", "",
            f"Trained on small {_kind_of_images(config.image_shape)}; reconstructions of other "
            "kinds of images will be poor. MSE is the only objective, so reconstructions are "
            "slightly blurry.", ""]
  credits = []
  if dataset in DATASET_CREDITS:
    title, authors, _, licence = DATASET_CREDITS[dataset]
    credits.append(f"{'Fine-tuned' if base_datasets else 'Trained'} and evaluated on {title} by "
                   f"{authors}, {_distributed(licence)}, read through TensorFlow Datasets.")
  for base in dict.fromkeys(base_datasets):
    if base in DATASET_CREDITS:
      title, authors, _, licence = DATASET_CREDITS[base]
      credits.append(f"The base model was trained on {title} by {authors}, "
                     f"{_distributed(licence)}, read through TensorFlow Datasets.")
  if credits:
    parts += ["## Data and credit", "", " ".join(credits), ""]
  return "\n".join(parts)


def card_datasets(card: str | None) -> list[str]:
  """The TFDS names of the datasets a card's front matter lists (known ones only)."""
  if not card:
    return []
  from huggingface_hub import ModelCard
  try:
    named = ModelCard(card).data.datasets or []
  except Exception:  # noqa: BLE001 - a card without valid front matter names nothing
    return []
  by_hub_id = {v: k for k, v in HUB_DATASET_IDS.items()}
  return [by_hub_id.get(d, d) for d in named if d in by_hub_id or d in HUB_DATASET_IDS]


def _distributed(licence: str | None) -> str:
  return (f"distributed under the {licence} licence" if licence
          else "distributed without a stated licence")


def prior_section(prior: Any, recipe: Any, m: Mapping[str, Any], per_stage: bool = False) -> str:
  """Markdown: what the prior is and how it was measured (``m`` from ``scripts/fit_prior.py``;
  ``per_stage``: a residual model's, whose unigram baseline counts each stage's own codes)."""
  kind = ("a gated PixelCNN over the code grid (van den Oord et al. 2016), "
          f"{prior.hidden} channels, {prior.num_layers} gated layers"
          if prior.kind == "pixelcnn" else "a categorical distribution over the one code per "
          "image, fitted exactly by counting (add-one smoothing)")
  cond = (f", conditioned on the {prior.num_classes} class labels" if prior.num_classes else "")
  fd = m["frechet"]
  lines = [
      f"The prior is {kind}{cond}, fitted to the codes of the training split"
      + (f" ({recipe.steps} Adam steps of batch {recipe.batch_size})"
         if prior.kind == "pixelcnn" else "") + ". "
      "`model.sample(n, label=...)` draws codes from it and decodes them.", "",
      "Negative log-likelihood of the test split's codes, bits per image (lower is better):", "",
      "| model of the codes | bits per image |", "| --- | ---: |",
      f"| this prior (given the true label) | {m['prior_bits']:.1f} |"]
  if "prior_bits_marginal" in m:
    lines.append(f"| this prior (label summed out) | {m['prior_bits_marginal']:.1f} |")
  unigram = "unigram code frequencies" + (" (each stage's own)" if per_stage else "")
  lines += [f"| {unigram} | {m['unigram_bits']:.1f} |",
            f"| uniform | {m['uniform_bits']:.1f} |", ""]
  if per_stage and "prior_bits_by_stage" in m:
    lines += ["By residual stage (the same bits, summed over the positions of one stage):", "",
              "| stage | this prior | unigram (the stage's own codes) | prior / unigram |",
              "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {n} | {bits:.1f} | {uni:.1f} | {bits / uni:.1%} |" for n, (bits, uni)
              in enumerate(zip(m["prior_bits_by_stage"], m["unigram_bits_by_stage"]), start=1)]
    lines.append("")
  lines += ["Classifier Fréchet distance to the test split, in the 128-d features of vqzoo's own "
            "small classifier for this dataset (`vqzoo/evaluation/frechet.py`; not FID, not "
            f"comparable with published FIDs), {m['num_images']:,} images each:", "",
            "| images | classifier Fréchet distance |", "| --- | ---: |",
            f"| samples from this prior | {fd['samples']:.2f} |",
            f"| training split (the floor) | {fd['train_split']:.2f} |",
            f"| reconstructions of the test split | {fd['reconstructions']:.2f} |",
            f"| samples of unigram codes | {fd['unigram_samples']:.2f} |", ""]
  if "class_accuracy" in m:
    per = m["class_accuracy_per_class"]
    lines += [f"Conditional samples assigned to the requested class by the same classifier: "
              f"{100 * m['class_accuracy']:.1f}% (per class: "
              + ", ".join(f"{c}: {100 * v:.1f}%" for c, v in sorted(per.items(), key=lambda kv:
                                                                      int(kv[0]))) + ").", ""]
  lines.append(f"Sampling 64 images took {m['sample_64_seconds']:.2f} s after compilation on "
               "the 2-core CPU that measured it.")
  return "\n".join(lines)


_BAR_TEXT = {"mse_max": "MSE ≤ {:g}", "nmse_max": "NMSE ≤ {:g}", "perplexity_min":
             "perplexity ≥ {:g}", "codes_used_min": "≥ {:g} codes"}


def bar_text(bar: Mapping[str, float], m: Mapping[str, Any] | None = None) -> str:
  """A quality bar (``{"mse_max": 0.002, ...}``) in words: ``MSE ≤ 0.002, ≥ 120 codes``; given
  the measured metrics ``m``, each condition they miss is marked ``(missed)``."""
  from vqzoo.pretrained.registry import bar_misses
  missed = bar_misses(bar, m) if m else []
  return ", ".join(_BAR_TEXT[k].format(v) + (" (missed)" if k in missed else "")
                   for k, v in bar.items())


def depth_section(config: Any, m: Mapping[str, Any]) -> str:
  """A residual model's test MSE when decoding the first 1..N stages (``mse_by_depth``), and
  each stage's own codes used and perplexity (``codes_used_by_stage``, ``perplexity_by_stage``,
  when measured)."""
  bits = math.prod(config.latent_shape) * math.log2(config.quantizer.num_embeddings)
  per_stage = "codes_used_by_stage" in m
  rows = ["Encode once, keep the first `n` stages of the codes (`codes[..., :n]`) and decode: "
          "one model, any of these rates. Test split"
          + (" (the last two columns: stage `n`'s own codes; the metrics above pool the "
             "stages' code indices)" if per_stage else "") + ":", "",
          "| depth | bits per image | MSE | PSNR (dB) |"
          + (" stage's codes used | stage's perplexity |" if per_stage else ""),
          "| ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if per_stage else "")]
  for n, mse in enumerate(m["mse_by_depth"], start=1):
    row = f"| {n} | {n * bits:.0f} | {mse:.5f} | {10 * math.log10(1 / mse):.2f} |"
    if per_stage:
      row += f" {m['codes_used_by_stage'][n - 1]} | {m['perplexity_by_stage'][n - 1]:.1f} |"
    rows.append(row)
  return "\n".join(rows)


_PRIOR_BAR_TEXT = {
    "bits_vs_unigram_max": ("test bits at most {:.0%} of the unigram baseline's",
                            lambda m: f"{m['prior_bits'] / m['unigram_bits']:.1%}"),
    "sample_64_seconds_max": ("64 samples in under {:g} s",
                              lambda m: f"{m['sample_64_seconds']:.2f} s"),
    "class_accuracy_min": ("every class's conditional samples at least {:.0%} in that class",
                           lambda m: "lowest class "
                                     f"{min(m['class_accuracy_per_class'].values()):.1%}")}


def prior_bar_text(bar: Mapping[str, float], m: Mapping[str, Any]) -> str:
  """The prior's bars in words, each with its measured value and whether it is met."""
  from vqzoo.pretrained.registry import prior_bar_misses
  missed = prior_bar_misses(bar, m)
  parts = [f"{_PRIOR_BAR_TEXT[key][0].format(value)} "
           f"({'missed' if key in missed else 'met'}: {_PRIOR_BAR_TEXT[key][1](m)})"
           for key, value in bar.items()]
  return "Bars: " + "; ".join(parts) + "."


def likelihood_section(lk: Mapping[str, Any]) -> str:
  """The full-model likelihood bound (:mod:`vqzoo.evaluation.likelihood`) in bits per dim."""
  dims = round(lk["total_bits"] / lk["bits_per_dim"])
  return "\n".join([
      f"An upper bound on the negative log-likelihood of the {lk.get('split', 'test')} split: "
      f"the prior's bits for the codes ({lk['prior_bits']:.1f} bits per image) plus "
      "the decoder's negative log-likelihood of the pixels under a discretised Gaussian whose "
      f"sigma is fitted on the {lk['sigma_split']} split (sigma {lk['sigma']:.4f} on the [0, 1] "
      f"scale), divided by the {dims:,} dimensions of an image: "
      f"**{lk['bits_per_dim']:.2f} bits/dim**, beside the "
      f"{lk['paper_cifar10_bits_per_dim']} bits/dim van den Oord et al. (2017, section 4.1) "
      "report on CIFAR-10.", "",
      "The bound is looser than the paper's because this decoder was trained for mean squared "
      "error, which is the likelihood of one fixed Gaussian for every pixel: its sigma is the "
      "root of the mean squared error over the whole split, so the many pixels it gets nearly "
      "right are charged for the few it gets wrong. A decoder that outputs a distribution per "
      "pixel (the paper's) pays only for its own uncertainty at each one."])


def zoo_card(entry: Any, metrics: Mapping[str, Any]) -> str:
  """The model card of a zoo variant (a :class:`~vqzoo.pretrained.registry.ZooEntry`)."""
  bar = bar_text(entry.bar, metrics)
  sections = {}
  if "mse_by_depth" in metrics:
    sections["Rate at every depth"] = depth_section(entry.config, metrics)
  if "likelihood" in metrics:
    sections["Likelihood bound in bits per dimension"] = likelihood_section(metrics["likelihood"])
  if "prior" in metrics and entry.prior is not None:
    sections["Prior and samples"] = prior_section(
        entry.prior.config, entry.prior.train, metrics["prior"],
        per_stage=entry.config.quantizer.kind == "rvq")
    if entry.config.arch == "conv":  # the prior bars are the conv models'
      sections["Prior and samples"] += "\n\n" + prior_bar_text(entry.prior_bar,
                                                               metrics["prior"])
  sections["Reproduce"] = (f"`python scripts/train.py --variant {entry.name}` (recipe above), "
                           f"then `vqzoo eval {entry.name}`"
                           + (f"; the prior: `python scripts/fit_prior.py --variant {entry.name}`"
                              if entry.prior is not None else "") + f". Quality bar: {bar}.")
  return render_card(
      entry.name, entry.config, entry.description + ".", recipe=entry.recipe, metrics=metrics,
      dataset=entry.eval_dataset, extra_sections=sections)


def zoo_table() -> str:
  """The README's zoo table, rendered from the registry and each variant's measured metrics."""
  from vqzoo.pretrained import registry
  rows = ["| variant | architecture | bits per image | test MSE | NMSE | PSNR (dB) | codes used | "
          "perplexity | bar |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
  for name in registry.list_models():
    entry = registry.get_entry(name)
    m = entry.metrics
    bar = bar_text(entry.bar, m)
    if not m:
      rows.append(f"| `{name}` | {entry.description} | | not trained | | | | | {bar} |")
      continue
    rows.append(f"| `{name}` | {entry.description} | {m['bits_per_image']:,.0f} | "
                f"{m['mse']:.5f} | {m['nmse']:.4f} | {m['psnr']:.2f} | "
                f"{m['codes_used']} | {m['perplexity']:.1f} | {bar} |")
  return "\n".join(rows)


def prior_table() -> str:
  """The README's table of the zoo's priors, from each variant's measured metrics."""
  from vqzoo.pretrained import registry
  rows = ["| variant | prior | test NLL (bits/image) | unigram | uniform | classifier FD: samples "
          "| train split | reconstructions | unigram samples | class accuracy | 64 samples (s) |",
          "| --- | --- |" + " ---: |" * 9]
  for name in registry.list_models():
    entry = registry.get_entry(name)
    m = entry.metrics.get("prior")
    if not m or entry.prior is None:
      continue
    p = entry.prior.config
    kind = (f"PixelCNN {p.hidden}x{p.num_layers}" if p.kind == "pixelcnn" else "categorical")
    fd = m["frechet"]
    acc = f"{100 * m['class_accuracy']:.1f}%" if "class_accuracy" in m else ""
    rows.append(f"| `{name}` | {kind}, class-conditional | {m['prior_bits']:.1f} | "
                f"{m['unigram_bits']:.1f} | {m['uniform_bits']:.1f} | {fd['samples']:.2f} | "
                f"{fd['train_split']:.2f} | {fd['reconstructions']:.2f} | "
                f"{fd['unigram_samples']:.2f} | {acc} | {m['sample_64_seconds']:.2f} |")
  return "\n".join(rows)
