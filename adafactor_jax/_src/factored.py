"""`scale_by_factored_rms`: Adafactor's factored second-moment estimate and its state."""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Callable
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import tree_util
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from adafactor_jax._src import factoring
from adafactor_jax._src import tree as tree_lib
from adafactor_jax._src import validation


def decay_rate_pow(step: ArrayLike, decay_rate: ArrayLike = 0.8) -> jax.Array:
  """Adafactor's second-moment decay schedule: ``1 - (step + 1) ** -decay_rate`` in float32."""
  t = jnp.asarray(step + 1, jnp.float32)
  return 1.0 - t ** (-jnp.asarray(decay_rate, jnp.float32))


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class FactorPlans:
  """Each leaf's `factoring.LeafPlan`, in flattening order: static data, no arrays.

  Kept in the state's tree structure (not its leaves) so that `state_shardings` can tell which
  dims of a parameter each statistic keeps; jit, checkpoints and tree maps never see it.
  """

  plans: tuple


class ScaleByFactoredRMSState(NamedTuple):
  """State of `scale_by_factored_rms`. Each tree mirrors the params, with ``None`` where unused.

  Only what a leaf needs is stored: a factored leaf has ``v_row`` and ``v_col`` and ``None`` in
  ``v``; an unfactored leaf has ``v`` and ``None`` in ``v_row``/``v_col`` (no placeholders).
  """

  count: jax.Array  # int32 scalar: number of update steps taken.
  v_row: Any  # per factored leaf: EMA of mean(g**2) over the col dims (shape without col dims).
  v_col: Any  # per factored leaf: EMA of mean(g**2) over the row dims (shape without row dims).
  v: Any  # per unfactored leaf: EMA of g**2, the leaf's shape.
  plans: Any = None  # FactorPlans: static, no arrays (which dims each statistic keeps).


def abs_sq(x: jax.Array, dtype: DTypeLike) -> jax.Array:
  """``|x|**2`` computed in the real dtype `dtype`, saturated so that statistics stay finite.

  A square that would overflow (a gradient near the dtype's maximum) is capped at
  ``finfo(dtype).max / (2 * x.size)``, so that sums and moving averages of the squares over the
  leaf stay finite too. Ordinary values are far below the cap and are not changed.
  """
  cap = float(jnp.finfo(dtype).max) / (2.0 * max(1, x.size))
  if jnp.iscomplexobj(x):
    x = x.astype(jnp.result_type(dtype, jnp.complex64))
    sq = (jnp.real(x) ** 2 + jnp.imag(x) ** 2).astype(dtype)
  else:
    x = x.astype(dtype)
    sq = x * x
  return jnp.minimum(sq, jnp.asarray(cap, dtype))


def as_dtype(dtype: Any) -> Optional[jnp.dtype]:
  """`dtype` as a NumPy dtype (None stays None).

  ``optax.inject_hyperparams`` treats every callable argument as a schedule, so a dtype default
  such as ``jnp.float32`` reaches the factory as ``jnp.float32(count)``, an array of that
  dtype: its dtype is the one meant.
  """
  if dtype is None:
    return None
  if hasattr(dtype, "dtype") and not isinstance(dtype, (np.dtype, type)):
    return jnp.dtype(dtype.dtype)
  return jnp.dtype(dtype)


def stats_dtype_for(param_dtype: DTypeLike, stats_dtype: Optional[DTypeLike]) -> jnp.dtype:
  """The dtype of a leaf's statistics: `stats_dtype`, or the param's real dtype when None."""
  dtype = as_dtype(param_dtype if stats_dtype is None else stats_dtype)
  return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


def factored_second_moment(
    g2: jax.Array, v_row: jax.Array, v_col: jax.Array, beta2: jax.Array,
    plan: factoring.LeafPlan, floor: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array, tuple[jax.Array, ...]]:
  """New row and column statistics, and the factors whose product is the rsqrt of the rank-1
  estimate (broadcastable to the leaf; multiplied into the gradient in this order, as optax).

  With ``floor`` (PyTorch's clamped epsilon) the mean of the row statistic is clamped to at least
  ``floor`` and the estimate to at least ``floor**2`` before the rsqrt (a single factor).
  """
  dtype = v_row.dtype
  new_row = (beta2 * v_row + (1.0 - beta2) * jnp.mean(g2, axis=plan.col_dims)).astype(dtype)
  new_col = (beta2 * v_col + (1.0 - beta2) * jnp.mean(g2, axis=plan.row_dims)).astype(dtype)
  row_mean = jnp.mean(new_row, axis=plan.row_dims_in_row_stat(), keepdims=True)
  # Floors at the smallest normal number: an underflowing ratio or a zero statistic (eps=0 and
  # zero gradients) would give inf, and 0 * inf = NaN. Ordinary values are not changed.
  tiny = jnp.asarray(jnp.finfo(dtype).tiny, dtype)
  if floor is None:
    row_factor = jnp.maximum(new_row / row_mean, tiny) ** -0.5
    col_factor = jnp.maximum(new_col, tiny) ** -0.5
    return new_row, new_col, (jnp.expand_dims(row_factor, plan.col_dims),
                              jnp.expand_dims(col_factor, plan.row_dims))
  v_hat = (jnp.expand_dims(new_row, plan.col_dims) * jnp.expand_dims(new_col, plan.row_dims)
           / jnp.expand_dims(jnp.maximum(row_mean, floor), plan.col_dims))
  return new_row, new_col, (jax.lax.rsqrt(jnp.maximum(jnp.maximum(v_hat, floor * floor), tiny)),)


