"""Building blocks after the statistics: update clipping, parameter scale, learning rate,
momentum, weight decay and its masks. None of them flips the sign except
`scale_by_learning_rate` (``flip_sign=True``, its default)."""

from __future__ import annotations

import functools
import math
import re
from typing import Any
from typing import Callable
from typing import NamedTuple
from typing import Optional
from typing import Sequence
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import tree_util
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from adafactor_jax._src import factoring
from adafactor_jax._src import fused
from adafactor_jax._src import layout
from adafactor_jax._src import tree as tree_lib
from adafactor_jax._src import validation

MaskOrFn = Union[Any, Callable[[optax.Params], Any], None]


def block_rms(x: jax.Array, plan: factoring.LeafPlan, dtype: DTypeLike,
              link: Optional[fused.Link] = None) -> jax.Array:
  """RMS of `x` over all dims but the batch dims, computed in `dtype`: a scalar when that is all
  dims, else an array that broadcasts against `x` (keepdims). With `link`, a large
  half-precision `x` is reduced in blocks (`fused.mean`).

  Arithmetic on the scalar stays scalar: on arrays of shape ``(1,) * x.ndim`` XLA's simplifier
  takes four more rounds over the whole program to make it scalar again. `fused.Deferred.scale`
  gives it the ``(1,) * x.ndim`` shape (`fused.like_leaf`) only where it meets the leaf before
  the final pass, so that the compiled arithmetic is the blocks' own.
  """
  return _rms(lambda reduce, elem: reduce(elem, [x], x.shape, link=link), x.shape, plan, dtype)


def _rms(apply: Callable[..., jax.Array], shape: tuple, plan: factoring.LeafPlan,
         dtype: DTypeLike) -> jax.Array:
  """`block_rms` of the array `a` of `shape` for which ``apply(reduce, elem)`` is
  ``reduce(elem(a))`` (as `fused.Deferred.reduce_apart`)."""
  axes = plan.rms_axes(len(shape))
  keepdims = len(axes) < len(shape)
  if math.prod(shape) == 0:
    return jnp.zeros([1] * len(shape) if keepdims else [], dtype)

  def elem(x):
    if jnp.iscomplexobj(x):
      return jnp.real(x * jnp.conj(x)).astype(dtype)
    if x.dtype == jnp.float16:  # squared in `dtype`: a float16 square overflows above 256
      x = x.astype(dtype)
    return (x * x).astype(dtype)

  return jnp.sqrt(apply(functools.partial(fused.mean, axes=axes, keepdims=keepdims), elem))


def _plans(rules: Optional[factoring.FactorRules], leaves: list[fused.Deferred],
           ctx: fused.Context) -> list[factoring.LeafPlan]:
  if rules is None:
    return [factoring.UNFACTORED] * len(leaves)
  return [rules.plan(path, d.shape) for path, d in zip(ctx.paths, leaves)]


def _divide_times(u, denom, mult):
  return (u / denom.astype(u.dtype)) * mult.astype(u.dtype)


def _rules(factor_rule: Optional[factoring.FactorRule]) -> Optional[factoring.FactorRules]:
  return None if factor_rule is None else factoring.as_rules(factor_rule)


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
  rules = _rules(factor_rule)

  def kernel(leaves, state, params, ctx):
    del params
    for d, plan in zip(leaves, _plans(rules, leaves, ctx)):
      ctx.seed(d)
      dtype = d.dtype if d.dtype != jnp.float16 else jnp.float32
      # The RMS is a reduction of the update's formula: the update itself is not stored.
      rms = _rms(functools.partial(d.reduce_apart, "rms", link=ctx.link), d.shape, plan, dtype)
      if not (isinstance(threshold, (int, float)) and threshold == 1):
        rms = rms / threshold
      d.scale(jnp.maximum(1.0, rms), divide=True)
    return state

  return fused.transformation(fused.init_empty, kernel)


