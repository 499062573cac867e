"""Clipping: each leaf's update RMS (Adafactor), each leaf's L2 norm and each element (Keras's
``clipnorm``, ``clipvalue``), and the global L2 norm, as optax and as Keras."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from adafactor_jax._src import block_rms
from adafactor_jax._src import engine
from adafactor_jax._src import factoring
from adafactor_jax._src import validation
from adafactor_jax._src.factored import square


def _float_dtype(dtype: DTypeLike) -> jnp.dtype:
  """`dtype` promoted to at least float32 (for norms and sums of squares)."""
  return jnp.promote_types(dtype, jnp.float32)


# ---------------------------------------------------------------- the math, one leaf at a time
# What each block computes, written plainly: the reference its kernel is tested against
# (tests/test_clipping.py). The kernels compute the same through the engine.


def block_rms_clipped(u: jax.Array, threshold: ArrayLike,
                      axes: Optional[tuple[int, ...]] = None) -> jax.Array:
  """`clip_by_block_rms`: ``u / max(1, rms(u) / threshold)``, the RMS over `axes` (all by
  default; the others are batch dims, one RMS per slice)."""
  dtype = _float_dtype(u.dtype)
  rms = jnp.sqrt(jnp.mean(jnp.square(jnp.abs(u).astype(dtype)), axis=axes, keepdims=True))
  return (u / jnp.maximum(1.0, rms / threshold)).astype(u.dtype)


def leaf_norm_clipped(g: jax.Array, max_norm: ArrayLike) -> jax.Array:
  """`clip_by_leaf_norm`: ``g * c / max(||g||, c)`` (a zero gradient stays zero)."""
  dtype = _float_dtype(g.dtype)
  norm = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(g).astype(dtype))))
  return (g.astype(dtype) * max_norm / jnp.maximum(norm, max_norm)).astype(g.dtype)


def value_clipped(g: jax.Array, max_value: ArrayLike) -> jax.Array:
  """`clip_by_value`: each element into ``[-max_value, max_value]``."""
  v = jnp.asarray(max_value)
  return jnp.clip(g, -v, v).astype(g.dtype)


def global_norm_clipped(gs: list[jax.Array], max_norm: ArrayLike) -> list[jax.Array]:
  """`clip_by_global_norm`: all leaves times ``c / ||g||`` when the global norm exceeds `c`."""
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(jnp.abs(g))) for g in gs))
  return [jnp.where(norm < max_norm, g, g / norm * max_norm).astype(g.dtype) for g in gs]


def global_norm_clipped_nan_on_nonfinite(gs: list[jax.Array],
                                         max_norm: ArrayLike) -> list[jax.Array]:
  """`clip_by_global_norm_nan_on_nonfinite`: all leaves times ``c * min(1/||g||, 1/c)``, the norm
  computed from the gradients divided by their largest magnitude (no overflow), and NaN
  everywhere when a gradient is not finite."""
  dtype = jnp.result_type(*[_float_dtype(g.dtype) for g in gs])
  m = jnp.max(jnp.stack([jnp.max(jnp.abs(g.astype(dtype)), initial=0.0) for g in gs]))
  m = jnp.where(m > 0, m, 1.0)  # (all zero: any divisor)
  norm = m * jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(dtype) / m)) for g in gs))
  scale = jnp.where(jnp.isfinite(m), max_norm * jnp.minimum(1.0 / norm, 1.0 / max_norm), jnp.nan)
  return [(g.astype(dtype) * scale).astype(g.dtype) for g in gs]


# ---------------------------------------------------------------- the blocks


def clip_by_block_rms(
    threshold: ArrayLike,
    *,
    factor_rule: Optional[factoring.FactorRule] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Clips each leaf's update so that its root mean square is at most `threshold`.

  .. math:: u \leftarrow u / \max(1, \mathrm{RMS}(u) / d)

  Args:
    threshold: the maximum RMS :math:`d` (> 0; Adafactor uses 1.0).
    factor_rule: optional factoring rule (see `scale_by_factored_rms`); its ``batch`` dims get
      one RMS per slice (t5x's per-layer clipping of scanned layers). By default the RMS is over
      the whole leaf, as optax.

  Returns:
    An `optax.GradientTransformationExtraArgs` with an empty state.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.clip_by_block_rms(1.0)
    >>> updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(None))
    >>> print([f"{x:.4f}" for x in updates["w"]])  # the RMS was sqrt(12.5)
    ['0.8485', '1.1314']

  References:
    Shazeer & Stern, `Adafactor <https://arxiv.org/abs/1804.04235>`_, 2018, section 6.

  Notes:
    optax's version takes the whole leaf; with batch dims ours matches t5x. A zero update
    stays zero (no division by zero).
  """
  validation.check("threshold", threshold)
  rules = block_rms.rules_of(factor_rule)

  def kernel(leaves, state, params, ctx):
    del params
    for d, plan in zip(leaves, block_rms.plans(rules, leaves, ctx)):
      dtype = d.dtype if d.dtype != jnp.float16 else jnp.float32
      # The RMS is a reduction of the update's formula: the update itself is not stored.
      rms = block_rms.rms(functools.partial(d.reduce_apart, "rms", link=ctx.link), d.shape, plan,
                          dtype)
      if not (isinstance(threshold, (int, float)) and threshold == 1):
        rms = rms / threshold
      d.scale(jnp.maximum(1.0, rms), divide=True)
    return state

  return engine.transformation(engine.init_empty, kernel)


