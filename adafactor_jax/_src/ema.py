"""The exponential moving average of the weights, swapped in periodically (Keras's ``use_ema``)."""

from __future__ import annotations

from typing import Any
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from adafactor_jax._src import engine
from adafactor_jax._src import layout
from adafactor_jax._src import tree as tree_lib
from adafactor_jax._src import validation

# ---------------------------------------------------------------- the math, one leaf at a time
# What the block computes, written plainly: the reference its kernel is tested against
# (tests/test_ema.py).


def ema_averaged(avg: jax.Array, new_p: jax.Array, momentum: ArrayLike) -> jax.Array:
  """`ema_params`: the new average of the weights, ``momentum * avg + (1 - momentum) * new_p``
  (momentum 0 on the first update: the average starts as a copy), in the average's dtype."""
  mu = jnp.asarray(momentum, jnp.float32)
  dtype = avg.dtype
  return (mu.astype(dtype) * avg + (1 - mu).astype(dtype) * new_p.astype(dtype)).astype(dtype)


# ---------------------------------------------------------------- the block


class EmaParamsState(NamedTuple):
  """State of `ema_params`.

  Attributes:
    count: int32, shape ``()``: the number of calls so far.
    ema: per leaf, the moving average of the weights: the leaf's shape, in `dtype` (for complex
      weights, the complex type of that precision).
  """

  count: jax.Array  # type: ignore[assignment]  # (a field named as optax's, not tuple.count)
  ema: optax.Params


