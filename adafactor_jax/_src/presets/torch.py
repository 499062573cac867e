"""`torch_adafactor`: PyTorch's ``torch.optim.Adafactor``, argument for argument."""

from __future__ import annotations

from typing import Any
from typing import Optional

import jax.numpy as jnp
import optax
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from adafactor_jax._src import clipping
from adafactor_jax._src import engine
from adafactor_jax._src import scaling
from adafactor_jax._src import validation
from adafactor_jax._src import weight_decay as decay_lib
from adafactor_jax._src.config import preset
from adafactor_jax._src.factored import scale_by_factored_rms


@preset
def torch_adafactor(
    lr: optax.ScalarOrSchedule = 1e-2,
    beta2_decay: validation.Scalar = -0.8,
    eps: tuple[Optional[ArrayLike], ArrayLike] = (None, 1e-3),
    d: ArrayLike = 1.0,
    weight_decay: ArrayLike = 0.0,
    maximize: bool = False,
    *,
    foreach: Optional[bool] = None,
    stats_dtype: Optional[DTypeLike] = jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""Adafactor with the semantics and defaults of PyTorch's ``torch.optim.Adafactor``.

  For step :math:`t = 1, 2, \dots`, gradient :math:`G` (negated if `maximize`), with
  :math:`(\epsilon_1, \epsilon_2)` = `eps` and the last two dims of a leaf factored:

  .. math::

     \beta_{2,t} &= 1 - t^{\text{beta2\_decay}}, \qquad
       \rho_t = \min(\text{lr}, 1/\sqrt{t}), \qquad
       \alpha_t = \max(\epsilon_2, \mathrm{RMS}(p_{t-1}))\, \rho_t \\
     R_t &= \beta_{2,t} R_{t-1} + (1-\beta_{2,t})\, \mathrm{mean}_{-1}(G^2), \quad
     C_t = \beta_{2,t} C_{t-1} + (1-\beta_{2,t})\, \mathrm{mean}_{-2}(G^2) \\
     \hat V_t &= \max\big(R_t C_t / \max(\mathrm{mean}_{-2}(R_t), \epsilon_1),\; \epsilon_1^2
       \big) \quad\text{(rank < 2: } \max(V_t, \epsilon_1^2)\text{)} \\
     U_t &= G / \sqrt{\hat V_t}, \qquad
     p_t = p_{t-1} (1 - \text{lr}\cdot\text{weight\_decay})
       - \alpha_t\, U_t / \max(1, \mathrm{RMS}(U_t)/d)

  Args:
    lr: the cap of the relative step size :math:`\rho_t` (>= 0), 1e-2 as in the paper. A
      schedule ``count -> lr`` plays the part of a PyTorch LR scheduler: it caps
      :math:`\rho_t` and multiplies the weight decay.
    beta2_decay: exponent of :math:`1 - \beta_{2,t}` (<= 0).
    eps: :math:`(\epsilon_1, \epsilon_2)`. :math:`\epsilon_1` (>= 0) floors the estimate (it is
      *not* added to :math:`G^2`); None means ``jnp.finfo(dtype).eps`` of each leaf's own
      dtype. :math:`\epsilon_2` (>= 0) floors the parameter scale.
    d: update clipping threshold (>= 1).
    weight_decay: decoupled weight decay (>= 0, or a schedule), multiplied by ``lr``.
    maximize: ascend instead of descend (the gradient is negated; the weight decay is not).
    foreach: accepted for PyTorch compatibility (its choice between a loop over tensors and
      batched kernels); it has no effect: the compiled step is the same. A bool or None.
    stats_dtype: dtype of the statistics (float32); None keeps the leaf's dtype, as PyTorch.

  Returns:
    An `optax.GradientTransformationExtraArgs`: a `chain` of the building blocks.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import adafactor_jax
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> params = jnp.array([1.0, 2.0, 3.0])
    >>> solver = adafactor_jax.torch_adafactor(lr=0.1)
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
    <https://arxiv.org/abs/1804.04235>`_, 2018; ``torch/optim/_adafactor.py`` (PyTorch 2.5+).

  Notes:
    Equal to ``torch.optim.Adafactor`` step by step in float32 (tested live). Deliberate
    differences: with ``eps[0]=None``, :math:`\epsilon_1` is resolved per leaf from that leaf's
    dtype, where PyTorch resolves it from the first parameter of the group and reuses it for the
    rest (a bfloat16 first parameter then damps every float32 gradient below about 8e-3);
    statistics are float32 by default (PyTorch: the parameter's dtype); ``lr`` may be a schedule;
    complex parameters are accepted (PyTorch raises). Differences from the paper:
    :math:`\epsilon_1` clamps instead of being added, :math:`\rho_t` and the parameter scale
    cannot be switched off, and the last two dims are factored whatever their sizes.
  """
  if not isinstance(eps, (tuple, list)) or len(eps) != 2:
    raise ValueError(f"eps must be a pair (eps1, eps2), got {eps!r}.")
  eps1, eps2 = eps
  validation.check("lr", lr)
  validation.check("beta2_decay", beta2_decay)
  if eps1 is not None:
    validation.check("eps[0]", eps1, rule="eps")
  validation.check("eps[1]", eps2, rule="eps")
  validation.check("d", d)
  validation.check("weight_decay", weight_decay)
  validation.check("maximize", maximize)
  if foreach is not None:
    validation.check("foreach", foreach)

  tx: list[Any] = []
  if maximize:
    tx.append(scaling.scale_by_learning_rate(1.0))  # g -> -g
  tx += [
      scale_by_factored_rms(
          decay_rate=-beta2_decay, min_dim_size_to_factor=0, epsilon=eps1,
          factor_rule="last", stats_dtype=stats_dtype, epsilon_mode="clamp"),
      clipping.clip_by_block_rms(d),
      scaling.scale_by_learning_rate(scaling.relative_step_size(lr), flip_sign=False),
      scaling.scale_by_param_block_rms(eps2),
  ]
  # Always a block (a concrete 0 adds nothing), so that the state's structure does not depend
  # on the rate's value (optax.inject_hyperparams injects it as an array).
  if validation.is_zero(weight_decay):
    decay = 0.0
  else:
    decay = scaling.times(lr, weight_decay)
  tx.append(decay_lib.add_decayed_weights(decay))
  tx.append(scaling.scale_by_learning_rate(1.0))  # descent: flip the sign
  return engine.chain(*tx)
