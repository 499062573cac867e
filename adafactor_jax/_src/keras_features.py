"""The Keras base-optimizer features as composable optax transformations.

Keras 3 gives every optimizer the same extra arguments (``keras.optimizers.Optimizer``):
static loss scaling, gradient accumulation, gradient clipping (per variable, by value, by global
norm), decoupled weight decay with exclusions, and an exponential moving average (EMA) of the
weights with periodic overwrite. Here each is a separate building block that composes with any
`optax.GradientTransformation`, in the order Keras applies them:

.. code-block:: text

   static_loss_scale -> accumulate_gradients( clip_by_* -> with_decoupled_weight_decay(core) )
     -> ema_params

None of them needs Keras at runtime. In an `adafactor_jax.chain` (every preset is one), all but
`ema_params` extend each leaf's update formula instead of storing their output (see
``adafactor_jax._src.fused``): clipped, unscaled or accumulated gradients and decayed weights are
computed inside the optimizer's passes, not stored.
"""

from __future__ import annotations

import functools
from typing import Any
from typing import Callable
from typing import NamedTuple
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from adafactor_jax._src import blocks
from adafactor_jax._src import fused
from adafactor_jax._src import layout
from adafactor_jax._src import tree as tree_lib
from adafactor_jax._src import validation
from adafactor_jax._src.factored import square


def _float_dtype(dtype: DTypeLike) -> jnp.dtype:
  """`dtype` promoted to at least float32 (for norms and sums of squares)."""
  return jnp.promote_types(dtype, jnp.float32)


# --------------------------------------------------------------------------- loss scaling


class StaticLossScaleState(NamedTuple):
  """State of `static_loss_scale`: the factor, so that `scale_loss` can find it."""

  loss_scale_factor: jax.Array  # float32 scalar: the static loss scale.


def static_loss_scale(loss_scale_factor: ArrayLike) -> optax.GradientTransformationExtraArgs:
  r"""Divides the gradients by a static loss-scale factor (Keras's ``loss_scale_factor``).

  The loss is multiplied by :math:`s` before differentiation (`scale_loss`), so the gradients
  arrive multiplied by :math:`s`; this block divides them back:

  .. math:: g \leftarrow g / s

  Args:
    loss_scale_factor: the factor :math:`s` (> 0, finite).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state `StaticLossScaleState` holds the
    factor (so ``scale_loss(loss, opt_state)`` needs no second copy of it).

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.static_loss_scale(1024.0)
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> float(adafactor_jax.scale_loss(jnp.float32(0.5), state))
    512.0
    >>> updates, _ = tx.update({"w": jnp.array([1024.0, 2048.0])}, state)
    >>> print(updates["w"])
    [1. 2.]

  References:
    Micikevicius et al., `Mixed Precision Training <https://arxiv.org/abs/1710.03740>`_, 2018.
    Keras ``Optimizer(loss_scale_factor=...)`` and ``Optimizer.scale_loss``.

  Notes:
    As Keras: the factor is static (for a dynamic one, Keras has ``LossScaleOptimizer``); the
    division happens before gradient accumulation and clipping. Injected with
    ``optax.inject_hyperparams``, the factor can be changed between steps: the update divides
    by the injected value, and `scale_loss` multiplies by it.
  """
  validation.check("loss_scale_factor", loss_scale_factor)

  def init_fn(params):
    del params
    return StaticLossScaleState(loss_scale_factor=jnp.asarray(loss_scale_factor, jnp.float32))

  def kernel(leaves, state, params, ctx):
    del params, ctx, state
    # The factor this block was built with, not the one `init` stored: under
    # `optax.inject_hyperparams` the block is built anew at every update with the injected value.
    factor = jnp.asarray(loss_scale_factor, jnp.float32)
    for d in leaves:
      d.then(lambda g, s: (g / s.astype(g.dtype)).astype(g.dtype),
             fused.like_leaf(factor, len(d.shape)))
    return StaticLossScaleState(loss_scale_factor=factor)

  return fused.transformation(init_fn, kernel)


def _find_states(opt_state: Any, cls: type) -> list[Any]:
  found = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, cls))
  return [x for x in found if isinstance(x, cls)]


