"""Chunked half-precision reductions: XLA:CPU's reductions of a bfloat16/float16 array read a
float32 copy of it, so a large one is reduced in chunks of rows chained one after another
(`Link`), and only a few chunks' copies exist at once. The measurements: docs/design/engine.md.
"""

from __future__ import annotations

import functools
import math
from typing import Callable
from typing import Optional
from typing import Sequence
from typing import cast

import jax
import jax.numpy as jnp

from adafactor_jax._src.engine.opaque import MIN_SIZE_APART
from adafactor_jax._src.engine.opaque import offset
from adafactor_jax._src.engine.opaque import opaque_zero

# A reduction of a half-precision array of at least MIN_SIZE_APART elements runs in blocks of
# whole rows, at most about this many elements each (at least one row; see `Link`).
BLOCK_ELEMENTS = 1 << 21


class Link:
  """Puts the blocks of half-precision reductions in one sequence.

  XLA:CPU reduces float32 only: a reduction of a bfloat16/float16 array reads a float32 copy of
  it, stored in full, and XLA computes these copies for all reductions before it runs the first
  (bf16 BERT-base: 875 MB of temporaries for 219 MB of params).
  A large half-precision array is therefore reduced in blocks of rows (its leading axis), each
  sliced at a start offset by an integer zero that XLA cannot fold, computed from the result of
  the block before (this one `Link` for all reductions of one update): the copies of at most
  three blocks exist at once, ``12 * BLOCK_ELEMENTS`` bytes (bf16 BERT-base: 9 MB). The blocks
  need no offsets either: each reads its own slices. An array of at most BLOCK_ELEMENTS is one
  block, which adds the zero to its bits instead (see `_rows`).
  """

  def __init__(self):
    self.zero: Optional[jax.Array] = None
    # id(array) -> (array, fn, inputs) for arrays computed elementwise as fn(*inputs) (see
    # `recipe`)
    self._recipes: dict[int, tuple[jax.Array, Callable[..., jax.Array], list]] = {}

  def recipe(self, x: jax.Array, fn: Callable[..., jax.Array], inputs: list) -> None:
    """Declares that `x` is ``fn(*inputs)``, elementwise: a reduction in blocks of `x` slices
    the inputs instead and computes its blocks of `x` from them (slices of `x` itself would make
    XLA store the whole of it)."""
    self._recipes[id(x)] = (x, fn, inputs)

  def expand(self, f: Callable[..., jax.Array], inputs: list) -> tuple[Callable, list]:
    """``f(*inputs)`` as a function of the inputs of the arrays among `inputs` that have a
    `recipe`."""
    recipes = [self._recipes.get(id(x)) for x in inputs]
    recipes = [r if r is not None and r[0] is x else None for r, x in zip(recipes, inputs)]
    if not any(recipes):
      return f, inputs
    spans: list[tuple[Optional[Callable[..., jax.Array]], int, int]] = []
    expanded: list = []
    for x, r in zip(inputs, recipes):
      parts = [x] if r is None else r[2]
      spans.append((None if r is None else r[1], len(expanded), len(parts)))
      expanded.extend(parts)

    def g(*ys):
      return f(*(ys[i] if fn is None else fn(*ys[i:i + n]) for fn, i, n in spans))

    return g, expanded

  def start(self, x: jax.Array) -> jax.Array:
    """The int32 zero that the next block's slice starts at, seeded from `x` if none yet."""
    if self.zero is None:
      self.after(x)
    return cast(jax.Array, self.zero)

  def after(self, part: jax.Array) -> None:
    """The next block waits for `part` (NaN and infinities in it give zero too)."""
    self.zero = opaque_zero(part, jnp.int32)


def blocked(inputs: Sequence, shape: tuple) -> bool:
  """Whether `mean` reduces a leaf of `shape` in blocks: a half-precision leaf-shaped input of
  at least MIN_SIZE_APART elements, on a single CPU device (other backends reduce half
  precision without a stored copy, and on several devices a slice of a sharded axis could
  gather it)."""
  if jax.default_backend() != "cpu" or jax.device_count() != 1:
    return False
  size = math.prod(shape)
  return len(shape) > 0 and shape[0] > 1 and size >= MIN_SIZE_APART and any(
      getattr(x, "shape", None) == shape and x.dtype in (jnp.bfloat16, jnp.float16)
      for x in inputs)


