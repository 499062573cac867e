"""`scale_by_adadelta`: Zeiler's Adadelta preconditioner."""

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
from adafactor_jax._src.factored import abs_sq
from adafactor_jax._src.factored import square
from adafactor_jax._src.factored import stat_floor
from adafactor_jax._src.factored import stats_dtype_for


class ScaleByAdadeltaState(NamedTuple):
  """State of `scale_by_adadelta`.

  Attributes:
    e_g: per leaf, the moving average of ``g**2``: the leaf's shape, in the stats dtype.
    e_x: per leaf, the moving average of the squared update (at unit learning rate): the leaf's
      shape, in the stats dtype.
  """

  e_g: optax.Params
  e_x: optax.Params


# ---------------------------------------------------------------- the math, one leaf at a time


def adadelta_scaled(g: jax.Array, e_g: jax.Array, e_x: jax.Array, rho: ArrayLike,
                    eps: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
  """What `scale_by_adadelta` computes for one leaf, written plainly (Zeiler's Algorithm 1):
  ``(update, new E[g**2], new E[delta**2])``; the reference its kernel is tested against
  (tests/test_adadelta.py)."""
  dtype = e_g.dtype
  new_e_g = rho * e_g + (1.0 - rho) * square(g, dtype)
  delta = jnp.sqrt(e_x + eps) / jnp.sqrt(new_e_g + eps) * g
  new_e_x = rho * e_x + (1.0 - rho) * square(delta, dtype)
  return delta.astype(g.dtype), jnp.asarray(new_e_g, dtype), jnp.asarray(new_e_x, dtype)


# ---------------------------------------------------------------- the block


def scale_by_adadelta(
    rho: ArrayLike = 0.9,
    eps: ArrayLike = 1e-6,
    *,
    stats_dtype: Optional[DTypeLike] = jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates with Adadelta's ratio of update and gradient RMS (no sign flip).

  .. math::

     E[g^2]_t &= \rho E[g^2]_{t-1} + (1-\rho) g_t^2 \\
     \Delta_t &= \sqrt{E[\Delta^2]_{t-1} + \epsilon} \,/\, \sqrt{E[g^2]_t + \epsilon}\; g_t \\
     E[\Delta^2]_t &= \rho E[\Delta^2]_{t-1} + (1-\rho) \Delta_t^2

  Args:
    rho: decay of both averages, in [0, 1].
    eps: added inside both square roots (>= 0).
    stats_dtype: dtype of the two averages (float32 by default; None: the param dtype).

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `ScaleByAdadeltaState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.scale_by_adadelta(rho=0.95, eps=1e-7)
    >>> updates, state = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))
    >>> print(updates["w"])  # sqrt(eps / (1 - rho)) on the first step
    [0.00141421 0.00141421]

  References:
    Zeiler, `ADADELTA: An Adaptive Learning Rate Method <https://arxiv.org/abs/1212.5701>`_, 2012.
  """
  validation.check("rho", rho)
  validation.check("eps", eps)
  stats_dtype = validation.check("stats_dtype", stats_dtype)
  name = "scale_by_adadelta"

  def init_fn(params):
    zeros = lambda p: layout.zeros(p, stats_dtype_for(p.dtype, stats_dtype))
    return ScaleByAdadeltaState(e_g=jax.tree.map(zeros, params), e_x=jax.tree.map(zeros, params))

  def kernel(leaves, state, params, ctx):
    del params
    treedef = tree_lib.check_same_tree(name, state.e_g, ctx.like(leaves), same_shapes=True)
    e_gs, e_xs = [], []
    for d, e_g, e_x in zip(leaves, treedef.flatten_up_to(state.e_g),
                           treedef.flatten_up_to(state.e_x)):
      dtype, work = e_g.dtype, jnp.result_type(d.dtype, e_g.dtype)
      new_e_g = ((1.0 - rho) * abs_sq(d.value_apart("v"), dtype) + rho * e_g).astype(dtype)

      def delta(g, e_x, new_e_g, eps, work=work, tiny=stat_floor(dtype)):
        # The denominator floored (`stat_floor`): with eps=0 (or an eps that underflows in a
        # half-precision statistic) a zero gradient would give 0/0 = NaN, as in Keras and optax.
        # Wherever E[g**2] + eps is at least the floor nothing changes.
        return jnp.sqrt(e_x + eps) / jnp.sqrt(jnp.maximum(new_e_g + eps, tiny)) * g.astype(work)

      # The update is a formula (see docs/design/engine.md): computed apart for the new E[delta**2],
      # and again in the final pass, never stored.
      args = (e_x, new_e_g, engine.operand(eps, dtype, len(d.shape)))
      unrounded = d.derived(delta, *args, dtype=work)  # (before it is rounded to d.dtype)
      new_e_x = ((1.0 - rho) * abs_sq(unrounded.value_apart("delta"), dtype) + rho * e_x
                 ).astype(dtype)
      d.then(lambda g, *a, delta=delta: delta(g, *a).astype(g.dtype), *args)
      e_gs.append(new_e_g)
      e_xs.append(new_e_x)
    return ScaleByAdadeltaState(e_g=treedef.unflatten(e_gs), e_x=treedef.unflatten(e_xs))

  return engine.transformation(init_fn, kernel)
