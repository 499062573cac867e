"""Weight decay: added to the update (optax, t5x, big_vision, PyTorch, transformers) or applied to
the weights before it (Keras)."""

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

from adafactor_jax._src import block_rms
from adafactor_jax._src import engine
from adafactor_jax._src import factoring
from adafactor_jax._src import masks
from adafactor_jax._src import tree as tree_lib
from adafactor_jax._src import validation

# ---------------------------------------------------------------- the math, one leaf at a time
# What each block computes, written plainly: the reference its kernel is tested against
# (tests/test_weight_decay.py).


def decay_added(u: jax.Array, p: jax.Array, rate: ArrayLike) -> jax.Array:
  """`add_decayed_weights`: ``u + rate * p``."""
  return (u + rate * p).astype(u.dtype)


def decoupled_decay_added(u_of: Callable[[jax.Array], jax.Array], p: jax.Array, weight_decay:
                          ArrayLike, learning_rate: ArrayLike) -> jax.Array:
  """`with_decoupled_weight_decay` (Keras): the weights decayed first, ``p' = p - p * wd * lr``,
  then the inner update `u_of` computed at `p'`; the update returned is ``(p' - p) + u_of(p')``."""
  decayed = p - p * weight_decay * learning_rate
  return ((decayed - p) + u_of(decayed)).astype(p.dtype)


# ---------------------------------------------------------------- the blocks


class AddDecayedWeightsState(NamedTuple):
  """State of `add_decayed_weights`.

  Attributes:
    count: int32, shape ``()``: the number of updates (the weight-decay schedule's step).
  """

  count: jax.Array  # type: ignore[assignment]  # (a field named as optax's, not tuple.count)


def add_decayed_weights(
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: masks.MaskOrFn = None,
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
                       masks.resolve_mask(mask, params, treedef, name)):
      rate = wd
      if param_scale_min is not None:
        rms_dtype = jnp.promote_types(p.dtype, jnp.float32)
        rate = engine.like_leaf(
            wd * jnp.maximum(block_rms.block_rms(p, factoring.UNFACTORED, rms_dtype, ctx.link),
                             param_scale_min),
            p.ndim)
      if not isinstance(m, (bool, np.bool_)):
        d.then(_decay_where, p, rate, m)
      elif m:
        d.then(decay_added, p, rate)
    return AddDecayedWeightsState(count=count)

  return engine.transformation(init_fn, kernel)


def _decay_where(u, p, rate, m):
  return jnp.where(m, decay_added(u, p, rate), u).astype(u.dtype)


class DecoupledWeightDecayState(NamedTuple):
  """State of `with_decoupled_weight_decay`.

  Attributes:
    count: int32, shape ``()``: the number of calls (the schedules' step), or ``None`` when
      neither the weight decay nor the learning rate is a schedule.
    inner_state: the wrapped transformation's state.
  """

  count: Optional[jax.Array]  # type: ignore[assignment]  # (as optax's, not tuple.count)
  inner_state: optax.OptState


def with_decoupled_weight_decay(
    inner: optax.GradientTransformation,
    weight_decay: optax.ScalarOrSchedule,
    learning_rate: optax.ScalarOrSchedule = 1.0,
    *,
    mask: masks.MaskOrFn = None,
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
  inner_kernel = engine.kernel_of(inner)
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
    leaf_masks = masks.resolve_mask(mask, params, treedef, name)
    rates = [(jnp.asarray(wd, p.dtype), jnp.asarray(lr, p.dtype)) for p in p_leaves]
    # The inner transformation reads the decayed params computed from params and rates offset
    # by a zero that XLA cannot fold (see docs/design/engine.md): they are computed inside its
    # reductions and again in the final pass, never stored (nor a broadcast of the constant rates).
    inner_params = treedef.unflatten([
        ctx.computed_apart(_decayed, [p, m, *rate], rounded=_decayed_rounded)
        for p, m, rate in zip(p_leaves, leaf_masks, rates)])
    inner_state = engine.run_inner(inner, inner_kernel, leaves, state.inner_state, inner_params,
                                  ctx)
    for d, p, m, (w, r) in zip(leaves, p_leaves, leaf_masks, rates):
      ndim = len(d.shape)
      w, r = engine.like_leaf(w, ndim), engine.like_leaf(r, ndim)
      if isinstance(m, (bool, np.bool_)):
        d.then(lambda u, p, w, r, m=bool(m): ((_decayed(p, m, w, r) - p) + u).astype(u.dtype),
               p, w, r)
      else:
        d.then(lambda u, p, w, r, m: ((_decayed(p, m, w, r) - p) + u).astype(u.dtype),
               p, w, r, m)
    count = optax.safe_increment(state.count) if scheduled else None
    return DecoupledWeightDecayState(count=count, inner_state=inner_state)

  return engine.transformation(init_fn, kernel)


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
