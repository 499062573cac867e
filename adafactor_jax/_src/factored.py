"""`scale_by_factored_rms`: Adafactor's factored second-moment estimate and its state."""

from __future__ import annotations

import functools
import math
from typing import Any
from typing import Callable
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from adafactor_jax._src import engine
from adafactor_jax._src import factoring
from adafactor_jax._src import layout
from adafactor_jax._src import tree as tree_lib
from adafactor_jax._src import validation


def decay_rate_pow(step: ArrayLike, decay_rate: ArrayLike = 0.8) -> jax.Array:
  """Adafactor's second-moment decay schedule: ``1 - (step + 1) ** -decay_rate`` in float32."""
  t = jnp.asarray(step + 1, jnp.float32)
  return 1.0 - t ** (-jnp.asarray(decay_rate, jnp.float32))


class ScaleByFactoredRMSState(NamedTuple):
  """State of `scale_by_factored_rms`: only what each leaf needs (no placeholder arrays).

  Each tree mirrors the params, with ``None`` where a leaf does not use it.

  Attributes:
    count: int32, shape ``()``: the number of update steps taken.
    v_row: per factored leaf, the moving average of ``mean(g**2)`` over its col dims: the
      leaf's shape without the col dims (a ``(n, m)`` kernel factored as rows x cols: ``(n,)``),
      in the stats dtype; ``None`` for an unfactored leaf.
    v_col: per factored leaf, the moving average of ``mean(g**2)`` over its row dims: the
      leaf's shape without the row dims (``(m,)``); ``None`` for an unfactored leaf.
    v: per unfactored leaf, the moving average of ``g**2``: the leaf's shape, in the stats dtype
      (stored at least the smallest normal number in float32, bfloat16 and float64); ``None``
      for a factored leaf.
  """

  count: jax.Array  # type: ignore[assignment]  # (a field named as optax's, not tuple.count)
  v_row: optax.Params
  v_col: optax.Params
  v: optax.Params
  # number in float32, bfloat16 and float64).


# The dtypes of unfactored statistics stored at least the smallest normal number (see
# `scale_by_factored_rms`). Not float16, whose smallest normal number (6e-5) is a common second
# moment: the statistic's moving average would change.
FLOORED_DTYPES = (jnp.float32, jnp.float64, jnp.bfloat16)


def stat_floor(dtype: DTypeLike) -> float:
  """The floor of a statistic where it divides or meets an rsqrt (a zero gives inf, and 0/0 or
  0 * inf NaN): the smallest positive number the step computes with. For float16, its smallest
  subnormal number (6e-8): float16 arithmetic runs in float32, where that is a normal number,
  and float16's smallest normal number (6e-5) is a common second moment (of gradients under
  8e-3), which a floor there would change. For float32, bfloat16 and float64, the smallest normal
  number: XLA:CPU flushes float32 subnormals to zero."""
  info = jnp.finfo(dtype)
  return float(info.smallest_subnormal if info.dtype == jnp.float16 else info.tiny)


def sq_cap(dtype: DTypeLike, size: int) -> float:
  """The saturation value of `abs_sq` for a leaf of `size` elements: half the dtype's largest
  number over `size`, so that sums of the squares over the leaf (the update RMS) and their moving
  averages stay finite. Not for float16, whose sums accumulate in float32, where no sum of
  float16 values overflows: half its largest number (the size would cap a float16 statistic of
  a 512x512 leaf at 0.125, which ordinary gradients exceed)."""
  info = jnp.finfo(dtype)
  if info.dtype == jnp.float16:
    return float(info.max) / 2.0
  return float(info.max) / (2.0 * max(1, size))


def square(x: jax.Array, dtype: DTypeLike) -> jax.Array:
  """``|x|**2`` computed in the real dtype `dtype` (unsaturated)."""
  if jnp.iscomplexobj(x):
    x = x.astype(jnp.result_type(dtype, jnp.complex64))
    return (jnp.real(x) ** 2 + jnp.imag(x) ** 2).astype(dtype)
  x = x.astype(dtype)
  return x * x


