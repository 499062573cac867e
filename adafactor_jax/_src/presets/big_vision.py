"""`big_vision_adafactor`: big_vision's ``scale_by_adafactor`` with its lr and weight decay."""

from __future__ import annotations

from typing import Any
from typing import Optional

import jax.numpy as jnp
import optax
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from adafactor_jax._src import clipping
from adafactor_jax._src import engine
from adafactor_jax._src import masks
from adafactor_jax._src import scaling
from adafactor_jax._src import validation
from adafactor_jax._src import weight_decay as decay_lib
from adafactor_jax._src.config import preset
from adafactor_jax._src.factored import decay_rate_pow
from adafactor_jax._src.factored import scale_by_factored_rms


def _is_off(x: Any) -> bool:
  """big_vision's ``if x`` on an optional hyperparameter: None and a concrete 0 are off."""
  return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0)


@preset
def big_vision_adafactor(
    learning_rate: optax.ScalarOrSchedule,
    *,
    min_dim_size_to_factor: int = 32,
    decay_rate: ArrayLike = 0.8,
    decay_offset: int = 0,
    beta2_cap: ArrayLike = 0.999,
    clipping_threshold: Optional[ArrayLike] = None,
    momentum: Optional[ArrayLike] = 0.9,
    dtype_momentum: DTypeLike = jnp.bfloat16,
    eps: ArrayLike = 1e-30,
    weight_decay: Optional[optax.ScalarOrSchedule] = None,
    weight_decay_mask: masks.MaskOrFn = None,
    stats_dtype: Optional[DTypeLike] = jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""The big_vision Adafactor ("Scaling Vision Transformers"): momentum before the learning rate.

  big_vision's ``scale_by_adafactor`` followed by its learning-rate and decoupled weight-decay
  steps:

  .. math::

     \hat\beta_{2,t} &= \min(\text{beta2\_cap},\, 1 - t^{-\text{decay\_rate}}) \\
     u_t &= G_t / \sqrt{\hat V_t} \quad\text{(factored over the two largest dims, see
       scale\_by\_factored\_rms)} \\
     \hat u_t &= u_t / \max(1, \mathrm{RMS}(u_t)/d) \quad\text{(if clipping\_threshold } d
       \text{)} \\
     m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, \hat u_t \quad\text{(stored in dtype\_momentum)} \\
     p_t &= p_{t-1} - \eta_t\, m_t - \lambda_t\, p_{t-1}

  There is no parameter scale and no relative step size.

  Args:
    learning_rate: :math:`\eta_t`, a float or a schedule (big_vision's ``config.lr`` times its
      schedule).
    min_dim_size_to_factor: only factor a leaf whose two largest dims are at least this large.
    decay_rate: exponent of the second-moment decay schedule (>= 0).
    decay_offset: subtracted from the step count in that schedule.
    beta2_cap: the cap of :math:`\hat\beta_2` (0.999 in the ViT-g recipe).
    clipping_threshold: update clipping threshold (> 0), or None (off, the default); 0 is off
      too, as big_vision's ``if clipping_threshold``.
    momentum: :math:`\beta_1` in [0, 1), or None/0 for none. (Both switches decide the state's
      structure from a concrete value: under ``optax.inject_hyperparams`` an injected 0 is an
      array and cannot switch a block off; pass None, or the argument in ``static_args``.)
    dtype_momentum: dtype of the momentum buffer (bfloat16).
    eps: added to the squared gradients (>= 0).
    weight_decay: :math:`\lambda_t`, a float or schedule (not multiplied by the learning rate),
      or None.
    weight_decay_mask: pytree of bools or callable ``params -> bools`` (e.g.
      ``mask_by_path(include=r"(^|/)kernel$")``, big_vision's default ``wd_mults``); None decays
      every leaf.
    stats_dtype: dtype of the second-moment statistics (float32); None keeps the param dtype,
      as big_vision (through optax).

  Returns:
    An `optax.GradientTransformationExtraArgs`: a `chain` of the building blocks.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import adafactor_jax
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> params = jnp.array([1.0, 2.0, 3.0])
    >>> solver = adafactor_jax.big_vision_adafactor(0.1, momentum=0.9, dtype_momentum=jnp.float32)
    >>> opt_state = solver.init(params)
    >>> for _ in range(3):
    ...   updates, opt_state = solver.update(jax.grad(f)(params), opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"{f(params):.5f}")
    13.88030
    13.65478
    13.33751

  References:
    Zhai et al., `Scaling Vision Transformers <https://arxiv.org/abs/2106.04560>`_, 2021;
    Shazeer & Stern, `Adafactor <https://arxiv.org/abs/1804.04235>`_, 2018;
    ``big_vision/optax.py`` (``scale_by_adafactor``, ``make``).

  Notes:
    Equal to big_vision's chain written with optax's public pieces (tested). big_vision
    multiplies its weight decay by its schedule (applied after the decay) but not by
    ``config.lr``; here the decay is added after the learning rate and not multiplied by it:
    pass a schedule ``lambda t: wd * schedule(t)`` as `weight_decay` to reproduce a scheduled
    big_vision run. Statistics are float32 by default (big_vision: the parameter dtype).
    Differences from the paper: momentum (before the learning rate, in bfloat16), the capped
    :math:`\beta_2`, no parameter scale, no update clipping by default.
  """
  validation.check("learning_rate", learning_rate)
  validation.check("min_dim_size_to_factor", min_dim_size_to_factor)
  validation.check("decay_rate", decay_rate)
  validation.check("decay_offset", decay_offset)
  validation.check("beta2_cap", beta2_cap)
  validation.check("eps", eps)
  if not _is_off(clipping_threshold):
    validation.check("clipping_threshold", clipping_threshold)
  if not _is_off(momentum):
    validation.check("momentum", momentum)
  validation.check("dtype_momentum", dtype_momentum)
  validation.check("weight_decay_mask", weight_decay_mask)
  if weight_decay is not None:
    validation.check("weight_decay", weight_decay)

  def capped_decay_rate(step, exponent):
    return jnp.minimum(beta2_cap, decay_rate_pow(step, exponent))

  tx: list[Any] = [scale_by_factored_rms(
      True, decay_rate, decay_offset, min_dim_size_to_factor, eps, capped_decay_rate,
      factor_rule="largest", stats_dtype=stats_dtype)]
  if clipping_threshold is not None and not _is_off(clipping_threshold):
    tx.append(clipping.clip_by_block_rms(clipping_threshold))
  if momentum is not None and not _is_off(momentum):
    tx.append(scaling.scale_by_momentum(momentum, accumulator_dtype=dtype_momentum))
  tx.append(scaling.scale_by_learning_rate(learning_rate, flip_sign=False))
  if weight_decay is not None:
    tx.append(decay_lib.add_decayed_weights(weight_decay, weight_decay_mask))
  tx.append(scaling.scale_by_learning_rate(1.0))  # descent: flip the sign
  return engine.chain(*tx)
