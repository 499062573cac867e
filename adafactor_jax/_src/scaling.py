"""The learning rate (and Adafactor's relative step size), the parameter scale and momentum."""

from __future__ import annotations

from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from adafactor_jax._src import block_rms
from adafactor_jax._src import engine
from adafactor_jax._src import factoring
from adafactor_jax._src import layout
from adafactor_jax._src import masks
from adafactor_jax._src import tree as tree_lib
from adafactor_jax._src import validation

# ---------------------------------------------------------------- the math, one leaf at a time
# What each block computes, written plainly: the reference its kernel is tested against
# (tests/test_scaling.py).


def learning_rate_scaled(u: jax.Array, learning_rate: ArrayLike, flip_sign: bool = True
                         ) -> jax.Array:
  """`scale_by_learning_rate`: ``-lr * u`` (``lr * u`` without `flip_sign`)."""
  return (u * ((-1.0 if flip_sign else 1.0) * jnp.asarray(learning_rate))).astype(u.dtype)


def param_scaled(u: jax.Array, p: jax.Array, min_scale: ArrayLike,
                 max_scale: Optional[ArrayLike] = None,
                 axes: Optional[tuple[int, ...]] = None) -> jax.Array:
  """`scale_by_param_block_rms`: ``u * clip(rms(p), min_scale, max_scale)``, the RMS over `axes`
  (all by default) in at least float32."""
  dtype = jnp.promote_types(jnp.abs(p).dtype, jnp.float32)
  rms = jnp.sqrt(jnp.mean(jnp.square(jnp.abs(p).astype(dtype)), axis=axes, keepdims=True))
  scale = jnp.maximum(rms, min_scale)
  if max_scale is not None:
    scale = jnp.minimum(scale, max_scale)
  return (u * scale.astype(u.dtype)).astype(u.dtype)


def momentum_averaged(u: jax.Array, m: jax.Array, decay: ArrayLike) -> jax.Array:
  """`scale_by_momentum`: the new average ``(1 - decay) * u + decay * m``, which is the update."""
  return jnp.asarray((1.0 - decay) * u + decay * m)


# ---------------------------------------------------------------- the blocks


class ScaleByScheduleState(NamedTuple):
  """State of `scale_by_learning_rate` with a schedule.

  Attributes:
    count: int32, shape ``()``: the number of schedule evaluations so far (the schedule's step).
  """

  count: jax.Array  # type: ignore[assignment]  # (a field named as optax's, not tuple.count)


def scale_by_learning_rate(
    learning_rate: optax.ScalarOrSchedule,
    *,
    flip_sign: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Multiplies updates by the learning rate, and by -1 for descent (``flip_sign=True``).

  .. math:: u \leftarrow -\eta_t\, u

  Args:
    learning_rate: a non-negative float, or a schedule ``count -> learning rate`` evaluated at
      the number of previous calls.
    flip_sign: negate the update, so that `optax.apply_updates` descends.

  Returns:
    An `optax.GradientTransformationExtraArgs`; its state holds a step count only for a schedule.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.scale_by_learning_rate(0.1)
    >>> updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(None))
    >>> print(updates["w"])
    [-0.1 -0.1]

  References:
    As ``optax.scale_by_learning_rate``.
  """
  validation.check("learning_rate", learning_rate)
  validation.check("flip_sign", flip_sign)
  sign = -1.0 if flip_sign else 1.0

  if callable(learning_rate):
    def init_fn(params):
      del params
      return ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def kernel(leaves, state, params, ctx):
      del params, ctx
      _scale_all(leaves, sign * jnp.asarray(learning_rate(state.count)))
      return ScaleByScheduleState(count=optax.safe_increment(state.count))

    return engine.transformation(init_fn, kernel)

  def kernel_const(leaves, state, params, ctx):
    del params, ctx
    _scale_all(leaves, sign * jnp.asarray(learning_rate))
    return state

  return engine.transformation(engine.init_empty, kernel_const)


def _scale_all(leaves: list[engine.Deferred], x: jax.Array) -> None:
  """Every leaf's update times the scalar `x`, converted once per dtype of the leaves."""
  converted = {}
  for d in leaves:
    if d.dtype not in converted:
      converted[d.dtype] = x.astype(d.dtype)
    d.scale(converted[d.dtype])