def abs_sq(x: jax.Array, dtype: DTypeLike) -> jax.Array:
  """``|x|**2`` computed in the real dtype `dtype`, saturated so that statistics stay finite.

  A square that would overflow (a gradient near the dtype's maximum) is capped at `sq_cap`
  (``finfo(dtype).max / (2 * x.size)``; float16: ``finfo(dtype).max / 2``), so that sums and
  moving averages of the squares over the leaf stay finite too. Ordinary values are far below
  the cap and are not changed.
  """
  return jnp.minimum(square(x, dtype), jnp.asarray(sq_cap(dtype, x.size), dtype))


def stats_dtype_for(param_dtype: DTypeLike, stats_dtype: Optional[DTypeLike]) -> jnp.dtype:
  """The dtype of a leaf's statistics: `stats_dtype`, or the param's real dtype when None."""
  dtype = jnp.dtype(validation.as_dtype(param_dtype if stats_dtype is None else stats_dtype))
  return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


def factored_second_moment(
    row_mean_sq: jax.Array, col_mean_sq: jax.Array, v_row: jax.Array, v_col: jax.Array,
    beta2: jax.Array, plan: factoring.LeafPlan, floor: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array, Callable[..., jax.Array], tuple[jax.Array, ...]]:
  """New row and column statistics from the means of the squared gradient over the col dims
  (`row_mean_sq`) and over the row dims (`col_mean_sq`), and the rsqrt of the rank-1 estimate
  as ``scale(u, *factors)``: small factors, broadcastable to the leaf, and the elementwise
  function that applies them (multiplied into the gradient in this order, as optax).

  With ``floor`` (PyTorch's clamped epsilon) the mean of the row statistic is clamped to at least
  ``floor`` and the estimate to at least ``floor**2`` before the rsqrt.
  """
  dtype = v_row.dtype
  new_row = (beta2 * v_row + (1.0 - beta2) * row_mean_sq).astype(dtype)
  new_col = (beta2 * v_col + (1.0 - beta2) * col_mean_sq).astype(dtype)
  row_mean = jnp.mean(new_row, axis=plan.row_dims_in_row_stat(), keepdims=True)
  # Floors at `stat_floor` (the smallest normal number but in float16): an underflowing ratio
  # or a zero statistic (eps=0 and zero gradients) would give inf, and 0 * inf = NaN; a leaf
  # whose row statistics are all zero would divide 0 by 0 (optax, Keras, PyTorch and
  # transformers give NaN there). Ordinary values are not changed.
  # Float16 factors are computed in float32, with float16's floor: XLA divides by a broadcast
  # row mean as a product with its reciprocal, which overflows float16 under 1.5e-5, and the two
  # factors (up to 4096 each) can overflow float16 together. In float32 neither does, and each
  # factor stays at most 4096: a gradient whose square underflows float16 (under 2.4e-4) gets
  # a finite float16 update.
  work = jnp.float32 if dtype == jnp.float16 else dtype
  tiny = jnp.asarray(stat_floor(dtype), work)
  row, col, row_mean = new_row.astype(work), new_col.astype(work), row_mean.astype(work)
  if floor is None:
    row_factor = jnp.maximum(row / jnp.maximum(row_mean, tiny), tiny) ** -0.5
    col_factor = jnp.maximum(col, tiny) ** -0.5
    return new_row, new_col, _times_factors, (jnp.expand_dims(row_factor, plan.col_dims),
                                              jnp.expand_dims(col_factor, plan.row_dims))
  floor = floor.astype(work)
  # PyTorch's rsqrt(max(row * col / max(row_mean, floor), floor**2)) as the product of a row and
  # a column rsqrt, capped at rsqrt(floor**2): the same in exact arithmetic (rsqrt decreases), a
  # few ulps apart in float32, and no division or rsqrt per element (with the elementwise
  # estimate the step took 1.25x as long on BERT-base and ViT-B/16). A zero statistic gives an
  # infinite rsqrt, which the cap takes down to rsqrt(floor**2) as the clamped estimate does (and
  # to that of `stat_floor` when floor**2 underflows).
  col_over_mean = (jnp.expand_dims(col, plan.row_dims)
                   / jnp.expand_dims(jnp.maximum(row_mean, jnp.maximum(floor, tiny)),
                                     plan.col_dims))
  return new_row, new_col, _times_capped_factors, (
      jnp.expand_dims(jax.lax.rsqrt(row), plan.col_dims), jax.lax.rsqrt(col_over_mean),
      jax.lax.rsqrt(jnp.maximum(floor * floor, tiny)))


