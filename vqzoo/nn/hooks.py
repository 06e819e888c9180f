"""Hooks: where a module lets a backend compute the same function in another way.

A module offers a hook by inheriting from one of these classes (each an ``hk.Module``); a
backend looks for them with ``isinstance`` and never by attribute or method names of its own
(the zoo's backend is :mod:`vqzoo.cpu_tuning`, applied on the CPU only). Whatever a backend
does through a hook must leave the module's outputs, parameters and state as they were.

* :class:`IndependentRows`: ``__call__(x)`` treats the rows of ``x``'s leading axis
  independently, so a backend may run it on slices of the batch and concatenate.
* :class:`CodeSearch`: the module finds nearest codes through :meth:`CodeSearch.argmin_rows`,
  which a backend may replace by any function with the same result.
"""

from __future__ import annotations

import chex
import haiku as hk
import jax
import jax.numpy as jnp


class IndependentRows(hk.Module):
  """A module whose ``__call__(x)`` output row ``i`` depends on input row ``i`` only.

  ``x`` is ``[B, ...]`` and the output ``[B, ...]``: no batch statistics, no layer that mixes
  rows. A backend may then call the module on consecutive slices of the batch (in the same
  name scope, so with the same parameters) and concatenate the results.
  """


class CodeSearch(hk.Module):
  """A module that finds each row's nearest code with :meth:`argmin_rows`."""

  def argmin_rows(self, distances: jax.Array) -> jax.Array:
    """``[N, K]`` distances -> ``[N]`` int32 index of each row's first minimum.

    A backend may substitute any function that returns the same indices (the first minimum on
    ties, a valid index for a row of NaNs).
    """
    chex.assert_rank(distances, 2)
    return jnp.argmin(distances, axis=1).astype(jnp.int32)


#: The name of the method a backend intercepts for :class:`CodeSearch` (``hk.intercept_methods``
#: reports methods by name).
CODE_SEARCH_METHOD = CodeSearch.argmin_rows.__name__