def ema_params(
    momentum: ArrayLike = 0.99,
    overwrite_frequency: Optional[int] = None,
    *,
    gradient_accumulation_steps: Optional[int] = None,
    dtype: Optional[DTypeLike] = jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""Keeps an exponential moving average of the *weights*, and periodically swaps it in (Keras's
  ``use_ema``).

  Place it last in a chain: it sees the final update :math:`u` and the current weights
  :math:`p`. With :math:`j` the number of applied updates before this call (the call count, or
  the call count // `gradient_accumulation_steps`):

  .. math::

     \mu &= \text{momentum} \cdot [j \neq 0] \\
     \bar p &\leftarrow \mu \bar p + (1 - \mu)(p + u) \\
     u &\leftarrow \bar p - p \quad \text{if } (j + 1) \bmod \text{overwrite\_frequency} = 0

  Use `finalize_variable_values` at the end of training to read the average.

  Args:
    momentum: the EMA coefficient, in [0, 1].
    overwrite_frequency: an integer >= 1: every that many updates the weights are replaced by
      their average; None never (call `finalize_variable_values` instead).
    gradient_accumulation_steps: the :math:`k` of an `accumulate_gradients` inside the chain
      (the average is still updated on every call, as Keras), or None.
    dtype: dtype of the average (float32; None: the weights' dtype, as Keras; for complex
      weights, the complex type of this precision).

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `EmaParamsState`; ``params`` are
    required.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import adafactor_jax
    >>> tx = optax.chain(optax.sgd(1.0), adafactor_jax.ema_params(0.9, overwrite_frequency=3))
    >>> params = jnp.array([3.0, 4.0])
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(jnp.ones(2), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(", ".join(f"{x:.4f}" for x in params))  # the average, swapped in at step 3
    1.7100, 2.7100
    >>> print(", ".join(f"{x:.4f}" for x in adafactor_jax.finalize_variable_values(params, state)))
    1.7100, 2.7100

  References:
    Polyak & Juditsky, Acceleration of stochastic approximation by averaging, 1992. Keras
    ``Optimizer(use_ema=..., ema_momentum=..., ema_overwrite_frequency=...)``.

  Notes:
    Keras's behaviour: the first update copies the weights (:math:`\mu = 0` while
    :math:`j = 0`, so with gradient accumulation for the whole first k calls); the average is
    updated on every call, including accumulation calls that do not move the weights; the
    overwrite test uses the update count. The average starts at zero, as in Keras, but
    `finalize_variable_values` before any step returns the params unchanged (Keras: zeros).
  """
  validation.check("momentum", momentum, rule="ema_momentum")
  if overwrite_frequency is not None:
    validation.check("overwrite_frequency", overwrite_frequency)
  if gradient_accumulation_steps is not None:
    validation.check("gradient_accumulation_steps", gradient_accumulation_steps)
  dtype = validation.check("dtype", dtype)
  k = 1 if gradient_accumulation_steps is None else int(gradient_accumulation_steps)
  name = "ema_params"

  def init_fn(params):
    return EmaParamsState(count=jnp.zeros([], jnp.int32),
                          ema=jax.tree.map(
                              lambda p: layout.zeros(p, layout.buffer_dtype(dtype, p.dtype)),
                              params))

  def kernel(leaves, state, params, ctx):
    tree_lib.require_params(name, params, "the weights are averaged")
    treedef = tree_lib.check_same_tree(name, params, ctx.like(leaves),
                                       expected_name="the params", same_shapes=True)
    j = state.count // k
    mu = (j != 0).astype(jnp.float32) * momentum
    overwrite = None if overwrite_frequency is None else (j + 1) % overwrite_frequency == 0
    new_ema = []
    for d, p, a in zip(leaves, treedef.flatten_up_to(params), treedef.flatten_up_to(state.ema)):
      if overwrite is None:
        # The update as the final pass computes it: XLA merges this p + u with that of
        # optax.apply_updates, so the average reads the new params.
        u = d.value()
      else:
        # Read apart (see docs/design/engine.md): else the update is stored, shared by the average
        # and the overwrite below. The overwrite reads the new average, which the state output
        # stores first (the params that the final pass overwrites are read before it).
        u = d.value_apart("ema")
      new_p = jnp.asarray(p + u).astype(p.dtype)  # as optax.apply_updates
      avg = ema_averaged(a, new_p, mu)
      new_ema.append(avg)
      if overwrite is not None:
        d.then(lambda u, avg, p, overwrite: jnp.where(
            overwrite, (avg.astype(p.dtype) - p).astype(u.dtype), u), avg, p, overwrite)
    return EmaParamsState(count=optax.safe_increment(state.count),
                          ema=treedef.unflatten(new_ema))

  return engine.transformation(init_fn, kernel)


def finalize_variable_values(params: optax.Params, opt_state: Any) -> optax.Params:
  """Returns the params with the EMA averages swapped in (Keras's ``finalize_variable_values``).

  Args:
    params: the current params.
    opt_state: an optimizer state; its `EmaParamsState` (from `ema_params`, or the presets'
      ``use_ema=True``) is used, or each of them for the leaves it averages (under
      ``optax.masked`` or ``optax.multi_transform``; the first found where two average one).

  Returns:
    The averages, cast to each param's dtype; `params` itself when the state holds no EMA, and
    the params' values before the first update.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import adafactor_jax
    >>> tx = adafactor_jax.keras_adadelta(1.0, use_ema=True, ema_momentum=0.5)
    >>> params = jnp.array([1.0])
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(jnp.ones(1), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params, adafactor_jax.finalize_variable_values(params, state))
    [0.9971535] [0.9978696]
    >>> adafactor_jax.finalize_variable_values(params, optax.sgd(1.0).init(params)) is params
    True

  References:
    Keras ``Optimizer.finalize_variable_values``.
  """
  states = tree_lib.find_states(opt_state, EmaParamsState)
  if not states:
    return params
  masked = lambda x: isinstance(x, optax.MaskedNode)
  out, treedef = jax.tree.flatten(params)
  done = [False] * len(out)
  for state in states:  # several under optax.multi_transform, each for its own leaves
    tree_lib.check_same_tree("finalize_variable_values", state.ema, params,
                             expected_name="the EMA", got_name="the params",
                             expected_is_leaf=masked, same_shapes=True)
    started = state.count > 0
    for i, a in enumerate(jax.tree.leaves(state.ema, is_leaf=masked)):
      if not done[i] and not masked(a):  # (optax.masked: a leaf this EMA does not average)
        out[i], done[i] = jnp.where(started, a.astype(jnp.asarray(out[i]).dtype), out[i]), True
  return jax.tree.unflatten(treedef, out)