def _in_dtype(scale: Callable[..., jax.Array], work: DTypeLike) -> Callable[..., jax.Array]:
  """``scale(u, *factors)`` computed in `work`, rounded back to the dtype of `u`."""
  return lambda u, *factors: scale(u.astype(work), *factors).astype(u.dtype)


def _times_factors(u: jax.Array, *factors: jax.Array) -> jax.Array:
  for factor in factors:
    u = u * factor
  return u


def _times_capped_factors(u, row_rsqrt, col_rsqrt, cap):
  """``u`` times PyTorch's rsqrt of the clamped rank-1 estimate (see `factored_second_moment`)."""
  return u * jnp.minimum(row_rsqrt * col_rsqrt, cap)


def _times_rsqrt(u, v, tiny):
  # rsqrt, not ``v ** -0.5`` (optax): XLA's pow is 9x slower on the CPU, and this differs from it
  # by at most 2 ulps.
  return u * jax.lax.rsqrt(jnp.maximum(v, tiny))


def _times_floored_rsqrt(u, v, tiny):
  """`_times_rsqrt` for ``v >= tiny``, bit for bit."""
  del tiny
  return u * jax.lax.rsqrt(v)


def _times_clamped_rsqrt(u, v, floor_sq, tiny):
  return u * jax.lax.rsqrt(jnp.maximum(jnp.maximum(v, floor_sq), tiny))


def _mean_sq(d: engine.Deferred, plan: factoring.LeafPlan, dtype: jnp.dtype,
             link: engine.Link) -> tuple[jax.Array, jax.Array]:
  """Means of ``|u|**2`` over the col dims and over the row dims (unsaturated), in `dtype`.

  Each reads the update's formula on inputs XLA cannot share with the other (see
  docs/design/engine.md), and nothing else happens inside them: reductions do their elementwise work
  at a cost on the CPU.
  """
  sums = []
  for purpose, axes in (("row", plan.col_dims), ("col", plan.row_dims)):
    sums.append(d.reduce_apart(purpose, functools.partial(engine.mean, axes=axes),
                               lambda u: square(u, dtype), link))
  return sums[0], sums[1]


def stats_tree(state: ScaleByFactoredRMSState) -> Any:
  """A tree with the params' structure: each leaf's row statistic, or its second moment.

  (``None`` in the params, as `equinox.filter` leaves, stays ``None``.)
  """
  return jax.tree.map(lambda v, r: r if v is None else v, state.v, state.v_row,
                      is_leaf=tree_lib.is_none)


# ---------------------------------------------------------------- the math, one leaf at a time
# What `scale_by_factored_rms` computes, written plainly (the paper's Algorithm 4 and PyTorch's
# clamped variant): the reference its kernel is tested against (tests/test_factored.py). The
# kernel computes the same, with the floors and caps above for extreme values.


