"""Atomic skipping of steps whose gradients are not finite."""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from adafactor_jax._src import validation


class SkipNonFiniteState(NamedTuple):
  """State of `skip_nonfinite`.

  Attributes:
    inner_state: the wrapped transformation's state, unchanged by skipped steps.
    skipped: int32, shape ``()``: the number of steps skipped so far.
  """

  inner_state: optax.OptState
  skipped: jax.Array


def all_finite(tree: Any) -> jax.Array:
  """True when every element of every inexact leaf of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Wraps `inner` so that a step with a NaN or Inf gradient changes nothing.

  On such a step the update is zero, the inner state (every statistic, momentum, EMA and step
  counter) keeps its old value, and the ``skipped`` counter advances; on a finite step `inner`
  runs as usual. The decision is taken on the device with ``lax.cond`` (no host
  synchronisation under ``jax.jit``). Every optimizer of the package accepts
  ``skip_nonfinite=True``, which applies this wrapper; `skipped_steps` reads the counter.

  Args:
    inner: the transformation to protect.

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `SkipNonFiniteState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.skip_nonfinite(adafactor_jax.adafactor(0.1))
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([1.0, jnp.nan, 0.0])}, state, params)
    >>> print(updates["w"], adafactor_jax.skipped_steps(state))
    [0. 0. 0.] 1

  Notes:
    t5x's ``skip_nan_updates`` replaces NaN element by element (a step can be half applied) and
    lets Inf through; optax's ``apply_if_finite`` skips whole steps too but counts differently.
  """
  validation.check_transformation("inner", inner)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return SkipNonFiniteState(inner_state=inner.init(params), skipped=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    finite = all_finite(updates)

    def apply(operand):
      u, s = operand
      return inner.update(u, s, params, **extra_args)

    def skip(operand):
      u, s = operand
      return jax.tree.map(jnp.zeros_like, u), s

    # sanitise the gradients so that the untaken branch sees no NaN either
    safe = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), updates)
    operand = (safe, state.inner_state)
    try:
      new_updates, inner_state = jax.lax.cond(finite, apply, skip, operand)
    except TypeError:
      # `inner` returns updates (or state) of other dtypes than it was given (optax's momentum
      # in float32 for bfloat16 gradients): the skipped step gives zeros and the old state in
      # those dtypes. Traced again only then.
      out = jax.eval_shape(apply, operand)

      def skip_typed(operand, out=out):
        u, s = operand
        return (jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), out[0]),
                jax.tree.map(lambda x, t: jnp.asarray(x, t.dtype), s, out[1]))

      new_updates, inner_state = jax.lax.cond(finite, apply, skip_typed, operand)
    skipped = state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32)
    return new_updates, SkipNonFiniteState(inner_state=inner_state, skipped=skipped)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def skipped_steps(state: Any) -> jax.Array:
  """The number of steps skipped for non-finite gradients, read from any optimizer state.

  Args:
    state: an optimizer state (possibly nested in chains and wrappers).

  Returns:
    An int32 scalar: the sum of the ``skipped`` counters of every `SkipNonFiniteState` inside
    `state` (0 when there is none).

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.adafactor(0.1, skip_nonfinite=True)
    >>> state = tx.init({"w": jnp.ones(3)})
    >>> int(adafactor_jax.skipped_steps(state))
    0
  """
  found = [s.skipped for s in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, SkipNonFiniteState))
           if isinstance(s, SkipNonFiniteState)]
  return sum(found[1:], found[0]) if found else jnp.zeros([], jnp.int32)
