"""Static loss scaling (Keras's ``loss_scale_factor``): the loss times a factor, the gradients
divided by it."""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from adafactor_jax._src import engine
from adafactor_jax._src import tree as tree_lib
from adafactor_jax._src import validation

# ---------------------------------------------------------------- the math, one leaf at a time
# What the block computes, written plainly: the reference its kernel is tested against
# (tests/test_loss_scaling.py).


def unscaled(g: jax.Array, loss_scale_factor: ArrayLike) -> jax.Array:
  """`static_loss_scale`: the gradient of the scaled loss divided by the factor, ``g / s``."""
  return (g / jnp.asarray(loss_scale_factor).astype(g.dtype)).astype(g.dtype)


# ---------------------------------------------------------------- the block


class StaticLossScaleState(NamedTuple):
  """State of `static_loss_scale`: the factor, so that `scale_loss` can find it.

  Attributes:
    loss_scale_factor: float32, shape ``()``: the static loss scale.
  """

  loss_scale_factor: jax.Array


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
      d.then(unscaled,
             engine.like_leaf(factor, len(d.shape)))
    return StaticLossScaleState(loss_scale_factor=factor)

  return engine.transformation(init_fn, kernel)


def scale_loss(loss: ArrayLike, opt_state_or_factor: Any) -> ArrayLike:
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
              tree_lib.find_states(opt_state_or_factor, optax.InjectStatefulHyperparamsState)
              + tree_lib.find_states(opt_state_or_factor, optax.InjectHyperparamsState)
              if "loss_scale_factor" in x.hyperparams]
  if injected:
    return loss * injected[0]
  states = tree_lib.find_states(opt_state_or_factor, StaticLossScaleState)
  if not states:
    return loss
  return loss * states[0].loss_scale_factor
