"""Measuring instruments for trained models, one per module.

- :mod:`vqzoo.evaluation.frechet`: the classifier Fréchet distance between two image sets.
- :mod:`vqzoo.evaluation.likelihood`: a full-model likelihood bound in bits per dimension.
- :mod:`vqzoo.evaluation.sample_quality`: Fréchet distances and class accuracy of a prior's
  samples.

The layer above :mod:`vqzoo.training`: these read its data, classifiers and code statistics,
and nothing in training imports them. The reconstruction metrics on a split
(:func:`vqzoo.evaluate`, :mod:`vqzoo.training.metrics`) stay in training, which reports them for
every model it trains or fine-tunes.
"""
