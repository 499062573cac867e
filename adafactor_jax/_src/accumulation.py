"""Gradient accumulation as Keras does it: the inner transformation runs once every k calls, on
the mean gradient."""

from __future__ import annotations

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
# (tests/test_accumulation.py).


def mean_gradient(g: jax.Array, acc: jax.Array, k: ArrayLike) -> jax.Array:
  """`accumulate_gradients` on an update step: the mean of the `k` micro-step gradients,
  ``(g + acc) / k`` (`acc`: the sum of the `k - 1` before), in the gradient's dtype."""
  dtype = jnp.result_type(g.dtype, acc.dtype)
  return ((g.astype(dtype) + acc) / jnp.asarray(k, dtype)).astype(g.dtype)


# ---------------------------------------------------------------- the block


class AccumulateGradientsState(NamedTuple):
  """State of `accumulate_gradients`.

  Attributes:
    count: int32, shape ``()``: the number of calls (micro-steps) so far.
    acc: per leaf, the sum of the micro-step gradients since the last update: the leaf's shape,
      in `accumulator_dtype`.
    inner_state: the wrapped transformation's state; it changes on update steps only.
  """

  count: jax.Array  # type: ignore[assignment]  # (a field named as optax's, not tuple.count)
  acc: optax.Params
  inner_state: optax.OptState


def accumulate_gradients(
    inner: optax.GradientTransformation,
    gradient_accumulation_steps: int,
    *,
    accumulator_dtype: Optional[DTypeLike] = jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""Keras-style gradient accumulation: `inner` runs once every `k` calls on the mean gradient.

  With :math:`n` the 0-based call count and :math:`k` = `gradient_accumulation_steps`:

  .. math::

     \text{if } (n+1) \bmod k = 0:&\quad u = \mathrm{inner}\big((g_n + A)/k\big),\; A = 0 \\
     \text{else}:&\quad u = 0,\; A \leftarrow A + g_n

  Args:
    inner: the transformation applied on update steps (its state changes only then, so an
      Adafactor step counter inside it counts applied updates).
    gradient_accumulation_steps: :math:`k`, an integer >= 2.
    accumulator_dtype: dtype of the running sum :math:`A` (float32; None: the leaf's dtype, as
      Keras; for a complex leaf, the complex type of this precision).

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `AccumulateGradientsState`; the
    updates are zero on the other calls.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import adafactor_jax
    >>> tx = adafactor_jax.accumulate_gradients(optax.sgd(1.0), 2)
    >>> state = tx.init(jnp.zeros(1))
    >>> u, state = tx.update(jnp.array([1.0]), state)
    >>> print(u)
    [0.]
    >>> u, state = tx.update(jnp.array([3.0]), state)
    >>> print(u)
    [-2.]

  References:
    Keras ``Optimizer(gradient_accumulation_steps=...)``; ``optax.MultiSteps`` is the general
    optax form.

  Notes:
    Keras's semantics, pinned by its ``test_gradient_accumulation_with_weigth_decay``: a
    learning-rate schedule in Keras sees every call (its ``_iterations``) while the optimizer's
    step counter counts applied updates; the Keras presets pass the inner blocks the schedule
    shifted to the call at which each update happens, ``lr(k*j + k - 1)`` for update ``j``. On
    other calls `inner` is not evaluated (``lax.cond``), whereas Keras's JAX backend computes the
    full update and discards it.
  """
  validation.check_transformation("inner", inner)
  validation.check("gradient_accumulation_steps", gradient_accumulation_steps)
  accumulator_dtype = validation.check("accumulator_dtype", accumulator_dtype)
  inner_kernel = engine.kernel_of(inner)
  inner = optax.with_extra_args_support(inner)
  k = int(gradient_accumulation_steps)
  name = "accumulate_gradients"

  def init_fn(params):
    acc = jax.tree.map(
        lambda p: layout.zeros(p, layout.buffer_dtype(accumulator_dtype, p.dtype)), params)
    return AccumulateGradientsState(count=jnp.zeros([], jnp.int32), acc=acc,
                                    inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    tree_lib.check_same_tree(name, state.acc, updates, same_shapes=True)
    is_update = (state.count + 1) % k == 0

    def apply(operands):
      grads, acc, inner_state = operands
      sums = jax.tree.structure(grads).flatten_up_to(acc)

      def mean_gradient_formula(i, d):
        # The mean gradient is the formula that the inner transformation starts from: its
        # reductions compute it, it is not stored.
        a = sums[i]
        dtype = jnp.result_type(d.dtype, a.dtype)
        d.then_apart(lambda x, a, k, out=d.dtype: ((x + a) / k).astype(out), a,
                     engine.operand(k, dtype, len(d.shape)), dtype=dtype)

      u, new_inner = engine.run_on_formulas(inner, inner_kernel, grads, mean_gradient_formula,
                                            inner_state, params, extra_args)
      return jax.tree.map(lambda x, g: x.astype(g.dtype), u, grads), new_inner

    def skip(operands):
      grads, _, inner_state = operands
      return jax.tree.map(jnp.zeros_like, grads), inner_state

    u, inner_state = jax.lax.cond(is_update, apply, skip, (updates, state.acc, state.inner_state))
    # The sums restart from zero after an update. Computed outside the cond, where XLA writes
    # them in place (a cond's outputs are buffers of their own), and after it.
    acc = jax.tree.map(
        lambda g, a, u: jnp.where(
            engine.ordered_after(is_update, u),
            jnp.zeros_like(a), (g.astype(jnp.result_type(g.dtype, a.dtype)) + a).astype(a.dtype)),
        updates, state.acc, u)
    return u, AccumulateGradientsState(count=optax.safe_increment(state.count), acc=acc,
                                       inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