def clip_by_global_norm_fused(max_norm: ArrayLike) -> optax.GradientTransformationExtraArgs:
  """``optax.clip_by_global_norm`` (the same arithmetic) as a kernel: in a `chain` the
  global norm is a reduction of each leaf's update formula, and the clipped updates are not
  stored."""

  def square(x):  # optax's tree norm squares real and imaginary parts
    return jnp.square(x.real) + jnp.square(x.imag)

  def kernel(leaves, state, params, ctx):
    del params
    sq_norm = 0
    for d in leaves:
      ctx.seed(d)
      sq_norm = sq_norm + d.reduce_apart("global_norm", fused.total, square, ctx.link)
    g_norm = jnp.array(jnp.sqrt(sq_norm))
    trigger = jnp.squeeze(g_norm < max_norm)
    # optax's select(trigger, t, (t / g_norm) * max_norm) as (t / 1) * 1 or (t / g_norm) *
    # max_norm (the same numbers): a select would be computed into a buffer for each reduction.
    denom = jnp.where(trigger, jnp.float32(1), g_norm)
    mult = jnp.where(trigger, jnp.float32(1), jnp.asarray(max_norm, jnp.float32))
    for d in leaves:
      d.then(_divide_times, denom, mult)
    return state

  return fused.transformation(fused.init_empty, kernel)


def scale_by_param_block_rms(
    min_scale: ArrayLike = 1e-3,
    *,
    max_scale: Optional[ArrayLike] = None,
    factor_rule: Optional[factoring.FactorRule] = None,
    mask: MaskOrFn = None,
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
  rules = _rules(factor_rule)
  name = "scale_by_param_block_rms"

  def kernel(leaves, state, params, ctx):
    tree_lib.require_params(name, params, "the update is scaled by the RMS of each parameter")
    treedef = tree_lib.check_same_tree(name, params, ctx.like(leaves), expected_name="the params",
                                       same_shapes=True)
    for d, p, plan, m in zip(leaves, treedef.flatten_up_to(params), _plans(rules, leaves, ctx),
                             resolve_mask(mask, params, treedef, name)):
      if isinstance(m, (bool, np.bool_)) and not m:
        continue
      dtype = jnp.promote_types(jnp.finfo(p.dtype).dtype if jnp.iscomplexobj(p) else p.dtype,
                                jnp.float32)
      scale = jnp.maximum(block_rms(p, plan, dtype, ctx.link), min_scale)
      if max_scale is not None:
        scale = jnp.minimum(scale, max_scale)
      if not isinstance(m, (bool, np.bool_)):
        scale = jnp.where(m, scale, 1.0)
      d.scale(scale)
    return state

  return fused.transformation(fused.init_empty, kernel)


class ScaleByScheduleState(NamedTuple):
  count: jax.Array  # int32 scalar: number of schedule evaluations so far.


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

    return fused.transformation(init_fn, kernel)

  def kernel_const(leaves, state, params, ctx):
    del params, ctx
    _scale_all(leaves, sign * jnp.asarray(learning_rate))
    return state

  return fused.transformation(fused.init_empty, kernel_const)


def _scale_all(leaves: list[fused.Deferred], x: jax.Array) -> None:
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


def buffer_dtype(dtype: Optional[DTypeLike], leaf_dtype: DTypeLike) -> jnp.dtype:
  """The dtype of a leaf-shaped buffer (momentum, accumulated gradients, the EMA) asked for as
  `dtype` (None: the leaf's): for a complex leaf, the complex type of that precision, as a real
  buffer would drop the imaginary part (optax's float32 default for momentum does)."""
  if dtype is None:
    return jnp.dtype(leaf_dtype)
  if (jnp.issubdtype(leaf_dtype, jnp.complexfloating)
      and not jnp.issubdtype(dtype, jnp.complexfloating)):
    return jnp.result_type(dtype, jnp.complex64)
  return jnp.dtype(dtype)


class ScaleByMomentumState(NamedTuple):
  mu: Any  # per leaf: EMA of the updates, the leaf's shape, in `accumulator_dtype`.


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
        lambda p: layout.zeros(p, buffer_dtype(accumulator_dtype, p.dtype)), params))

  def average(u, m):
    return (1.0 - decay) * u + decay * m

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

  return fused.transformation(init_fn, kernel)


