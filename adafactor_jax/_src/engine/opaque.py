"""Opaque zeros: exact zeros that XLA cannot fold, which keep its fusions from sharing inputs.

XLA:CPU's reduction fusions take any operand shared with another fusion (a common ``g*g``, a
broadcast factor, even a broadcast constant) as a stored buffer. Each reduction of a leaf's
formula therefore reads its inputs offset by such a zero, a distinct multiple of it for each
kind of reduction (`PURPOSES`), so that no subexpression is shared between the row sums, the
column sums, the update RMS and the final pass. The measurements: docs/design/engine.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any
from typing import Optional

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
  from adafactor_jax._src.engine.formula import Deferred


# A distinct multiple of a leaf's zero for each kind of reduction of its formula, and for each
# other pass that reads the formula apart from the final one (an unfactored leaf's second moment,
# Adadelta's E[delta**2], the EMA of the weights).
PURPOSES = {"row": 1.0, "col": 2.0, "rms": 3.0, "global_norm": 4.0, "v": 5.0, "leaf_norm": 6.0,
            "rescale_max": 7.0, "rescale": 8.0, "delta": 9.0, "ema": 10.0}

# The purposes whose reductions offset the leaf-sized inputs too: the row and column means of
# the squared gradient (the formula is often the gradient alone, with no smaller input to offset)
# and the largest magnitude of Keras's rescaled global norm.
FULL_SIZE = frozenset({"row", "col", "rescale_max"})


# Leaves of at least this many elements get a zero of their own; smaller ones share one (see
# `seed_from`).
MIN_SIZE_APART = 1 << 16


class Seed:
  """An exact zero that XLA cannot fold (see `seed_from`), with its multiple for each kind of
  reduction and the offsets of small inputs, each computed once for all the leaves that share
  it (fewer operations to trace and compile for a tree of many small leaves)."""

  __slots__ = ("value", "_zeros", "_offsets")

  def __init__(self, value: jax.Array):
    self.value = value
    self._zeros: dict[str, jax.Array] = {}
    self._offsets: dict[tuple[str, int], tuple[Any, Any]] = {}

  def scratch(self) -> "Seed":
    """The same zero with empty caches: for computations traced inside a ``lax.cond`` branch,
    whose values must not be cached for use outside it."""
    return Seed(self.value)

  def zero(self, purpose: str) -> jax.Array:
    if purpose not in self._zeros:
      self._zeros[purpose] = self.value * PURPOSES[purpose]
    return self._zeros[purpose]

  def offset(self, purpose: str, x: Any) -> Any:
    """``offset(x, self.zero(purpose))``, computed once per input array."""
    key = (purpose, id(x))
    if key not in self._offsets:  # x is kept with its offset: its id is not reused meanwhile
      self._offsets[key] = (x, offset(x, self.zero(purpose)))
    return self._offsets[key][1]


def seed_from(d: "Deferred", shared: Optional[Seed]) -> Optional[Seed]:
  """An exact zero XLA cannot fold, for leaf `d`.

  A large leaf gets its own: ``min(|g|, 0)`` for the first element of its gradient (NaN stays
  NaN, which makes the update NaN anyway; the gradient is not a buffer the step overwrites, so
  reading it never makes XLA copy one). Then no broadcast of it is shared with another leaf of
  the same shape either. Small leaves get `shared` (one zero for all, which keeps the compiled
  program small): a broadcast shared by leaves of one shape costs one small buffer.
  """
  g = d.inputs[0]
  if g.size < MIN_SIZE_APART:
    return shared
  return Seed(jnp.minimum(jnp.abs(first(g)).astype(jnp.float32), 0.0))


def first(x: jax.Array) -> jax.Array:
  """The first element of `x`, read without a reshape (which would gather a sharded `x`).

  Sharded along an Explicit mesh axis (`jax.make_mesh`'s default), the element is read with
  the axes Auto (`jax.sharding.auto_axes`), replicated: JAX does not type a one-element slice
  of a dim sharded along an Explicit axis.
  """
  index = (0,) * x.ndim
  spec = getattr(jax.typeof(x).sharding, "spec", ())
  if any(axis is not None for axis in spec):
    return jax.sharding.auto_axes(lambda y: y[index], out_sharding=jax.sharding.PartitionSpec())(x)
  return x[index]


def opaque_zero(x: jax.Array, dtype: Any) -> jax.Array:
  """A zero of `dtype` that XLA cannot fold, from the first element of the non-empty array `x`
  (``x > inf``: NaN and infinities give zero too)."""
  return (first(x) > jnp.inf).astype(dtype)


def floored(x: jax.Array, floor: jax.Array) -> jax.Array:
  """`x`, at least `floor`, for a value that is stored and then read by the final pass: a
  `where`, not a `maximum`, which XLA would compute again in the final pass from the old value,
  which it then copies (a full-size temporary; docs/design/engine.md)."""
  return jnp.where(x < floor, floor, x)


def ordered_after(pred: jax.Array, x: jax.Array) -> jax.Array:
  """`pred`, or an always-false term read from `x`: what uses it is computed after `x` (a
  ``lax.cond``'s output that reads buffers this computation overwrites: else XLA copies them
  first)."""
  return pred | (opaque_zero(x, jnp.bool_) if x.size else False)


def shared_seed(count: jax.Array) -> Seed:
  """An exact zero XLA cannot fold, from a step counter (never negative)."""
  return Seed(jnp.minimum(count, 0).astype(jnp.float32))


def offset(x: Any, z: Optional[jax.Array]) -> Any:
  """`x + z` for floating (non-weak) arrays, exact: only -0.0 becomes +0.0."""
  if z is None or not isinstance(x, jax.Array) or not jnp.issubdtype(x.dtype, jnp.inexact):
    return x
  if jax.typeof(x).weak_type:
    return x
  return x + z.astype(x.dtype)