def scale_loss(loss: ArrayLike, opt_state_or_factor: Any) -> jax.Array:
  r"""Multiplies a loss by the static loss-scale factor (Keras's ``optimizer.scale_loss``).

  .. math:: \ell \leftarrow s\,\ell

  Args:
    loss: the scalar loss (a traced value inside ``jax.grad`` is fine).
    opt_state_or_factor: the factor :math:`s` itself, or an optimizer state containing a
      `StaticLossScaleState` (from `static_loss_scale`, or the presets' ``loss_scale_factor``)
      or a ``loss_scale_factor`` injected by ``optax.inject_hyperparams`` (which comes first).
      A state without one leaves the loss unchanged, as Keras does without a factor.

  Returns:
    The scaled loss.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.keras_adadelta(1.0, loss_scale_factor=8.0)
    >>> params = jnp.array([1.0, 2.0])
    >>> state = tx.init(params)
    >>> loss = lambda p: adafactor_jax.scale_loss(jnp.sum(p ** 2), state)
    >>> print(jax.grad(loss)(params))  # scaled; the optimizer divides by 8 again
    [16. 32.]
    >>> float(adafactor_jax.scale_loss(3.0, 2.0))
    6.0

  References:
    Keras ``Optimizer.scale_loss``.
  """
  if isinstance(opt_state_or_factor, (str, bool, np.bool_)):
    raise ValueError(f"scale_loss: opt_state_or_factor must be a number or an optimizer state, "
                     f"got {opt_state_or_factor!r}.")
  if isinstance(opt_state_or_factor, (int, float, np.number, np.ndarray, jax.Array)):
    validation.check_number("opt_state_or_factor", opt_state_or_factor, low=0.0,
                            low_inclusive=False)
    return loss * opt_state_or_factor
  # An injected factor (optax.inject_hyperparams) first: the next update divides by it.
  injected = [x.hyperparams["loss_scale_factor"] for x in
              _find_states(opt_state_or_factor, optax.InjectStatefulHyperparamsState)
              + _find_states(opt_state_or_factor, optax.InjectHyperparamsState)
              if "loss_scale_factor" in x.hyperparams]
  if injected:
    return loss * injected[0]
  states = _find_states(opt_state_or_factor, StaticLossScaleState)
  if not states:
    return loss
  return loss * states[0].loss_scale_factor


# --------------------------------------------------------------------------- clipping


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
      ctx.seed(d)
      dtype, ndim = _float_dtype(d.dtype), len(d.shape)
      # The norm is a reduction of the leaf's formula (see `fused`): the clipped gradient is
      # not stored.
      l2sum = fused.like_leaf(d.reduce_apart(
          "leaf_norm", fused.total, lambda g, dtype=dtype: square(g, dtype), ctx.link), ndim)
      pred = l2sum > 0
      l2norm = jnp.where(pred, jnp.sqrt(jnp.where(pred, l2sum, 1.0)), l2sum)
      c = fused.operand(max_norm, dtype, ndim)
      d.then(lambda g, c, den, dtype=dtype: (g.astype(dtype) * c / den).astype(g.dtype), c,
             jnp.maximum(l2norm, c))
    return state

  return fused.transformation(fused.init_empty, kernel)


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
      d.then(lambda g, v: jnp.clip(g, -v, v).astype(g.dtype),
             fused.operand(max_value, d.dtype, len(d.shape)))
    return state

  return fused.transformation(fused.init_empty, kernel)


