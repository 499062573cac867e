"""The lazy formula: one leaf's update kept as a function of a few arrays, computed once.

A block that scales the update only extends the formula (`Deferred.then`, `Deferred.scale`); a
block that needs a reduction of it (the update RMS of `clip_by_block_rms`) evaluates the formula
inside that reduction (`Deferred.reduce_apart`). The full-size update is computed once, at the
end (`Deferred.value`), where XLA fuses it with ``optax.apply_updates``. Why each evaluation
apart from the final one reads offset inputs: docs/design/engine.md.
"""

from __future__ import annotations

import functools
import math
from typing import Any
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp

from adafactor_jax._src.engine import chunked
from adafactor_jax._src.engine.opaque import FULL_SIZE
from adafactor_jax._src.engine.opaque import Seed


def _identity(x):
  return x


class Deferred:
  """One leaf's update as ``fn(*inputs)`` times or divided by pending scalars, not yet computed
  (shape and dtype are known).

  The pending scalars are those that blocks multiply or divide the whole update by (learning
  rate, parameter scale, clipping). Kept apart from the formula, they reach the final pass as
  one product ``factors / divisors``, which XLA computes once, in one scalar fusion per leaf:
  applied one by one, each block's scalar is a fusion of its own, and a tree of many small
  leaves compiles slower. Anything that reads the update before the end (a reduction, momentum,
  another block's formula) applies them one by one, in order, as the blocks alone do. Only
  float32/float64 updates keep them pending (`scale`); in half precision each block rounds its
  product at once, as optax does.
  """

  __slots__ = ("fn", "inputs", "shape", "dtype", "seed", "seeder", "scalars", "reduced_fn",
               "reduced_for")

  def __init__(self, x: jax.Array, seeder: Optional[Callable[["Deferred"], None]] = None):
    self.reset(x)
    self.shape = tuple(x.shape)
    self.dtype = x.dtype
    # A float32 zero that XLA cannot fold, for this leaf (`opaque`): None until a block with
    # per-leaf state provides one (`runtime.Context.reseed`), or until the formula is first read
    # apart, when `seeder` (the chain's `runtime.Context.seed`) gives it one.
    self.seed: Optional[Seed] = None
    self.seeder = seeder

  def reset(self, x: jax.Array, fn: Callable[[jax.Array], jax.Array] = _identity) -> None:
    """The update becomes ``fn(x)``, for `x` of this leaf's shape."""
    self.fn: Callable[..., jax.Array] = fn
    self.inputs: tuple = (x,)
    # The same formula in fewer operations, equal to `fn` bit for bit on every input it gets,
    # for the first kind of reduction of it (see `then`); None when there is none.
    self.reduced_fn: Optional[Callable[..., jax.Array]] = None
    self.reduced_for: Optional[str] = None
    self.scalars: list[tuple[Callable, jax.Array]] = []  # (_times or _divide, scalar), in order

  def then(self, f: Callable[..., jax.Array], *args: Any,
           reduced: Optional[Callable[..., jax.Array]] = None) -> None:
    """The update becomes ``f(update, *args)``; `f` must keep its shape and dtype.

    `reduced` is ``f`` in fewer operations, equal to it bit for bit on the arguments given (for
    example without a floor that `args` already satisfy), for a reduction of the formula: inside
    XLA:CPU's reductions every elementwise operation costs time, in the final pass none does.
    Being a different expression, it also keeps XLA from sharing the formula between that
    reduction and the final pass, which the offsets otherwise do; so only the first kind of
    reduction of this leaf evaluates it (two reductions of one expression without offsets could
    share it as a stored buffer).
    """
    self.flush()
    fn, rfn, k = self.fn, self.reduced_fn, len(self.inputs)
    self.fn = _extended(fn, f, k)
    if rfn is not None or reduced is not None:
      self.reduced_fn = _extended(rfn or fn, reduced or f, k)
    self.inputs = self.inputs + args

  def then_apart(self, f: Callable[..., jax.Array], *args: Any, dtype: Any) -> None:
    """`then` for an `f` whose first operation combines the update with a leaf-sized input
    (``u + a``): the update first becomes ``u.astype(dtype) * 1`` (exact), an operation on a
    small input, which the engine offsets wherever the formula is computed apart, so that no pass
    shares ``u + a`` with another (docs/design/engine.md)."""
    one = operand(1, dtype, len(self.shape))
    self.then(lambda u, one, *a: f(u.astype(dtype) * one, *a), one, *args)

  def flush(self) -> None:
    """Applies the pending scalars to the formula, one by one."""
    scalars, self.scalars = self.scalars, []
    for op, s in scalars:
      self.then(op, like_leaf(s, len(self.shape)))

  def scale(self, s: Any, *, divide: bool = False) -> None:
    """The update becomes ``update * s`` (``update / s`` with `divide`), `s` broadcasting.

    In float32/float64 a single number `s` (of any shape of size 1) stays pending (see the class
    docstring). Any other `s` (batch dims), or a half-precision update, is applied elementwise at
    once, in the update's dtype.
    """
    s, op = jnp.asarray(s), _divide if divide else _times
    if s.size != 1 or self.dtype not in (jnp.float32, jnp.float64):
      self.then(op, like_leaf(s, len(self.shape)))
      return
    if s.dtype != self.dtype or jax.typeof(s).weak_type:
      s = s.astype(self.dtype)
    self.scalars.append((op, s))

  def value(self) -> jax.Array:
    """The final update: the pending scalars applied as one (the same numbers up to a few
    ulps)."""
    u = self.fn(*self.inputs)
    factors = [s.reshape(()) if s.ndim else s for op, s in self.scalars if op is _times]
    divisors = [s.reshape(()) if s.ndim else s for op, s in self.scalars if op is _divide]
    factor = math.prod(factors[1:], start=factors[0]) if factors else None
    divisor = math.prod(divisors[1:], start=divisors[0]) if divisors else None
    if divisor is None:
      return u if factor is None else u * factor
    # One division, which XLA computes in a scalar fusion of its own instead of fusing the
    # multiplies into the elementwise pass.
    return u / divisor if factor is None else u * (factor / divisor)

  def value_apart(self, purpose: str) -> jax.Array:
    """The value, computed from inputs that XLA cannot identify with their other uses: offset by
    this leaf's zero times the multiple of `purpose` (`opaque.PURPOSES`).

    Only inputs smaller than the leaf (factors, scalars) are offset, which is free; for the
    purposes of `opaque.FULL_SIZE`, leaf-sized ones too (an elementwise add in the reduction),
    as their formula may have no smaller input.
    """
    f, inputs = self._apart(purpose)
    return f(*inputs)

  def reduce_apart(self, purpose: str, reduce: Callable[..., jax.Array],
                   elem: Callable[[jax.Array], jax.Array],
                   link: Optional["chunked.Link"]) -> jax.Array:
    """``reduce(elem(value_apart(purpose)))`` for `reduce` `mean` (its axes given), `total` or
    `largest`, which run in chunks where they take them (the chunks need no offsets: each reads
    its own slices, or as one chunk its inputs offset by the link's zero; see `chunked._rows`)."""
    blocked = link is not None and chunked.blocked(self.inputs, self.shape)
    f, inputs = self._apart(purpose, offset=not blocked, reduction=True)
    return reduce(lambda *xs: elem(f(*xs)), inputs, self.shape, link=link)

  def _apart(self, purpose: str, offset: bool = True,
             reduction: bool = False) -> tuple[Callable[..., jax.Array], list]:
    """`value_apart` as ``f(*inputs)``: the formula and its offset inputs (not offset with
    ``offset=False``); for a `reduction`, its shorter form where it has one (see `then`)."""
    if self.seed is None and self.seeder is not None:
      self.seeder(self)
    full_size = purpose in FULL_SIZE
    fn = self.fn
    if reduction and self.reduced_fn is not None and self.reduced_for in (None, purpose):
      fn, self.reduced_for = self.reduced_fn, purpose
    if self.seed is None or not offset:
      move = _identity
    else:
      move = functools.partial(self.seed.offset, purpose)
    size = math.prod(self.shape)
    inputs = [x if not full_size and getattr(x, "size", 0) >= size else move(x)
              for x in self.inputs]
    ops = [op for op, _ in self.scalars]
    k = len(inputs)

    def f(*xs):
      u = fn(*xs[:k])
      for op, x in zip(ops, xs[k:]):
        u = op(u, x)
      return u

    return f, inputs + [move(like_leaf(s, len(self.shape))) for _, s in self.scalars]

  def derived(self, f: Callable[..., jax.Array], *args: Any, dtype: Any) -> "Deferred":
    """A copy of this leaf's formula extended as by ``then(f, *args)``, this one unchanged;
    `f` may change the dtype, to `dtype` (a value read apart, never a final update)."""
    e = Deferred.__new__(Deferred)
    e.fn, e.inputs, e.shape, e.dtype = self.fn, self.inputs, self.shape, self.dtype
    e.seed, e.seeder, e.scalars = self.seed, self.seeder, list(self.scalars)
    e.reduced_fn, e.reduced_for = None, None  # its reductions are not this leaf's (see `then`)
    e.then(f, *args)
    e.dtype = dtype
    return e

  @property
  def aval(self) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(self.shape, self.dtype)