def _divide_times(u, denom, mult):
  return (u / denom.astype(u.dtype)) * mult.astype(u.dtype)


def clip_by_global_norm(max_norm: ArrayLike) -> optax.GradientTransformationExtraArgs:
  r"""Scales all updates so that their global L2 norm is at most `max_norm`, as
  ``optax.clip_by_global_norm`` (the same arithmetic, the same numbers).

  .. math:: u \leftarrow u \quad\text{if } \lVert u \rVert_2 < c, \qquad\text{else}\quad
     u \leftarrow (u / \lVert u \rVert_2)\, c, \qquad
     \lVert u \rVert_2 = \sqrt{\textstyle\sum_{\text{leaves}} \sum |u|^2}

  Args:
    max_norm: the maximum global norm :math:`c` (> 0).

  Returns:
    An `optax.GradientTransformationExtraArgs` with an empty state.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.clip_by_global_norm(1.0)
    >>> updates, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, None)
    >>> print(updates["a"], updates["b"])
    [0.6] [0.8]
    >>> updates, _ = tx.update({"a": jnp.array([jnp.inf]), "b": jnp.array([4.0])}, None)
    >>> print(updates["a"], updates["b"])  # an infinite norm: inf / inf, 4 / inf
    [nan] [0.]

  References:
    Pascanu et al., `On the difficulty of training recurrent neural networks
    <https://arxiv.org/abs/1211.5063>`_, 2013. ``optax.clip_by_global_norm`` (t5x's
    ``global_norm_clip_threshold``).

  Notes:
    As optax, a non-finite norm passes through: finite updates become 0 (divided by an infinite
    norm), infinite ones NaN. For Keras's ``global_clipnorm`` (NaN everywhere when the norm is
    not finite, and a finite scale when only the sum of squares overflows), see
    `clip_by_global_norm_nan_on_nonfinite`. In a `chain` the global norm is a reduction of
    each leaf's update formula: the clipped updates are not stored.
  """
  validation.check("max_norm", max_norm)

  def square(x):  # optax's tree norm squares real and imaginary parts
    return jnp.square(x.real) + jnp.square(x.imag)

  def kernel(leaves, state, params, ctx):
    del params
    sq_norm = 0
    for d in leaves:
      sq_norm = sq_norm + d.reduce_apart("global_norm", engine.total, square, ctx.link)
    g_norm = jnp.array(jnp.sqrt(sq_norm))
    trigger = jnp.squeeze(g_norm < max_norm)
    # optax's select(trigger, t, (t / g_norm) * max_norm) as (t / 1) * 1 or (t / g_norm) *
    # max_norm (the same numbers): a select would be computed into a buffer for each reduction.
    denom = jnp.where(trigger, jnp.float32(1), g_norm)
    mult = jnp.where(trigger, jnp.float32(1), jnp.asarray(max_norm, jnp.float32))
    for d in leaves:
      d.then(_divide_times, denom, mult)
    return state

  return engine.transformation(engine.init_empty, kernel)


def clip_by_leaf_norm(max_norm: ArrayLike) -> optax.GradientTransformationExtraArgs:
  r"""Clips each leaf's gradient to an L2 norm of at most `max_norm` (Keras's ``clipnorm``).

  .. math:: g \leftarrow g\, c / \max(\lVert g \rVert_2, c)

  Args:
    max_norm: the maximum L2 norm :math:`c` of each leaf (> 0).

  Returns:
    An `optax.GradientTransformationExtraArgs` with an empty state.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.clip_by_leaf_norm(1.0)
    >>> updates, _ = tx.update({"w": jnp.array([100.0, 100.0]), "b": jnp.array([0.3])}, None)
    >>> print([f"{x:.6f}" for x in updates["w"]], [f"{x:.6f}" for x in updates["b"]])
    ['0.707107', '0.707107'] ['0.300000']

  References:
    Pascanu et al., `On the difficulty of training recurrent neural networks
    <https://arxiv.org/abs/1211.5063>`_, 2013. Keras ``Optimizer(clipnorm=...)``.

  Notes:
    Each leaf separately, as Keras's ``clipnorm`` (Keras's variable is our leaf); the norm is
    computed in at least float32. A zero gradient stays zero. Unlike ``optax.clip_by_block_rms``
    this is a norm, not an RMS.
  """
  validation.check("max_norm", max_norm)

  def kernel(leaves, state, params, ctx):
    del params
    for d in leaves:
      dtype, ndim = _float_dtype(d.dtype), len(d.shape)
      # The norm is a reduction of the leaf's formula (see docs/design/engine.md): the clipped
      # gradient is not stored.
      l2sum = engine.like_leaf(d.reduce_apart(
          "leaf_norm", engine.total, lambda g, dtype=dtype: square(g, dtype), ctx.link), ndim)
      pred = l2sum > 0
      l2norm = jnp.where(pred, jnp.sqrt(jnp.where(pred, l2sum, 1.0)), l2sum)
      c = engine.operand(max_norm, dtype, ndim)
      d.then(lambda g, c, den, dtype=dtype: (g.astype(dtype) * c / den).astype(g.dtype), c,
             jnp.maximum(l2norm, c))
    return state

  return engine.transformation(engine.init_empty, kernel)


