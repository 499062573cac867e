"""`hf_adafactor`: Hugging Face ``transformers.Adafactor``, argument for argument."""

from __future__ import annotations

from typing import Any
from typing import Optional

import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from adafactor_jax._src import clipping
from adafactor_jax._src import engine
from adafactor_jax._src import scaling
from adafactor_jax._src import validation
from adafactor_jax._src import weight_decay as decay_lib
from adafactor_jax._src.config import preset
from adafactor_jax._src.factored import scale_by_factored_rms


@preset
def hf_adafactor(
    lr: Optional[optax.ScalarOrSchedule] = None,
    eps: tuple[ArrayLike, ArrayLike] = (1e-30, 1e-3),
    clip_threshold: ArrayLike = 1.0,
    decay_rate: validation.Scalar = -0.8,
    beta1: Optional[ArrayLike] = None,
    weight_decay: ArrayLike = 0.0,
    scale_parameter: bool = True,
    relative_step: bool = True,
    warmup_init: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Adafactor with the semantics and defaults of ``transformers.Adafactor`` (T5 recipes).

  For step :math:`t = 1, 2, \dots`, with :math:`(\epsilon_1, \epsilon_2)` = `eps` and the last two
  dims of a leaf factored:

  .. math::

     \rho_t &= \min(10^{-2} \text{ or } 10^{-6} t \text{ (warmup\_init)}, 1/\sqrt{t})
       \text{ if relative\_step, else lr} \\
     \eta_t &= \rho_t \cdot \max(\epsilon_2, \mathrm{RMS}(p_{t-1}))
       \text{ (if scale\_parameter, else } \rho_t\text{)}, \qquad
       \beta_{2,t} = 1 - t^{\text{decay\_rate}} \\
     R_t &= \beta_{2,t} R_{t-1} + (1-\beta_{2,t})\, \mathrm{mean}_{-1}(G^2 + \epsilon_1), \quad
     C_t = \beta_{2,t} C_{t-1} + (1-\beta_{2,t})\, \mathrm{mean}_{-2}(G^2 + \epsilon_1) \\
     u_t &= \eta_t \cdot \mathrm{clip}\big(G / \sqrt{R_t C_t / \mathrm{mean}(R_t)},
       \text{clip\_threshold}\big), \qquad
     m_t = \beta_1 m_{t-1} + (1-\beta_1) u_t \text{ (if beta1)} \\
     p_t &= p_{t-1} - \text{weight\_decay}\cdot\eta_t\, p_{t-1} - (m_t \text{ or } u_t)

  Args:
    lr: the external learning rate, used only with ``relative_step=False`` (then required); a
      float or a schedule ``count -> lr``.
    eps: :math:`(\epsilon_1, \epsilon_2)`: added to the squared gradient; floor of the parameter
      scale (both >= 0).
    clip_threshold: update clipping threshold (> 0).
    decay_rate: exponent of :math:`1 - \beta_{2,t}` (<= 0: PyTorch's ``beta2_decay``).
    beta1: momentum coefficient in [0, 1) applied to the lr-scaled update, or None (no
      momentum; 0.0 still keeps a momentum buffer, as transformers).
    weight_decay: weight decay (>= 0, or a schedule), multiplied by the step size :math:`\eta_t`
      (which includes the parameter scale).
    scale_parameter: multiply the step by :math:`\max(\epsilon_2, \mathrm{RMS}(p))`.
    relative_step: use :math:`\rho_t` instead of `lr`.
    warmup_init: with `relative_step`, warm the relative step up linearly (``1e-6 * t``).

  Returns:
    An `optax.GradientTransformationExtraArgs`: a `chain` of the building blocks.

  Raises:
    ValueError: `lr` together with ``relative_step=True``, ``warmup_init=True`` without
      `relative_step` (both as transformers), or ``relative_step=False`` without `lr`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import adafactor_jax
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> params = jnp.array([1.0, 2.0, 3.0])
    >>> solver = adafactor_jax.hf_adafactor(lr=0.1, relative_step=False)
    >>> opt_state = solver.init(params)
    >>> for _ in range(3):
    ...   updates, opt_state = solver.update(jax.grad(f)(params), opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"{f(params):.5f}")
    11.54770
    9.65413
    8.16582

  References:
    Shazeer & Stern, `Adafactor: Adaptive Learning Rates with Sublinear Memory Cost
    <https://arxiv.org/abs/1804.04235>`_, 2018; ``transformers/optimization.py``
    (``Adafactor``, from fairseq).

  Notes:
    Equal to ``transformers.Adafactor`` step by step in float32 (tested live). Deliberate
    differences: ``relative_step=False`` without `lr` is a ``ValueError`` here, at construction
    (transformers fails with a ``TypeError`` at the first step); a positive `decay_rate` is a
    ``ValueError`` (transformers lets :math:`\beta_2` go negative); `lr` may be a schedule.
    Differences from the paper and from optax: momentum averages lr-scaled steps, and the
    weight decay is multiplied by :math:`\eta_t`, so it grows with :math:`\mathrm{RMS}(p)`.
    Half-precision parameters: as transformers, the statistics and the update are computed in
    float32; the update is then returned in the parameter dtype and added by
    ``optax.apply_updates``, so a bfloat16 parameter is rounded twice where transformers rounds
    its float32 sum once.
  """
  if not isinstance(eps, (tuple, list)) or len(eps) != 2:
    raise ValueError(f"eps must be a pair (eps1, eps2), got {eps!r}.")
  eps1, eps2 = eps
  for name, value in (("scale_parameter", scale_parameter), ("relative_step", relative_step),
                      ("warmup_init", warmup_init)):
    validation.check(name, value)
  if lr is not None and relative_step:
    raise ValueError("Cannot combine manual `lr` and `relative_step=True` options (as "
                     "transformers): pass relative_step=False to use lr.")
  if warmup_init and not relative_step:
    raise ValueError("`warmup_init=True` requires `relative_step=True` (as transformers).")
  if lr is None and not relative_step:
    raise ValueError("relative_step=False needs a learning rate: pass lr=... (transformers "
                     "accepts this and fails with a TypeError at the first step).")
  if lr is not None:
    validation.check("lr", lr)
  validation.check("eps[0]", eps1, rule="eps")
  validation.check("eps[1]", eps2, rule="eps")
  validation.check("clip_threshold", clip_threshold)
  validation.check("decay_rate", decay_rate, rule="beta2_decay")
  if beta1 is not None:
    validation.check("beta1", beta1)
  validation.check("weight_decay", weight_decay)

  rho = (scaling.relative_step_size(1e-2, warmup_rate=1e-6 if warmup_init else None)
         if relative_step else lr)
  tx: list[Any] = [
      scale_by_factored_rms(decay_rate=-decay_rate, min_dim_size_to_factor=0, epsilon=eps1,
                            factor_rule="last", stats_dtype=jnp.float32),
      clipping.clip_by_block_rms(clip_threshold),
      scaling.scale_by_learning_rate(rho, flip_sign=False),
  ]
  if scale_parameter:
    tx.append(scaling.scale_by_param_block_rms(eps2))
  if beta1 is not None:
    tx.append(scaling.scale_by_momentum(beta1, accumulator_dtype=jnp.float32))
  # Always a block (a concrete 0 adds nothing): see `torch_adafactor`.
  if validation.is_zero(weight_decay):
    decay = 0.0
  else:
    decay = scaling.times(rho, weight_decay)
  tx.append(decay_lib.add_decayed_weights(
      decay, param_scale_min=eps2 if scale_parameter else None))
  tx.append(scaling.scale_by_learning_rate(1.0))  # descent: flip the sign
  return engine.chain(*tx)
