"""The fast path: a chain of the building blocks computes each leaf's update in one final pass.

Every building block is written once, as a *kernel* over `Deferred` leaves: a leaf's update is
kept as a formula (a function of a few arrays: the gradient, factors, the param, the momentum)
rather than an array. A block that scales the update only extends the formula; a block that
needs a reduction of it (the update RMS of `clip_by_block_rms`) evaluates the formula inside
that reduction. The full-size update is computed once, at the end, where XLA fuses it with
``optax.apply_updates``. Used alone (or in ``optax.chain``), a block evaluates its formula at
the end of its own update, which is the same arithmetic, op for op.

What keeps XLA from materialising full-size temporaries on the CPU, where its reduction
fusions take any operand shared with another fusion (a common ``g*g``, a broadcast factor, even a
broadcast constant) as a stored buffer: each reduction evaluates the formula on inputs offset by
an exact zero that XLA cannot prove to be zero, one per kind of reduction, so that no
subexpression is shared between the row sums, the column sums, the update RMS and the final
pass. A large leaf takes its zero from its own gradient (see `seed_from`), so that leaves of
equal shape share no broadcast either; small leaves share one zero, which keeps the compiled
program small. And as little elementwise work as possible happens inside a reduction, where it
costs time on the CPU.

Half-precision leaves are reduced in chained blocks instead (see `Link`): XLA:CPU's reductions
read float32 copies of them, which would otherwise all be stored at once.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any
from typing import Callable
from typing import Iterator
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax import tree_util

from adafactor_jax._src import tree as tree_lib
from adafactor_jax._src import validation

Kernel = Callable[[list["Deferred"], Any, Any, "Context"], Any]

_ENABLED = [True]


def _identity(x):
  return x


@contextlib.contextmanager
def disabled() -> Iterator[None]:
  """Within this context (at trace time), chains run block by block, as ``optax.chain``."""
  _ENABLED.append(False)
  try:
    yield
  finally:
    _ENABLED.pop()


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

  __slots__ = ("fn", "inputs", "shape", "dtype", "seed", "scalars", "reduced_fn", "reduced_for")

  def __init__(self, x: jax.Array):
    self.reset(x)
    self.shape = tuple(x.shape)
    self.dtype = x.dtype
    # A float32 zero that XLA cannot fold, distinct for this leaf (see the module docstring);
    # None until a block with per-leaf state provides one.
    self.seed: Optional[Seed] = None

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

  def value_apart(self, purpose: str, *, full_size: bool = False) -> jax.Array:
    """The value, computed from inputs that XLA cannot identify with their other uses.

    Only inputs smaller than the leaf (factors, scalars) are offset, which is free; with
    `full_size`, leaf-sized ones too (an elementwise add in the reduction), for a formula that
    has no smaller input.
    """
    f, inputs = self._apart(purpose, full_size)
    return f(*inputs)

  def reduce_apart(self, purpose: str, reduce: Callable[..., jax.Array],
                   elem: Callable[[jax.Array], jax.Array], link: Optional["Link"], *,
                   full_size: bool = False) -> jax.Array:
    """``reduce(elem(value_apart(purpose)))`` for `reduce` `mean` (its axes given) or `total`,
    which run in blocks where they take them (the blocks need no offsets: each reads its own
    slices, or as one block its inputs offset by the link's zero; see `_rows`)."""
    blocked = link is not None and _blocked(self.inputs, self.shape)
    f, inputs = self._apart(purpose, full_size, offset=not blocked, reduction=True)
    return reduce(lambda *xs: elem(f(*xs)), inputs, self.shape, link=link)

  def _apart(self, purpose: str, full_size: bool, offset: bool = True,
             reduction: bool = False) -> tuple[Callable[..., jax.Array], list]:
    """`value_apart` as ``f(*inputs)``: the formula and its offset inputs (not offset with
    ``offset=False``); for a `reduction`, its shorter form where it has one (see `then`)."""
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
    e.seed, e.scalars = self.seed, list(self.scalars)
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


# A distinct multiple of a leaf's zero for each kind of reduction of its formula, and for each
# other pass that reads the formula apart from the final one (an unfactored leaf's second moment,
# Adadelta's E[delta**2], the EMA of the weights).
_PURPOSES = {"row": 1.0, "col": 2.0, "rms": 3.0, "global_norm": 4.0, "v": 5.0, "leaf_norm": 6.0,
             "rescale_max": 7.0, "rescale": 8.0, "delta": 9.0, "ema": 10.0}


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
      self._zeros[purpose] = self.value * _PURPOSES[purpose]
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
  return Seed(jnp.minimum(jnp.abs(_first(g)).astype(jnp.float32), 0.0))


def _first(x: jax.Array) -> jax.Array:
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
  return (_first(x) > jnp.inf).astype(dtype)


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
    spans, expanded = [], []
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
    return self.zero

  def after(self, part: jax.Array) -> None:
    """The next block waits for `part` (NaN and infinities in it give zero too)."""
    self.zero = opaque_zero(part, jnp.int32)


def _blocked(inputs: list, shape: tuple) -> bool:
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
  if link is None or not _blocked(inputs, shape):
    return jnp.mean(f(*inputs), axis=axes, keepdims=keepdims)
  sums, dtype = _sum_blocks(f, inputs, shape, axes, link)
  means = (sums / math.prod(shape[a] for a in axes)).astype(dtype)
  return means if keepdims else jnp.squeeze(means, axis=axes)


def total(f: Callable[..., jax.Array], inputs: list, shape: tuple,
          link: Optional[Link]) -> jax.Array:
  """``jnp.sum(f(*inputs))`` over all axes, in blocks as `mean` for a large half-precision
  `inputs` array (the float32 sum of the blocks, in the dtype of `f`)."""
  if link is None or not _blocked(inputs, shape):
    return jnp.sum(f(*inputs))
  axes = tuple(range(len(shape)))
  out, dtype = _sum_blocks(f, inputs, shape, axes, link)
  return out.astype(dtype).reshape(())


def largest(f: Callable[..., jax.Array], inputs: list, shape: tuple,
            link: Optional[Link]) -> jax.Array:
  """``jnp.max(f(*inputs), initial=0)`` over all axes, in blocks as `total` for a large
  half-precision `inputs` array."""
  if link is None or not _blocked(inputs, shape):
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


class Context:
  """What kernels share in one update: the updates' tree, key paths and extra args."""

  def __init__(self, updates: Any, extra_args: dict):
    flat, self.treedef = tree_util.tree_flatten_with_path(updates)
    self.paths = [tree_lib.path_str(p) for p, _ in flat]
    self.updates_are(x for _, x in flat)
    self.extra_args = extra_args
    self.link = Link()
    self._shared: Optional[Seed] = None

  def updates_are(self, leaves: Any) -> None:
    """Notes the updates' leaves that are not floating (integer or bool): a block would truncate
    their update (`check_floating`), an optax transformation in a chain may leave them alone
    (optax.masked)."""
    self._not_floating = [(path, jnp.result_type(x)) for path, x in zip(self.paths, leaves)
                          if not jnp.issubdtype(jnp.result_type(x), jnp.inexact)]

  def check_floating(self) -> None:
    """Raises `ValueError` naming the first update that is not floating: a block's update of an
    integer leaf would be truncated to zero."""
    if self._not_floating:
      path, dtype = self._not_floating[0]
      raise ValueError(
          f"the update {path!r} has dtype {dtype}: gradients must be floating (or complex); "
          "leave integer leaves out of the optimizer (optax.masked, optax.multi_transform).")

  def seed(self, d: Deferred) -> None:
    """Gives leaf `d` its zero (`seed_from`) if it has none yet, for a block that reduces the
    formula before a block with state provides one; small leaves share one, whatever their
    gradient holds (a comparison: NaN and infinities give zero too)."""
    if d.seed is None:
      if self._shared is None:
        x = d.inputs[0]  # (of the leaf's shape)
        self._shared = Seed(opaque_zero(x, jnp.float32) if x.size else jnp.float32(0))
      d.seed = seed_from(d, self._shared)

  def like(self, leaves: list[Deferred]) -> Any:
    """The updates' tree with a `jax.ShapeDtypeStruct` per leaf (for tree and shape checks)."""
    return self.treedef.unflatten([d.aval for d in leaves])

  def finish(self, leaves: list[Deferred]) -> Any:
    return self.treedef.unflatten([d.value() for d in leaves])


def init_empty(params: Any) -> optax.EmptyState:
  """The ``init`` of a block without state (``optax.init_empty_state``, which optax exports from
  0.2.6 on)."""
  del params
  return optax.EmptyState()


def transformation(init_fn: Callable[[Any], Any],
                   kernel: Kernel) -> optax.GradientTransformationExtraArgs:
  """A building block from its kernel: used alone it computes its updates at once."""

  def update_fn(updates, state, params=None, **extra_args):
    return _run(kernel, init_fn, updates, state, params, extra_args)

  update_fn.fused = kernel
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _run(kernel: Kernel, init_fn: Callable[[Any], Any], updates: Any, state: Any, params: Any,
         extra_args: dict, *, block: bool = True) -> tuple:
  """A kernel's update on concrete updates: deferred leaves in, computed updates out. A `block`
  needs floating updates; a chain checks them before each block it runs (`run_inner`)."""
  ctx = Context(updates, extra_args)
  if block:
    ctx.check_floating()
  leaves = [Deferred(x) for x in ctx.treedef.flatten_up_to(updates)]
  try:
    new_state = kernel(leaves, state, params, ctx)
  except (AttributeError, TypeError, IndexError, KeyError):
    _check_state(init_fn, updates, state)  # a clearer error when the state is not this one's
    raise
  return ctx.finish(leaves), new_state


def _check_state(init_fn: Callable[[Any], Any], updates: Any, state: Any) -> None:
  """Raises `ValueError` naming the first differing key path when `state` is not shaped like the
  state `init_fn` makes for params like `updates` (a state of another optimizer)."""
  try:
    expected = jax.eval_shape(init_fn, updates)
  except Exception:  # noqa: BLE001 - no better diagnosis; the caller re-raises its own error
    return
  tree_lib.check_same_tree("update", expected, state, expected_name="the state init makes",
                           got_name="the state passed")


def run_inner(transform: optax.GradientTransformationExtraArgs, kernel: Optional[Kernel],
              leaves: list[Deferred], state: Any, params: Any, ctx: Context) -> Any:
  """Runs `transform` (whose kernel is `kernel`, or None) on `leaves` inside a kernel; returns
  its new state. A transformation without a kernel, or any when fusion is `disabled`, runs on
  the updates computed so far, as in ``optax.chain``."""
  if kernel is not None and _ENABLED[-1]:
    ctx.check_floating()
    return kernel(leaves, state, params, ctx)
  updates, state = transform.update(ctx.finish(leaves), state, params, **ctx.extra_args)
  flat = ctx.treedef.flatten_up_to(updates)
  leaves[:] = [Deferred(x) for x in flat]
  ctx.updates_are(flat)
  return state


def chain(*transforms: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``optax.chain`` that computes each leaf's update in one final pass across the blocks.

  Same state and same numbers as ``optax.chain(*transforms)`` (to float rounding: a reduction
  may sum in another order). The building blocks of this package (`scale_by_factored_rms`,
  `clip_by_block_rms`, `scale_by_param_block_rms`, `scale_by_learning_rate`,
  `scale_by_momentum`, `add_decayed_weights`, `scale_by_adadelta`, the Keras features and
  nested chains) extend a per-leaf formula instead of storing their output: the update RMS of
  the clipping is a reduction of that formula, and the full-size update is computed once, where
  XLA fuses it with ``optax.apply_updates``. Every preset is such a chain. Any other
  transformation (an optax one) runs as in ``optax.chain``, on the updates computed up to that
  point.

  Args:
    *transforms: the transformations, applied in order.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is the tuple of the transformations'
    states, as ``optax.chain``'s.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import adafactor_jax
    >>> blocks = [adafactor_jax.scale_by_factored_rms(min_dim_size_to_factor=2),
    ...           adafactor_jax.clip_by_block_rms(1.0), adafactor_jax.scale_by_learning_rate(0.1)]
    >>> tx = adafactor_jax.chain(*blocks)
    >>> params = {"w": jnp.ones((3, 4))}
    >>> grads = {"w": jnp.arange(12.0).reshape(3, 4)}
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> print(updates["w"][2])
    [-0.10516705 -0.10230228 -0.09937353 -0.09667205]
    >>> ref = optax.chain(*blocks)
    >>> same, _ = ref.update(grads, ref.init(params), params)
    >>> print(bool(jnp.allclose(updates["w"], same["w"], rtol=1e-6)))
    True

  Notes:
    What keeps temporaries out of the compiled step on the CPU is described in the module
    ``adafactor_jax._src.fused``: with donated params and state, the jitted step of BERT-base
    needs 2 MB of temporaries (``optax.adafactor``: 532 MB).
  """
  for i, t in enumerate(transforms):
    validation.check_transformation(f"chain: transforms[{i}]", t)
  base = optax.chain(*transforms)
  kernels = [getattr(t.update, "fused", None) for t in transforms]
  transforms = tuple(optax.with_extra_args_support(t) for t in transforms)

  def kernel(leaves, state, params, ctx):
    return tuple(run_inner(t, k, leaves, s, params, ctx)
                 for t, k, s in zip(transforms, kernels, state))

  def update_fn(updates, state, params=None, **extra_args):
    if not _ENABLED[-1]:
      return base.update(updates, state, params, **extra_args)
    return _run(kernel, base.init, updates, state, params, extra_args, block=False)

  update_fn.fused = kernel
  return optax.GradientTransformationExtraArgs(base.init, update_fn)