def clip_by_value(max_value: ArrayLike) -> optax.GradientTransformationExtraArgs:
  r"""Clips every gradient element to ``[-max_value, max_value]`` (Keras's ``clipvalue``).

  .. math:: g \leftarrow \min(\max(g, -v), v)

  Args:
    max_value: the bound :math:`v` (> 0).

  Returns:
    An `optax.GradientTransformationExtraArgs` with an empty state.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.clip_by_value(1.0)
    >>> updates, _ = tx.update({"w": jnp.array([100.0, -0.5, -3.0])}, None)
    >>> print(updates["w"])
    [ 1.  -0.5 -1. ]

  References:
    Keras ``Optimizer(clipvalue=...)``; ``optax.clip`` does the same.
  """
  validation.check("max_value", max_value)

  def kernel(leaves, state, params, ctx):
    del params, ctx
    for d in leaves:
      d.then(value_clipped, engine.operand(max_value, d.dtype, len(d.shape)))
    return state

  return engine.transformation(engine.init_empty, kernel)


def clip_by_global_norm_nan_on_nonfinite(
    max_norm: ArrayLike) -> optax.GradientTransformationExtraArgs:
  r"""Scales all gradients so that their global L2 norm is at most `max_norm`, and makes them all
  NaN when that norm is not finite (Keras's ``global_clipnorm``).

  .. math:: g \leftarrow g \cdot c \min(1/\lVert g \rVert_2, 1/c), \qquad
     \lVert g \rVert_2 = \sqrt{\textstyle\sum_{\text{leaves}} \sum g^2}

  Args:
    max_norm: the maximum global norm :math:`c` (> 0).

  Returns:
    An `optax.GradientTransformationExtraArgs` with an empty state.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.clip_by_global_norm_nan_on_nonfinite(1.0)
    >>> updates, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, None)
    >>> print(updates["a"], updates["b"])
    [0.6] [0.8]
    >>> updates, _ = tx.update({"a": jnp.array([jnp.inf]), "b": jnp.array([4.0])}, None)
    >>> print(updates["a"], updates["b"])
    [nan] [nan]

  References:
    Pascanu et al., `On the difficulty of training recurrent neural networks
    <https://arxiv.org/abs/1211.5063>`_, 2013. Keras ``Optimizer(global_clipnorm=...)``.

  Notes:
    As Keras (and unlike `clip_by_global_norm` and ``optax.clip_by_global_norm``), a non-finite
    global norm turns every gradient into NaN instead of passing infinities through, so the
    problem is visible.
  """
  validation.check("max_norm", max_norm)

  def kernel(leaves, state, params, ctx):
    del params
    if not leaves:
      return state
    dtype = jnp.result_type(*[_float_dtype(d.dtype) for d in leaves])
    # Each leaf's sum of squares is a reduction of its formula (see docs/design/engine.md): the
    # clipped gradients are not stored.
    sq = jnp.stack([d.reduce_apart("global_norm", engine.total, lambda g: square(g, dtype),
                                   ctx.link) for d in leaves])
    norm = jnp.sqrt(jnp.sum(sq))

    def nan_unless_finite(x, ref):
      """`x`, or NaN where `ref` is not finite (``ref - ref``: 0 or NaN), as Keras."""
      return x + (ref - ref)

    def keras_scale(_):
      return nan_unless_finite(max_norm * jnp.minimum(1.0 / norm, 1.0 / max_norm), norm)

    def rescaled(_):
      # The squared norm overflowed (or a gradient is not finite): recompute with the
      # gradients divided by their largest magnitude, so that finite gradients get a finite
      # scale; a NaN or Inf gradient still gives NaN, as Keras.
      with engine.in_branch(leaves) as link:
        return rescaled_scale(link)

    def rescaled_scale(link):
      m = jnp.max(jnp.stack([
          d.reduce_apart("rescale_max", engine.largest, lambda g: jnp.abs(g.astype(dtype)), link)
          for d in leaves]))
      sums = []
      for d in leaves:
        e = d.derived(lambda g, m: g.astype(dtype) / m, engine.like_leaf(m, len(d.shape)),
                      dtype=dtype)
        sums.append(e.reduce_apart("rescale", engine.total, jnp.square, link))
      s = jnp.sum(jnp.stack(sums))
      return nan_unless_finite(jnp.minimum(1.0, (max_norm / m) / jnp.sqrt(s)), m)

    scale = jax.lax.cond(jnp.isfinite(norm), keras_scale, rescaled, None)
    for d in leaves:
      d.then(lambda g, s: (g.astype(dtype) * s).astype(g.dtype),
             engine.like_leaf(scale, len(d.shape)))
    return state

  return engine.transformation(engine.init_empty, kernel)