def stats_tree(state: ScaleByFactoredRMSState) -> Any:
  """A tree with the params' structure: each leaf's row statistic, or its second moment.

  (``None`` in the params, as `equinox.filter` leaves, stays ``None``.)
  """
  return jax.tree.map(lambda v, r: r if v is None else v, state.v, state.v_row,
                      is_leaf=tree_lib.is_none)


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: ArrayLike = 0.8,
    step_offset: ArrayLike = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: ArrayLike = 1e-30,
    decay_rate_fn: Callable[[ArrayLike, ArrayLike], ArrayLike] = decay_rate_pow,
    *,
    factor_rule: factoring.FactorRule = "largest",
    stats_dtype: Optional[DTypeLike] = jnp.float32,
    epsilon_mode: str = "add",
) -> optax.GradientTransformationExtraArgs:
  r"""Scales updates by a factored estimate of the root mean square of past gradients.

  The heart of Adafactor. For a factored leaf :math:`G` (row dims :math:`r`, col dims :math:`c`):

  .. math::

     \hat\beta_{2,t} &= 1 - t^{-\text{decay\_rate}}, \quad t = \max(\text{count} -
       \text{step\_offset}, 0) + 1 \\
     R_t &= \hat\beta_{2,t} R_{t-1} + (1 - \hat\beta_{2,t})\,\mathrm{mean}_c(G^2 + \epsilon) \\
     C_t &= \hat\beta_{2,t} C_{t-1} + (1 - \hat\beta_{2,t})\,\mathrm{mean}_r(G^2 + \epsilon) \\
     U_t &= G \,/\, \sqrt{R_t C_t / \mathrm{mean}_r(R_t)}

  and for an unfactored leaf :math:`V_t = \hat\beta_{2,t} V_{t-1} + (1-\hat\beta_{2,t})(G^2 +
  \epsilon)`, :math:`U_t = G / \sqrt{V_t}`.

  With ``epsilon_mode="clamp"`` (PyTorch's ``torch.optim.Adafactor``) nothing is added to
  :math:`G^2`; instead :math:`U_t = G / \sqrt{\max(R_t C_t / \max(\mathrm{mean}_r(R_t),
  \epsilon), \epsilon^2)}` (unfactored: :math:`G / \sqrt{\max(V_t, \epsilon^2)}`).

  Args:
    factored: whether to factor the second moment of leaves of rank >= 2 at all.
    decay_rate: the exponent of the second-moment decay schedule (>= 0; 0 keeps only the
      latest squared gradient, as PyTorch's ``beta2_decay=0``).
    step_offset: subtracted from the step count before the decay schedule (fine-tuning from a
      restored counter). Steps before the offset behave like the first step.
    min_dim_size_to_factor: a leaf is factored only if both factored dims are at least this
      large (for ``factor_rule="largest"`` or ``"last"``).
    epsilon: added to the squared gradient (>= 0); with ``epsilon_mode="clamp"`` the floor
      :math:`\epsilon` instead, where ``None`` means ``jnp.finfo(dtype).eps`` of each leaf's
      gradient dtype.
    decay_rate_fn: ``(step, decay_rate) -> beta2``; the default is `decay_rate_pow`. Pass e.g.
      ``lambda t, d: jnp.minimum(0.999, decay_rate_pow(t, d))`` for big_vision's capped beta2.
    factor_rule: which dims are factored: ``"largest"`` (default, as optax), ``"last"`` (as
      Keras/PyTorch/transformers), or explicit per key-path rules (see `factoring`).
    stats_dtype: dtype of the statistics (float32 by default, whatever the parameter dtype);
      ``None`` keeps the parameter's dtype, as optax does.
    epsilon_mode: ``"add"`` (the paper, optax, t5x, transformers, Keras) or ``"clamp"``
      (PyTorch): where :math:`\epsilon` enters, see above.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is `ScaleByFactoredRMSState`. The
    updates come out in the gradients' dtype; ``params`` are not needed.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.scale_by_factored_rms(min_dim_size_to_factor=2)
    >>> params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    >>> state = tx.init(params)
    >>> state.v_row["w"].shape, state.v_col["w"].shape, state.v["w"], state.v["b"].shape
    ((3,), (4,), None, (4,))
    >>> updates, state = tx.update({"w": jnp.full((3, 4), 2.0), "b": jnp.ones(4)}, state)
    >>> print(updates["w"][0, 0], updates["b"][0])
    1.0 1.0

  References:
    Shazeer & Stern, `Adafactor: Adaptive Learning Rates with Sublinear Memory Cost
    <https://arxiv.org/abs/1804.04235>`_, 2018.

  Notes:
    Differs from ``optax.scale_by_factored_rms``: no ``(1,)`` placeholder arrays in the state;
    ``epsilon_mode`` (optax only adds);
    statistics in float32 by default (optax: parameter dtype, where bf16 statistics freeze and
    f16 ones give NaN for small gradients); the step is clamped so that ``step_offset`` larger
    than the count gives finite updates (optax: inf/NaN); ``params`` is optional.
  """
  validation.check_number("decay_rate", decay_rate, low=0.0)
  validation.check_choice("epsilon_mode", epsilon_mode, ("add", "clamp"))
  if epsilon is not None or epsilon_mode == "add":
    validation.check_number("epsilon", epsilon, low=0.0)
  validation.check_number("step_offset", step_offset)
  validation.check_int("min_dim_size_to_factor", min_dim_size_to_factor, low=0)
  if not callable(decay_rate_fn):
    raise ValueError(f"decay_rate_fn must be callable (step, decay_rate) -> beta2, got "
                     f"{decay_rate_fn!r}.")
  stats_dtype = as_dtype(stats_dtype)
  if stats_dtype is not None and not jnp.issubdtype(stats_dtype, jnp.floating):
    raise ValueError(f"stats_dtype={stats_dtype!r} must be a floating dtype or None.")
  rules = factoring.as_rules(factor_rule, factored=bool(factored),
                             min_dim_size_to_factor=int(min_dim_size_to_factor))
  name = "scale_by_factored_rms"

  def init_fn(params):
    v_row, v_col, v, plans = [], [], [], []
    leaves, treedef = tree_lib.flatten_params(params)
    for path, p in leaves:
      plan = rules.plan(path, p.shape)
      plans.append(plan)
      dtype = stats_dtype_for(p.dtype, stats_dtype)
      if plan.factored:
        v_row.append(jnp.zeros(plan.row_shape(p.shape), dtype))
        v_col.append(jnp.zeros(plan.col_shape(p.shape), dtype))
        v.append(None)
      else:
        v_row.append(None)
        v_col.append(None)
        v.append(jnp.zeros(p.shape, dtype))
    return ScaleByFactoredRMSState(
        count=jnp.zeros([], jnp.int32),
        v_row=treedef.unflatten(v_row),
        v_col=treedef.unflatten(v_col),
        v=treedef.unflatten(v),
        plans=FactorPlans(tuple(plans)))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    treedef = tree_lib.check_same_tree(name, stats_tree(state), updates)
    rows = treedef.flatten_up_to(state.v_row)
    cols = treedef.flatten_up_to(state.v_col)
    vs = treedef.flatten_up_to(state.v)
    step = jnp.maximum(state.count - step_offset, 0)
    beta2 = jnp.asarray(decay_rate_fn(step, decay_rate), jnp.float32)
    out_u, out_r, out_c, out_v = [], [], [], []
    for (path, g), r, c, v in zip(tree_util.tree_flatten_with_path(updates)[0], rows, cols, vs):
      plan = rules.plan(tree_lib.path_str(path), g.shape)
      ref = r if plan.factored else v
      if ref is None or (plan.factored and (r.shape != plan.row_shape(g.shape)
                                            or c.shape != plan.col_shape(g.shape))) or (
                                                not plan.factored and v.shape != g.shape):
        raise ValueError(
            f"{name}: the leaf {tree_lib.path_str(path)!r} of shape {g.shape} does not match the "
            "statistics in the state (was the state built for other params?).")
      dtype = ref.dtype
      if epsilon_mode == "add":
        g2, floor = abs_sq(g, dtype) + jnp.asarray(epsilon, dtype), None
      else:  # PyTorch: None is resolved per leaf, from this leaf's dtype.
        eps = jnp.finfo(g.dtype).eps if epsilon is None else epsilon
        g2, floor = abs_sq(g, dtype), jnp.asarray(eps, dtype)
      if plan.factored:
        new_r, new_c, factors = factored_second_moment(g2, r, c, beta2, plan, floor)
        out_r.append(new_r)
        out_c.append(new_c)
        out_v.append(None)
      else:
        new_v = (beta2 * v + (1.0 - beta2) * g2).astype(dtype)
        tiny = jnp.asarray(jnp.finfo(dtype).tiny, dtype)  # see factored_second_moment
        factors = (jnp.maximum(new_v, tiny) ** -0.5 if floor is None
                   else jax.lax.rsqrt(jnp.maximum(jnp.maximum(new_v, floor * floor), tiny)),)
        out_r.append(None)
        out_c.append(None)
        out_v.append(new_v)
      u = g.astype(jnp.result_type(g.dtype, dtype))
      for factor in factors:
        u = u * factor
      out_u.append(u.astype(g.dtype))
    new_state = ScaleByFactoredRMSState(
        count=optax.safe_increment(state.count),
        v_row=treedef.unflatten(out_r),
        v_col=treedef.unflatten(out_c),
        v=treedef.unflatten(out_v),
        plans=state.plans)
    return treedef.unflatten(out_u), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