class AddDecayedWeightsState(NamedTuple):
  """State of `add_decayed_weights`."""

  count: jax.Array  # int32 scalar: number of updates (the schedule's step, if any).


def resolve_mask(mask: MaskOrFn, params: Any, treedef: Any, transform: str) -> list[Any]:
  """The mask's leaves, one per leaf of `treedef` (True everywhere when `mask` is None); a mask
  whose tree is a prefix of the params' gives each of its leaves to the params under it."""
  if mask is None:
    return [True] * treedef.num_leaves
  m = mask(params) if callable(mask) else mask
  like = treedef.unflatten([0] * treedef.num_leaves)
  try:  # a prefix of the params' tree (as optax.masked takes): each leaf covers its subtree
    m = jax.tree.map(lambda x, sub: jax.tree.map(lambda _: x, sub), m, like)
  except (ValueError, TypeError):
    pass  # not a prefix: named by the check below
  tree_lib.check_same_tree(transform, m, like, expected_name="the mask", got_name="the params")
  return treedef.flatten_up_to(m)


def add_decayed_weights(
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    param_scale_min: Optional[ArrayLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adds ``weight_decay * params`` to the updates (before the final sign flip).

  .. math:: u \leftarrow u + \lambda_t\, p \qquad\text{or, with param\_scale\_min,}\qquad
     u \leftarrow u + \lambda_t \max(\epsilon_2, \mathrm{RMS}(p))\, p

  Args:
    weight_decay: a non-negative float, or a schedule ``count -> rate``.
    mask: a pytree of bools with the params' structure (True: decay this leaf), or a callable
      ``params -> such a tree`` (for example `mask_by_path`); None decays every leaf.
    param_scale_min: optional :math:`\epsilon_2`: when set, each leaf's rate is also multiplied
      by ``max(param_scale_min, RMS(p))`` (transformers' Adafactor decays by its parameter-scaled
      step size ``lr_t``).

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `AddDecayedWeightsState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    >>> tx = adafactor_jax.add_decayed_weights(0.1, adafactor_jax.mask_by_path(exclude=["b$"]))
    >>> updates, _ = tx.update({"w": jnp.zeros(2), "b": jnp.zeros(2)}, tx.init(params), params)
    >>> print(updates["w"], updates["b"])
    [0.1 0.1] [0. 0.]

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019.

  Notes:
    As in optax, the decay is not multiplied by the learning rate when this block sits after
    `scale_by_learning_rate` (optax's and t5x's Adafactor place it there).
  """
  validation.check("weight_decay", weight_decay)
  if param_scale_min is not None:
    validation.check("param_scale_min", param_scale_min)
  validation.check("mask", mask)
  name = "add_decayed_weights"
  scheduled = callable(weight_decay)
  # A concrete 0 adds nothing (and needs no params). The state is the same whatever the rate, so
  # that a rate injected with optax.inject_hyperparams (an array) gives the plain state.
  off = validation.is_zero(weight_decay)

  def init_fn(params):
    del params
    return AddDecayedWeightsState(count=jnp.zeros([], jnp.int32))

  def kernel(leaves, state, params, ctx):
    count = optax.safe_increment(state.count)
    if off:
      return AddDecayedWeightsState(count=count)
    tree_lib.require_params(name, params, "weight decay adds a multiple of the params")
    treedef = tree_lib.check_same_tree(name, params, ctx.like(leaves), expected_name="the params",
                                       same_shapes=True)
    wd = weight_decay(state.count) if scheduled else weight_decay
    for d, p, m in zip(leaves, treedef.flatten_up_to(params),
                       resolve_mask(mask, params, treedef, name)):
      rate = wd
      if param_scale_min is not None:
        rms_dtype = jnp.promote_types(p.dtype, jnp.float32)
        rate = fused.like_leaf(
            wd * jnp.maximum(block_rms(p, factoring.UNFACTORED, rms_dtype, ctx.link),
                             param_scale_min),
            p.ndim)
      if not isinstance(m, (bool, np.bool_)):
        d.then(_decay_where, p, rate, m)
      elif m:
        d.then(_decay, p, rate)
    return AddDecayedWeightsState(count=count)

  return fused.transformation(init_fn, kernel)


def _decay(u, p, rate):
  return (u + rate * p).astype(u.dtype)


def _decay_where(u, p, rate, m):
  return jnp.where(m, u + rate * p, u).astype(u.dtype)


def mask_by_path(
    include: Optional[Union[str, Sequence[str]]] = None,
    exclude: Optional[Union[str, Sequence[str]]] = None,
) -> Callable[[Any], Any]:
  """Makes a mask function from regular expressions on each leaf's key path joined with '/'.

  A leaf is True when its path matches (``re.search``) any `include` pattern (every leaf when
  `include` is None) and no `exclude` pattern.

  Args:
    include: a pattern or list of patterns selecting leaves.
    exclude: a pattern or list of patterns removing leaves (Keras's
      ``exclude_from_weight_decay(var_names=...)``).

  Returns:
    A callable ``params -> pytree of bools`` for `add_decayed_weights` or ``optax.masked``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "ln": {"scale": 1.0}}
    >>> adafactor_jax.mask_by_path(include=["kernel"])(params)
    {'dense': {'bias': False, 'kernel': True}, 'ln': {'scale': False}}
    >>> adafactor_jax.mask_by_path(exclude=["bias", "ln/"])(params)
    {'dense': {'bias': False, 'kernel': True}, 'ln': {'scale': False}}
  """
  def compile_all(arg: str, patterns: Any) -> Optional[list[re.Pattern]]:
    if patterns is None:
      return None
    if isinstance(patterns, str):
      patterns = [patterns]
    if not isinstance(patterns, (list, tuple)):
      raise ValueError(f"mask_by_path: {arg} must be a regular-expression string or a list of "
                       f"them, got {patterns!r}.")
    out = []
    for pat in patterns:
      if not isinstance(pat, str):
        raise ValueError(f"mask_by_path: {arg} must hold regular-expression strings, got {pat!r}.")
      try:
        out.append(re.compile(pat))
      except re.error as e:
        raise ValueError(f"mask_by_path: {arg} pattern {pat!r} is invalid: {e}") from e
    return out

  inc, exc = compile_all("include", include), compile_all("exclude", exclude)

  def mask_fn(params):
    def leaf(path, _):
      s = tree_lib.path_str(path)
      keep = inc is None or any(p.search(s) for p in inc)
      return bool(keep and not (exc and any(p.search(s) for p in exc)))
    return tree_util.tree_map_with_path(leaf, params)

  # Recorded so that get_config can serialise this mask.
  as_given = lambda x: x if x is None or isinstance(x, str) else list(x)
  mask_fn._mask_by_path = (as_given(include), as_given(exclude))
  return mask_fn


def mask_by_first_match(rules: Any, name: str) -> Callable[[Any], Any]:
  """A mask function from ``{key-path regex: bool}`` (or pairs): the first matching pattern
  (``re.search`` on the '/'-joined key path) gives a leaf's value, as t5x's ``HParamMap``; a
  leaf that matches no pattern is an error naming it."""
  if hasattr(rules, "items"):
    items = list(rules.items())
  elif isinstance(rules, (list, tuple)):
    items = list(rules)
  else:
    raise ValueError(f"{name} must be a bool, a mapping or a sequence of (key-path regex, bool) "
                     f"pairs, got {rules!r}.")
  compiled = []
  for item in items:
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], (bool, np.bool_))):
      raise ValueError(f"{name}: {item!r} is not a (key-path regex, bool) pair; pass e.g. "
                       "{'layer_norm': False, '.*': True}.")
    try:
      compiled.append((re.compile(item[0]), bool(item[1])))
    except re.error as e:
      raise ValueError(f"{name}: {item[0]!r} is not a valid regular expression: {e}") from e

  def mask_fn(params):
    def leaf(path, _):
      s = tree_lib.path_str(path)
      for pattern, value in compiled:
        if pattern.search(s):
          return value
      raise ValueError(f"{name}: no pattern matches the parameter {s!r}; add a catch-all such "
                       "as '.*'.")
    return tree_util.tree_map_with_path(leaf, params)

  return mask_fn