def clip_by_global_norm(max_norm: ArrayLike) -> optax.GradientTransformationExtraArgs:
  r"""Scales all gradients so that their global L2 norm is at most `max_norm` (Keras's
  ``global_clipnorm``).

  .. math:: g \leftarrow g \cdot c \min(1/\lVert g \rVert_2, 1/c), \qquad
     \lVert g \rVert_2 = \sqrt{\textstyle\sum_{\text{leaves}} \sum g^2}

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

  References:
    Pascanu et al., `On the difficulty of training recurrent neural networks
    <https://arxiv.org/abs/1211.5063>`_, 2013. Keras ``Optimizer(global_clipnorm=...)``.

  Notes:
    As Keras (and unlike ``optax.clip_by_global_norm``), a non-finite global norm turns every
    gradient into NaN instead of passing infinities through, so the problem is visible.
  """
  validation.check("max_norm", max_norm)

  def kernel(leaves, state, params, ctx):
    del params
    if not leaves:
      return state
    dtype = jnp.result_type(*[_float_dtype(d.dtype) for d in leaves])
    for d in leaves:
      ctx.seed(d)
    # Each leaf's sum of squares is a reduction of its formula (see `fused`): the clipped
    # gradients are not stored.
    sq = jnp.stack([d.reduce_apart("global_norm", fused.total, lambda g: square(g, dtype),
                                   ctx.link) for d in leaves])
    norm = jnp.sqrt(jnp.sum(sq))

    def keras_scale(_):
      return max_norm * jnp.minimum(1.0 / norm, 1.0 / max_norm) + (norm - norm)

    def rescaled(_):
      # The squared norm overflowed (or a gradient is not finite): recompute with the
      # gradients divided by their largest magnitude, so that finite gradients get a finite
      # scale; a NaN or Inf gradient still gives NaN, as Keras.
      link = fused.Link()  # (a link of this branch: its values stay in it)
      # So do the zeros and offsets of the leaves' seeds: their caches hold this branch's
      # tracers while it is traced, then the seeds of before (a later block, such as a second
      # global clipping, would otherwise reuse values of a finished trace).
      saved = [d.seed for d in leaves]
      scratch = {id(x): x.scratch() for x in saved if x is not None}
      for d in leaves:
        d.seed = None if d.seed is None else scratch[id(d.seed)]
      try:
        return rescaled_scale(link)
      finally:
        for d, x in zip(leaves, saved):
          d.seed = x

    def rescaled_scale(link):
      m = jnp.max(jnp.stack([
          d.reduce_apart("rescale_max", fused.largest, lambda g: jnp.abs(g.astype(dtype)), link,
                         full_size=True) for d in leaves]))
      sums = []
      for d in leaves:
        e = d.derived(lambda g, m: g.astype(dtype) / m, fused.like_leaf(m, len(d.shape)),
                      dtype=dtype)
        sums.append(e.reduce_apart("rescale", fused.total, jnp.square, link))
      s = jnp.sum(jnp.stack(sums))
      return jnp.minimum(1.0, (max_norm / m) / jnp.sqrt(s)) + (m - m)

    scale = jax.lax.cond(jnp.isfinite(norm), keras_scale, rescaled, None)
    for d in leaves:
      d.then(lambda g, s: (g.astype(dtype) * s).astype(g.dtype),
             fused.like_leaf(scale, len(d.shape)))
    return state

  return fused.transformation(fused.init_empty, kernel)


# --------------------------------------------------------------------------- weight decay


class DecoupledWeightDecayState(NamedTuple):
  """State of `with_decoupled_weight_decay`."""

  count: Any  # int32 scalar: calls so far (the learning-rate schedule's step), or None.
  inner_state: Any  # the wrapped transformation's state.