def _extended(fn: Callable[..., jax.Array], f: Callable[..., jax.Array],
              k: int) -> Callable[..., jax.Array]:
  """``f(fn(*inputs), *args)`` as a function of ``inputs + args``, `fn` taking the first `k`."""
  return lambda *xs: f(fn(*xs[:k]), *xs[k:])


def like_leaf(s: jax.Array, ndim: int) -> jax.Array:
  """A 0-d `s` as an array of shape ``(1,) * ndim`` (anything else unchanged).

  A scalar meets a leaf in this shape wherever the arithmetic must be the blocks' own, op for
  op: XLA reassociates multiplies by 0-d scalars, not by these. The final pass takes the
  scalars 0-d.
  """
  return s.reshape((1,) * ndim) if s.ndim == 0 else s


def operand(x: Any, dtype: Any, ndim: int) -> jax.Array:
  """A hyperparameter as an input of a leaf's formula (`Deferred.then`), which offsets it where
  the formula is computed apart: a Python number (weakly typed) in `dtype`, as it would combine
  with an array of `dtype`, any array as it is; of shape ``(1,) * ndim`` (`like_leaf`)."""
  a = jnp.asarray(x)
  if jax.typeof(a).weak_type:
    a = a.astype(dtype)
  return like_leaf(a, ndim)


def _times(u, s):
  return (u * s.astype(u.dtype)).astype(u.dtype)


def _divide(u, s):
  return (u / s.astype(u.dtype)).astype(u.dtype)
