"""The chain runtime: building blocks as kernels over lazy formulas, and the chain that runs them
so that each leaf's update is computed in one final pass across the blocks.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any
from typing import Callable
from typing import Iterator
from typing import Optional
from typing import Protocol

import jax
import jax.numpy as jnp
import optax
from jax import tree_util

from adafactor_jax._src import tree as tree_lib
from adafactor_jax._src import validation
from adafactor_jax._src.engine.chunked import Link
from adafactor_jax._src.engine.formula import Deferred
from adafactor_jax._src.engine.opaque import Seed
from adafactor_jax._src.engine.opaque import offset
from adafactor_jax._src.engine.opaque import opaque_zero
from adafactor_jax._src.engine.opaque import seed_from
from adafactor_jax._src.engine.opaque import shared_seed


class Kernel(Protocol):
  """A building block's update over lazy formulas: extends the formulas of `leaves` in place
  (`Deferred.then`, `Deferred.scale`, reductions) and returns the block's new state."""

  def __call__(self, leaves: list[Deferred], state: Any, params: Any, ctx: Context) -> Any:
    ...


class FusedUpdate:
  """The ``update`` of a building block that a `chain` can fuse: callable as any optax update
  function, and carrying the block's `Kernel`, which `chain` runs on the chain's formulas
  instead (read it with `kernel_of`)."""

  def __init__(self, update: Callable[..., tuple[Any, Any]], kernel: Kernel):
    self.kernel: Kernel = kernel
    self._update = update
    functools.update_wrapper(self, update)

  def __call__(self, updates: Any, state: Any, params: Any = None,
               **extra_args: Any) -> tuple[Any, Any]:
    return self._update(updates, state, params, **extra_args)


def kernel_of(transform: optax.GradientTransformation) -> Optional[Kernel]:
  """The kernel of a building block (or chain) of this package; None for any other
  transformation (which a chain runs on the updates computed so far)."""
  update = transform.update
  return update.kernel if isinstance(update, FusedUpdate) else None


_ENABLED = [True]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
  """Within this context (at trace time), chains run block by block, as ``optax.chain``."""
  _ENABLED.append(False)
  try:
    yield
  finally:
    _ENABLED.pop()


@contextlib.contextmanager
def in_branch(leaves: list[Deferred]) -> Iterator[Link]:
  """For reductions of `leaves` traced inside a ``lax.cond`` branch: yields a `Link` of the
  branch's own, and gives the leaves scratch copies of their seeds (empty caches) until the
  branch is traced. Values traced in a branch must stay in it: a later block (a second global
  clipping) would otherwise reuse cached zeros and offsets of a finished trace."""
  saved = [d.seed for d in leaves]
  scratch = {id(x): x.scratch() for x in saved if x is not None}
  for d in leaves:
    d.seed = None if d.seed is None else scratch[id(d.seed)]
  try:
    yield Link()
  finally:
    for d, x in zip(leaves, saved):
      d.seed = x


class Context:
  """What kernels share in one update: the updates' tree, key paths and extra args."""

  def __init__(self, updates: Any, extra_args: dict):
    flat, treedef = tree_util.tree_flatten_with_path(updates)
    self.treedef: Any = treedef
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

  def computed_apart(self, fn: Callable[..., jax.Array], inputs: list,
                     rounded: Optional[Callable[..., jax.Array]] = None) -> jax.Array:
    """``fn(*inputs)``, elementwise over arrays shaped like the first input, for the blocks
    after this one to read and never store: computed from inputs offset by an opaque zero read
    from the first, so that each pass that reads it computes it again, and declared to the
    chunked reductions, which compute their chunks of it from slices of the inputs (`rounded`:
    `fn` with each operation rounded as a stored array of it would be; see `Link.recipe`)."""
    first = inputs[0]
    z = opaque_zero(first, first.dtype) if first.size else None
    out = fn(*(offset(x, z) for x in inputs))
    self.link.recipe(out, rounded or fn, list(inputs))
    return out

  def leaves(self, xs: Any) -> list[Deferred]:
    """A `Deferred` per array of `xs` (the updates' leaves), each seeded by this context when
    its formula is first read apart (`seed`)."""
    return [Deferred(x, seeder=self.seed) for x in xs]

  def reseed(self, leaves: list[Deferred], count: jax.Array) -> None:
    """Gives every leaf a zero anew: a large leaf its own (`seed_from`), the small ones one
    shared zero read from the step counter `count` (never negative), which traces less than
    one read from a gradient (`scale_by_factored_rms`, whose state counts steps)."""
    shared = shared_seed(count)
    for d in leaves:
      d.seed = seed_from(d, shared)

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

  return optax.GradientTransformationExtraArgs(init_fn, FusedUpdate(update_fn, kernel))


def _run(kernel: Kernel, init_fn: Callable[[Any], Any], updates: Any, state: Any, params: Any,
         extra_args: dict, *, block: bool = True) -> tuple:
  """A kernel's update on concrete updates: deferred leaves in, computed updates out. A `block`
  needs floating updates; a chain checks them before each block it runs (`run_inner`)."""
  ctx = Context(updates, extra_args)
  if block:
    ctx.check_floating()
  leaves = ctx.leaves(ctx.treedef.flatten_up_to(updates))
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


def run_on_formulas(transform: optax.GradientTransformationExtraArgs, kernel: Optional[Kernel],
                    updates: Any, start: Callable[[int, Deferred], None], state: Any,
                    params: Any, extra_args: dict) -> tuple[Any, Any]:
  """Runs `transform` (whose kernel is `kernel`, or None) on lazy formulas that `start(i, d)`
  begins from each leaf ``i`` of `updates` (a wrapper's formula: the mean of accumulated
  gradients); returns the computed updates and the new state."""
  ctx = Context(updates, extra_args)
  leaves = ctx.leaves(ctx.treedef.flatten_up_to(updates))
  for i, d in enumerate(leaves):
    start(i, d)
  new_state = run_inner(transform, kernel, leaves, state, params, ctx)
  return ctx.finish(leaves), new_state


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
  leaves[:] = ctx.leaves(flat)
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
    docs/design/engine.md: with donated params and state, the jitted step of BERT-base
    needs 2 MB of temporaries (``optax.adafactor``: 532 MB).
  """
  for i, t in enumerate(transforms):
    validation.check_transformation(f"chain: transforms[{i}]", t)
  base = optax.chain(*transforms)
  kernels = [kernel_of(t) for t in transforms]
  transforms = tuple(optax.with_extra_args_support(t) for t in transforms)

  def kernel(leaves, state, params, ctx):
    return tuple(run_inner(t, k, leaves, s, params, ctx)
                 for t, k, s in zip(transforms, kernels, state))

  def update_fn(updates, state, params=None, **extra_args):
    if not _ENABLED[-1]:
      return base.update(updates, state, params, **extra_args)
    return _run(kernel, base.init, updates, state, params, extra_args, block=False)

  return optax.GradientTransformationExtraArgs(base.init, FusedUpdate(update_fn, kernel))