def with_decoupled_weight_decay(
    inner: optax.GradientTransformation,
    weight_decay: optax.ScalarOrSchedule,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    mask: blocks.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Decays the weights *before* `inner` runs, as Keras does: ``var <- var - var*wd*lr``.

  .. math::

     \tilde p &= p - p\,\lambda_t\,\eta_t \\
     p' &= \tilde p + \mathrm{inner}(g, \tilde p)

  so `inner` sees the decayed params (an Adafactor parameter scale is computed from them) and
  the update returned is :math:`(\tilde p - p) + \mathrm{inner}(g, \tilde p)`.

  Args:
    inner: the transformation to wrap (for example an Adafactor chain ending in the sign flip).
    weight_decay: :math:`\lambda`, a non-negative float or a schedule of the call count.
    learning_rate: :math:`\eta`, the *base* learning rate (a float or a schedule of the call
      count), not the step size the inner optimizer ends up using.
    mask: a pytree of bools (True: decay this leaf) or a callable ``params -> bools``, e.g.
      ``adafactor_jax.mask_by_path(exclude=["bias"])`` for Keras's
      ``exclude_from_weight_decay(var_names=["bias"])``; None decays every leaf.

  Returns:
    An `optax.GradientTransformationExtraArgs` with state `DecoupledWeightDecayState`;
    ``params`` are required.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import adafactor_jax
    >>> tx = adafactor_jax.with_decoupled_weight_decay(optax.sgd(1.0), 0.004, 1.0)
    >>> params = jnp.array([2.0])
    >>> updates, _ = tx.update(jnp.zeros(1), tx.init(params), params)
    >>> print(params + updates)
    [1.992]

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019. Keras ``Optimizer(weight_decay=...)``.

  Notes:
    Keras quirks reproduced: the decay is multiplied by the base learning rate (Keras's
    ``optimizer.learning_rate``, the schedule's value at this call), not by the step size the
    optimizer computes, and it happens before the update, so the update sees the decayed weights.
    ``optax.add_decayed_weights`` instead adds :math:`\lambda p` to the update, after it.
  """
  validation.check_transformation("inner", inner)
  validation.check("weight_decay", weight_decay)
  validation.check("learning_rate", learning_rate)
  validation.check("mask", mask)
  inner_kernel = getattr(inner.update, "fused", None)
  inner = optax.with_extra_args_support(inner)
  name = "with_decoupled_weight_decay"
  scheduled = callable(weight_decay) or callable(learning_rate)

  def init_fn(params):
    return DecoupledWeightDecayState(count=jnp.zeros([], jnp.int32) if scheduled else None,
                                     inner_state=inner.init(params))

  def kernel(leaves, state, params, ctx):
    tree_lib.require_params(name, params, "the weights are decayed before the update")
    treedef = tree_lib.check_same_tree(name, params, ctx.like(leaves),
                                       expected_name="the params", same_shapes=True)
    wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    p_leaves = treedef.flatten_up_to(params)
    masks = blocks.resolve_mask(mask, params, treedef, name)
    rates = [(jnp.asarray(wd, p.dtype), jnp.asarray(lr, p.dtype)) for p in p_leaves]
    # The inner transformation reads the decayed params computed from params and rates offset
    # by a zero that XLA cannot fold (see `fused`): they are computed inside its reductions and
    # again in the final pass, never stored (nor a broadcast of the constant rates).
    inner_params = []
    for p, m, rate in zip(p_leaves, masks, rates):
      z = fused.opaque_zero(p, p.dtype) if p.size else None
      inner_params.append(_decayed(*(fused.offset(x, z) for x in (p, m) + rate)))
      # half-precision reductions in blocks slice p instead (see `fused.Link.recipe`)
      ctx.link.recipe(inner_params[-1], _decayed_rounded, [p, m, *rate])
    inner_params = treedef.unflatten(inner_params)
    inner_state = fused.run_inner(inner, inner_kernel, leaves, state.inner_state, inner_params,
                                  ctx)
    for d, p, m, (w, r) in zip(leaves, p_leaves, masks, rates):
      ndim = len(d.shape)
      w, r = fused.like_leaf(w, ndim), fused.like_leaf(r, ndim)
      if isinstance(m, (bool, np.bool_)):
        d.then(lambda u, p, w, r, m=bool(m): ((_decayed(p, m, w, r) - p) + u).astype(u.dtype),
               p, w, r)
      else:
        d.then(lambda u, p, w, r, m: ((_decayed(p, m, w, r) - p) + u).astype(u.dtype),
               p, w, r, m)
    count = optax.safe_increment(state.count) if scheduled else None
    return DecoupledWeightDecayState(count=count, inner_state=inner_state)

  return fused.transformation(init_fn, kernel)


def _decayed(p: jax.Array, mask: Any, wd: jax.Array, lr: jax.Array,
             rounded: Callable[[jax.Array], jax.Array] = lambda x: x) -> jax.Array:
  """Keras's decayed weights ``p - p * wd * lr`` where `mask` (a bool or an array of them), each
  operation's result passed through `rounded`."""
  if isinstance(mask, (bool, np.bool_)) and not mask:
    return p
  decayed = rounded(p - rounded(rounded(p * wd) * lr))
  return decayed if isinstance(mask, (bool, np.bool_)) else jnp.where(mask, decayed, p)


def _decayed_rounded(p: jax.Array, mask: Any, wd: jax.Array, lr: jax.Array) -> jax.Array:
  """`_decayed`, each operation rounded to the dtype of `p` as in a stored array of it: inside a
  reduction XLA would keep half-precision products in float32 (excess precision)."""
  if not jnp.issubdtype(p.dtype, jnp.floating) or jnp.finfo(p.dtype).bits >= 32:
    return _decayed(p, mask, wd, lr)
  info = jnp.finfo(p.dtype)
  return _decayed(p, mask, wd, lr, functools.partial(
      jax.lax.reduce_precision, exponent_bits=info.nexp, mantissa_bits=info.nmant))


# --------------------------------------------------------------------------- accumulation


class AccumulateGradientsState(NamedTuple):
  """State of `accumulate_gradients`."""

  count: jax.Array  # int32 scalar: calls (micro-steps) so far.
  acc: Any  # per leaf: sum of the micro-step gradients since the last update (leaf's shape).
  inner_state: Any  # the wrapped transformation's state; changes only on update steps.


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
  inner_kernel = getattr(inner.update, "fused", None)
  inner = optax.with_extra_args_support(inner)
  k = int(gradient_accumulation_steps)
  name = "accumulate_gradients"

  def init_fn(params):
    acc = jax.tree.map(
        lambda p: layout.zeros(p, blocks.buffer_dtype(accumulator_dtype, p.dtype)), params)
    return AccumulateGradientsState(count=jnp.zeros([], jnp.int32), acc=acc,
                                    inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    tree_lib.check_same_tree(name, state.acc, updates, same_shapes=True)
    is_update = (state.count + 1) % k == 0

    def apply(operands):
      grads, acc, inner_state = operands
      # The mean gradient is the formula that the inner transformation starts from (see
      # `fused`): its reductions compute it, it is not stored.
      ctx = fused.Context(grads, extra_args)
      leaves = []
      for g, a in zip(ctx.treedef.flatten_up_to(grads), ctx.treedef.flatten_up_to(acc)):
        d = fused.Deferred(g)
        # g * 1 (exact): the formula's first operation takes a small input, which is offset
        # where it is computed apart, so that no pass shares g + a with another.
        dtype, ndim = jnp.result_type(g.dtype, a.dtype), g.ndim
        d.then(lambda g, a, one, k: ((g.astype(k.dtype) * one + a) / k).astype(g.dtype), a,
               fused.operand(1, dtype, ndim), fused.operand(k, dtype, ndim))
        leaves.append(d)
      new_inner = fused.run_inner(inner, inner_kernel, leaves, inner_state, params, ctx)
      return jax.tree.map(lambda x, g: x.astype(g.dtype), ctx.finish(leaves), grads), new_inner

    def skip(operands):
      grads, _, inner_state = operands
      return jax.tree.map(jnp.zeros_like, grads), inner_state

    u, inner_state = jax.lax.cond(is_update, apply, skip, (updates, state.acc, state.inner_state))
    # The sums restart from zero after an update. Computed outside the cond, where XLA writes
    # them in place (a cond's outputs are buffers of their own), and after it (an always false
    # term from its output: else XLA copies the sums that the cond reads before overwriting).
    acc = jax.tree.map(
        lambda g, a, u: jnp.where(
            is_update | (fused.opaque_zero(u, jnp.bool_) if u.size else False),
            jnp.zeros_like(a), (g.astype(jnp.result_type(g.dtype, a.dtype)) + a).astype(a.dtype)),
        updates, state.acc, u)
    return u, AccumulateGradientsState(count=optax.safe_increment(state.count), acc=acc,
                                       inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- EMA of the weights


class EmaParamsState(NamedTuple):
  """State of `ema_params`."""

  count: jax.Array  # int32 scalar: calls so far.
  ema: Any  # per leaf: the moving average of the weights (leaf's shape, `dtype`).


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
                              lambda p: layout.zeros(p, blocks.buffer_dtype(dtype, p.dtype)),
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
        # Read apart (see `fused`): else the update is stored, shared by the average and the
        # overwrite below. The overwrite reads the new average, which the state output stores
        # first (the params that the final pass overwrites are read before it).
        ctx.seed(d)
        u = d.value_apart("ema")
      new_p = jnp.asarray(p + u).astype(p.dtype)  # as optax.apply_updates
      avg = (mu.astype(a.dtype) * a + (1 - mu).astype(a.dtype) * new_p.astype(a.dtype)).astype(
          a.dtype)
      new_ema.append(avg)
      if overwrite is not None:
        d.then(lambda u, avg, p, overwrite: jnp.where(
            overwrite, (avg.astype(p.dtype) - p).astype(u.dtype), u), avg, p, overwrite)
    return EmaParamsState(count=optax.safe_increment(state.count),
                          ema=treedef.unflatten(new_ema))

  return fused.transformation(init_fn, kernel)


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
  states = _find_states(opt_state, EmaParamsState)
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
  return treedef.unflatten(out)