def times(a: optax.ScalarOrSchedule, b: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
  """``a * b`` for numbers or schedules: a schedule when either is one."""
  if not callable(a) and not callable(b):
    return a * b
  at = lambda x, count: x(count) if callable(x) else x
  return lambda count: at(a, count) * at(b, count)


def relative_step_size(
    max_rate: optax.ScalarOrSchedule = 1e-2,
    *,
    warmup_rate: Optional[ArrayLike] = None,
) -> optax.Schedule:
  r"""Adafactor's relative step size as a schedule, for `scale_by_learning_rate`.

  .. math:: \rho_t = \min(c_t,\; w\,t,\; 1/\sqrt{t}), \qquad t = \text{count} + 1

  where :math:`c_t` is `max_rate` and the :math:`w t` term is present only with `warmup_rate`.
  The paper's default is ``max_rate=1e-2`` (PyTorch's ``lr`` is this cap); transformers'
  ``warmup_init=True`` is ``warmup_rate=1e-6``, whose ``min(1e-6 t, 1/sqrt(t))`` never exceeds
  ``1e-2``, so the cap changes nothing there.

  Args:
    max_rate: the cap :math:`c` (>= 0): a float, or a schedule ``count -> cap`` (a PyTorch
      ``lr`` changed by an LR scheduler).
    warmup_rate: optional linear warm-up slope :math:`w` (> 0).

  Returns:
    A schedule ``count -> rho`` (float32), with ``count`` the number of previous steps.

  Examples:
    >>> import adafactor_jax
    >>> rho = adafactor_jax.relative_step_size(1e-2)
    >>> print(rho(0), rho(9999), rho(39999))
    0.01 0.01 0.005
    >>> warm = adafactor_jax.relative_step_size(warmup_rate=1e-6)
    >>> print(f"{warm(0):.1e} {warm(99):.1e}")
    1.0e-06 1.0e-04

  References:
    Shazeer & Stern, `Adafactor <https://arxiv.org/abs/1804.04235>`_, 2018, section 8
    (:math:`\rho_t = \min(10^{-2}, 1/\sqrt{t})`).

  Notes:
    PyTorch and transformers compute the step size in Python double precision; here it is
    float32 (a relative difference below 1e-7).
  """
  validation.check("max_rate", max_rate)
  if warmup_rate is not None:
    validation.check("warmup_rate", warmup_rate)

  def schedule(count):
    t = jnp.asarray(count, jnp.float32) + 1.0
    cap = max_rate(count) if callable(max_rate) else max_rate
    rho = jnp.minimum(jnp.asarray(cap, jnp.float32), jax.lax.rsqrt(t))
    if warmup_rate is not None:
      rho = jnp.minimum(rho, jnp.asarray(warmup_rate, jnp.float32) * t)
    return rho

  return schedule


def scale_by_param_block_rms(
    min_scale: ArrayLike = 1e-3,
    *,
    max_scale: Optional[ArrayLike] = None,
    factor_rule: Optional[factoring.FactorRule] = None,
    mask: masks.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales each leaf's update by the root mean square of its parameter.

  .. math:: u \leftarrow u \cdot \mathrm{clip}(\mathrm{RMS}(p), \text{min\_scale},
     \text{max\_scale})

  Args:
    min_scale: floor of the scale (Adafactor's :math:`\epsilon_2`, >= 0).
    max_scale: optional cap of the scale (t5x's ``max_parameter_scale``).
    factor_rule: optional factoring rule whose ``batch`` dims get one RMS per slice (t5x).
    mask: optional pytree of bools with the params' structure, or a callable ``params -> such a
      tree``: leaves where it is False pass through unscaled (t5x's per-path
      ``multiply_by_parameter_scale``). None scales every leaf.

  Returns:
    An `optax.GradientTransformationExtraArgs` with an empty state; ``params`` are required.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.scale_by_param_block_rms()
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> print(updates["w"])
    [3.535534 3.535534]

  References:
    Shazeer & Stern, `Adafactor <https://arxiv.org/abs/1804.04235>`_, 2018, section 8.

  Notes:
    The RMS is computed in float32 for half-precision params (optax: in the param dtype).
  """
  validation.check("min_scale", min_scale)
  if max_scale is not None:
    validation.check("max_scale", max_scale)
  validation.check("mask", mask)
  rules = block_rms.rules_of(factor_rule)
  name = "scale_by_param_block_rms"

  def kernel(leaves, state, params, ctx):
    tree_lib.require_params(name, params, "the update is scaled by the RMS of each parameter")
    treedef = tree_lib.check_same_tree(name, params, ctx.like(leaves), expected_name="the params",
                                       same_shapes=True)
    for d, p, plan, m in zip(leaves, treedef.flatten_up_to(params),
                             block_rms.plans(rules, leaves, ctx),
                             masks.resolve_mask(mask, params, treedef, name)):
      if isinstance(m, (bool, np.bool_)) and not m:
        continue
      dtype = jnp.promote_types(jnp.finfo(p.dtype).dtype if jnp.iscomplexobj(p) else p.dtype,
                                jnp.float32)
      scale = jnp.maximum(block_rms.block_rms(p, plan, dtype, ctx.link), min_scale)
      if max_scale is not None:
        scale = jnp.minimum(scale, max_scale)
      if not isinstance(m, (bool, np.bool_)):
        scale = jnp.where(m, scale, 1.0)
      d.scale(scale)
    return state

  return engine.transformation(engine.init_empty, kernel)


class ScaleByMomentumState(NamedTuple):
  """State of `scale_by_momentum`.

  Attributes:
    mu: per leaf, the moving average of the updates: the leaf's shape, in `accumulator_dtype`
      (for a complex leaf, the complex type of that precision).
  """

  mu: optax.Params


def scale_by_momentum(
    decay: ArrayLike = 0.9,
    *,
    accumulator_dtype: Optional[DTypeLike] = jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""Replaces updates by an exponential moving average of them (no debiasing).

  .. math:: m_t = \beta m_{t-1} + (1 - \beta) u_t, \qquad u \leftarrow m_t

  This is Adafactor's optional momentum (optax's ``ema(debias=False)``, t5x's ``beta1``,
  transformers' ``beta1``, big_vision's momentum); where it sits in the chain decides whether it
  averages raw or learning-rate-scaled updates.

  Args:
    decay: :math:`\beta`, in [0, 1).
    accumulator_dtype: dtype of the stored average (``None``: the update's dtype; for a
      complex leaf, the complex type of this precision). The update returned is computed
      before rounding to this dtype, as optax.

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `ScaleByMomentumState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.scale_by_momentum(0.9)
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> updates, state = tx.update({"w": jnp.ones(2)}, state)
    >>> print(updates["w"])
    [0.1 0.1]

  References:
    Zhai et al., `Scaling Vision Transformers <https://arxiv.org/abs/2106.04560>`_, 2021.
  """
  validation.check("decay", decay)
  accumulator_dtype = validation.check("accumulator_dtype", accumulator_dtype)

  def init_fn(params):
    return ScaleByMomentumState(mu=jax.tree.map(
        lambda p: layout.zeros(p, layout.buffer_dtype(accumulator_dtype, p.dtype)), params))

  def average(u, m):
    return momentum_averaged(u, m, decay)

  def kernel(leaves, state, params, ctx):
    del params
    treedef = tree_lib.check_same_tree("scale_by_momentum", state.mu, ctx.like(leaves),
                                       same_shapes=True)
    new = []
    for d, m in zip(leaves, treedef.flatten_up_to(state.mu)):
      d.flush()  # the average of exactly the updates of the blocks one by one
      mu = average(d.value(), m)
      new.append(mu.astype(m.dtype))
      if mu.dtype == m.dtype:  # the stored average is exactly the update: read it back
        d.reset(new[-1], lambda x, dtype=d.dtype: x.astype(dtype))
      else:
        d.then(lambda u, m: average(u, m).astype(u.dtype), m)
    return ScaleByMomentumState(mu=treedef.unflatten(new))

  return engine.transformation(init_fn, kernel)