def factored_rms_scaled(g: jax.Array, v_row: jax.Array, v_col: jax.Array, beta2: ArrayLike,
                        epsilon: ArrayLike, plan: factoring.LeafPlan, epsilon_mode: str = "add"
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A factored leaf: ``(update, new v_row, new v_col)``.

  ``R = beta2 R + (1 - beta2) mean_c(g**2 + eps)``, ``C = beta2 C + (1 - beta2) mean_r(g**2 +
  eps)``, ``u = g / sqrt(R C / mean_r(R))``; with ``epsilon_mode="clamp"`` nothing is added and
  ``u = g / sqrt(max(R C / max(mean_r(R), eps), eps**2))``.
  """
  dtype = v_row.dtype
  sq = square(g, dtype) + (epsilon if epsilon_mode == "add" else 0.0)
  new_row = beta2 * v_row + (1.0 - beta2) * jnp.mean(sq, axis=plan.col_dims)
  new_col = beta2 * v_col + (1.0 - beta2) * jnp.mean(sq, axis=plan.row_dims)
  row_mean = jnp.mean(new_row, axis=plan.row_dims_in_row_stat(), keepdims=True)
  r = jnp.expand_dims(new_row, plan.col_dims)
  c = jnp.expand_dims(new_col, plan.row_dims)
  if epsilon_mode == "add":
    estimate = r * c / jnp.expand_dims(row_mean, plan.col_dims)
  else:
    estimate = jnp.maximum(r * c / jnp.expand_dims(jnp.maximum(row_mean, epsilon), plan.col_dims),
                           epsilon * epsilon)
  return ((g / jnp.sqrt(estimate)).astype(g.dtype), jnp.asarray(new_row, dtype),
          jnp.asarray(new_col, dtype))


def unfactored_rms_scaled(g: jax.Array, v: jax.Array, beta2: ArrayLike, epsilon: ArrayLike,
                          epsilon_mode: str = "add") -> tuple[jax.Array, jax.Array]:
  """An unfactored leaf: ``(update, new v)``, ``V = beta2 V + (1 - beta2)(g**2 + eps)``, ``u = g /
  sqrt(V)`` (``"clamp"``: nothing added, ``u = g / sqrt(max(V, eps**2))``)."""
  dtype = v.dtype
  if epsilon_mode == "add":
    new_v = beta2 * v + (1.0 - beta2) * (square(g, dtype) + epsilon)
    return (g / jnp.sqrt(new_v)).astype(g.dtype), jnp.asarray(new_v, dtype)
  new_v = beta2 * v + (1.0 - beta2) * square(g, dtype)
  floor = jnp.asarray(epsilon) ** 2
  return (g / jnp.sqrt(jnp.maximum(new_v, floor))).astype(g.dtype), jnp.asarray(new_v, dtype)


# ---------------------------------------------------------------- the block


def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: ArrayLike = 0.8,
    step_offset: ArrayLike = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: Optional[ArrayLike] = 1e-30,
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
  validation.check("decay_rate", decay_rate)
  validation.check_choice("epsilon_mode", epsilon_mode, ("add", "clamp"))
  if epsilon is not None or epsilon_mode == "add":
    validation.check("epsilon", epsilon)
  validation.check("step_offset", step_offset)
  validation.check("min_dim_size_to_factor", min_dim_size_to_factor)
  if not callable(decay_rate_fn):
    raise ValueError(f"decay_rate_fn must be callable (step, decay_rate) -> beta2, got "
                     f"{decay_rate_fn!r}.")
  stats_dtype = validation.check("stats_dtype", stats_dtype)
  validation.check("factored", factored)
  rules = factoring.as_rules(factor_rule, factored=factored,
                             min_dim_size_to_factor=int(min_dim_size_to_factor))
  name = "scale_by_factored_rms"

  def init_fn(params):
    v_row, v_col, v = [], [], []
    leaves, treedef = tree_lib.flatten_params(params)
    for path, p in leaves:
      plan = rules.plan(path, p.shape)
      dtype = stats_dtype_for(p.dtype, stats_dtype)
      if plan.factored:
        # Each statistic keeps the param's mesh axes on the dims it keeps (see `layout`).
        dims = range(len(p.shape))
        v_row.append(layout.zeros(p, dtype, keep=[i for i in dims if i not in plan.col_dims]))
        v_col.append(layout.zeros(p, dtype, keep=[i for i in dims if i not in plan.row_dims]))
        v.append(None)
      else:
        v_row.append(None)
        v_col.append(None)
        v.append(layout.zeros(p, dtype))
    return ScaleByFactoredRMSState(
        count=jnp.zeros([], jnp.int32),
        v_row=treedef.unflatten(v_row),
        v_col=treedef.unflatten(v_col),
        v=treedef.unflatten(v))

  def kernel(leaves, state, params, ctx):
    del params
    treedef = tree_lib.check_same_tree(name, stats_tree(state), ctx.like(leaves))
    rows = treedef.flatten_up_to(state.v_row)
    cols = treedef.flatten_up_to(state.v_col)
    vs = treedef.flatten_up_to(state.v)
    step = jnp.maximum(state.count - step_offset, 0)
    beta2 = jnp.asarray(decay_rate_fn(step, decay_rate), jnp.float32)
    one_minus_beta2 = 1.0 - beta2
    out_r, out_c, out_v = [], [], []
    ctx.reseed(leaves, state.count)
    tinies = {}  # one array per dtype, so that its offsets are computed once (engine.Seed)
    for path, d, r, c, v in zip(ctx.paths, leaves, rows, cols, vs):
      plan = rules.plan(path, d.shape)
      ref = r if plan.factored else v
      if ref is None or (plan.factored and (r.shape != plan.row_shape(d.shape)
                                            or c.shape != plan.col_shape(d.shape))) or (
                                                not plan.factored and v.shape != d.shape):
        raise ValueError(
            f"{name}: the leaf {path!r} of shape {d.shape} does not match the "
            "statistics in the state (was the state built for other params?).")
      dtype = ref.dtype
      cap = jnp.asarray(sq_cap(dtype, math.prod(d.shape)), dtype)
      if epsilon_mode == "add":
        eps, floor = jnp.asarray(epsilon, dtype), None
      else:  # PyTorch: None is resolved per leaf, from this leaf's dtype.
        eps = None
        floor = jnp.asarray(jnp.finfo(d.dtype).eps if epsilon is None else epsilon, dtype)

      def saturate(x, cap=cap, eps=eps):
        """Squares (or their means) capped at `cap`, so that statistics and their sums stay
        finite, then plus `eps`."""
        x = jnp.minimum(x, cap)
        return x if eps is None else x + eps

      reduced = None  # the formula's shorter form for its reduction (see `engine.Deferred.then`)
      if plan.factored:
        # Each mean reads the gradient on its own: no full-size g**2 is shared between them
        # (see docs/design/engine.md); they saturate after the mean, not element by element.
        row_sq, col_sq = map(saturate, _mean_sq(d, plan, dtype, ctx.link))
        new_r, new_c, scale, factors = factored_second_moment(row_sq, col_sq, r, c, beta2, plan,
                                                              floor)
        out_r.append(new_r)
        out_c.append(new_c)
        out_v.append(None)
      else:
        # The formula on inputs of its own (see docs/design/engine.md): a clipping divide before
        # this block is then not shared with the final pass, which would store the clipped update.
        new_v = (beta2 * v + one_minus_beta2 * saturate(square(d.value_apart("v"), dtype))
                 ).astype(dtype)
        if dtype not in tinies:  # see factored_second_moment
          tinies[dtype] = jnp.asarray(stat_floor(dtype), dtype)
        tiny = tinies[dtype]
        if floor is None and dtype in FLOORED_DTYPES:
          # Stored at least the smallest normal number, the floor that the update applies
          # anyway: the update is the same, and the update RMS reduces ``u * rsqrt(v)``, equal
          # to the final pass's ``u * rsqrt(max(v, tiny))`` bit for bit, in fewer operations
          # (docs/design/engine.md).
          new_v = engine.floored(new_v, tiny)
          reduced = _times_floored_rsqrt
        scale, factors = ((_times_rsqrt, (new_v, tiny)) if floor is None else
                          (_times_clamped_rsqrt, (new_v, floor * floor, tiny)))
        out_r.append(None)
        out_c.append(None)
        out_v.append(new_v)
      work = jnp.result_type(d.dtype, dtype, *[f.dtype for f in factors])
      d.then(_in_dtype(scale, work), *factors, reduced=reduced and _in_dtype(reduced, work))
    return ScaleByFactoredRMSState(
        count=optax.safe_increment(state.count),
        v_row=treedef.unflatten(out_r),
        v_col=treedef.unflatten(out_c),
        v=treedef.unflatten(out_v))

  return engine.transformation(init_fn, kernel)