def mean(f: Callable[..., jax.Array], inputs: list, shape: tuple, axes: tuple[int, ...],
         link: Optional[Link], *, keepdims: bool = False) -> jax.Array:
  """``jnp.mean(f(*inputs), axes, keepdims=keepdims)``, `f` elementwise over `inputs` (arrays
  that broadcast to `shape`).

  A large half-precision `inputs` array is reduced in blocks of its leading axis, chained by
  `link` (see `Link`; None: never in blocks): the sums of the blocks (in float32) are added, or
  concatenated where the leading axis is kept, and divided by the count once.
  """
  if link is None or not blocked(inputs, shape):
    return jnp.mean(f(*inputs), axis=axes, keepdims=keepdims)
  sums, dtype = _sum_blocks(f, inputs, shape, axes, link)
  means = (sums / math.prod(shape[a] for a in axes)).astype(dtype)
  return means if keepdims else jnp.squeeze(means, axis=axes)


def total(f: Callable[..., jax.Array], inputs: list, shape: tuple,
          link: Optional[Link]) -> jax.Array:
  """``jnp.sum(f(*inputs))`` over all axes, in blocks as `mean` for a large half-precision
  `inputs` array (the float32 sum of the blocks, in the dtype of `f`)."""
  if link is None or not blocked(inputs, shape):
    return jnp.sum(f(*inputs))
  axes = tuple(range(len(shape)))
  out, dtype = _sum_blocks(f, inputs, shape, axes, link)
  return out.astype(dtype).reshape(())


def largest(f: Callable[..., jax.Array], inputs: list, shape: tuple,
            link: Optional[Link]) -> jax.Array:
  """``jnp.max(f(*inputs), initial=0)`` over all axes, in blocks as `total` for a large
  half-precision `inputs` array."""
  if link is None or not blocked(inputs, shape):
    return jnp.max(f(*inputs), initial=0.0)
  axes = tuple(range(len(shape)))
  out, dtype = _sum_blocks(f, inputs, shape, axes, link, largest=True)
  return jnp.maximum(out.astype(dtype).reshape(()), 0.0)


def _sum_blocks(f: Callable[..., jax.Array], inputs: list, shape: tuple, axes: tuple[int, ...],
                link: Link, *, largest: bool = False) -> tuple[jax.Array, jnp.dtype]:
  """The float32 (or wider) sum of ``f(*inputs)`` over `axes` (kept), or with `largest` its
  maximum, in blocks of whole rows chained by `link` (one block for a leaf of at most
  BLOCK_ELEMENTS, two at least for a larger one), and the dtype of `f`'s values."""
  f, inputs = link.expand(f, inputs)
  # A larger leaf has two blocks at least by the first bound; the second, half its rows, only
  # evens out the blocks of a leaf a little over BLOCK_ELEMENTS.
  rows = shape[0] if math.prod(shape) <= BLOCK_ELEMENTS else max(
      1, min(BLOCK_ELEMENTS // math.prod(shape[1:]), -(-shape[0] // 2)))
  parts = []
  for first in range(0, shape[0], rows):
    size = min(rows, shape[0] - first)
    zero = link.start(inputs[0])
    # Rows of the leaf-shaped inputs (and of factors along the leading axis); the other inputs
    # offset by the same zero, so that no broadcast of them is shared between blocks either.
    block = [_rows(x, first, size, zero)
             if getattr(x, "ndim", 0) == len(shape) and x.shape[0] == shape[0] else
             offset(x, zero.astype(jnp.float32)) for x in inputs]
    y = f(*block)
    part = (jnp.max(y, axis=axes, keepdims=True) if largest else
            jnp.sum(y, axis=axes, keepdims=True, dtype=jnp.promote_types(y.dtype, jnp.float32)))
    link.after(part)
    parts.append(part)
  if 0 in axes:
    return functools.reduce(jnp.maximum if largest else jnp.add, parts), y.dtype
  return jnp.concatenate(parts, axis=0), y.dtype


def _rows(x: jax.Array, first: int, size: int, zero: jax.Array) -> jax.Array:
  """Rows ``first : first + size`` of `x`, read only once the int32 `zero` is known.

  All the rows are not a slice (a slice of the whole leading axis is `x` itself, with no link
  to `zero`) but `x` offset by `zero`: a half-precision `x` by an integer add to its bits
  (exact), any other by `offset` (exact but for -0.0, which becomes +0.0). XLA:CPU computes
  bfloat16 arithmetic in float32, so a floating offset of a bfloat16 `x` reads a float32 copy of
  `x` that needs no `zero`, and XLA computes all such copies at once.
  """
  if size < x.shape[0]:
    return jax.lax.dynamic_slice_in_dim(x, first + zero, size, axis=0)
  if x.dtype in (jnp.bfloat16, jnp.float16):
    return jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(x, jnp.int16) + zero.astype(jnp.int16), x.dtype)
  return offset(x, zero.astype(jnp.float32))
