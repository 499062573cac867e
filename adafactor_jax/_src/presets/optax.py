"""`adafactor` and `adadelta` with optax's signatures and defaults (a superset)."""

from __future__ import annotations

from typing import Any
from typing import Mapping
from typing import Optional
from typing import Sequence
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from adafactor_jax._src import clipping
from adafactor_jax._src import engine
from adafactor_jax._src import factoring
from adafactor_jax._src import masks
from adafactor_jax._src import scaling
from adafactor_jax._src import validation
from adafactor_jax._src import weight_decay as decay_lib
from adafactor_jax._src.adadelta import scale_by_adadelta
from adafactor_jax._src.config import preset
from adafactor_jax._src.factored import scale_by_factored_rms


@preset
def adafactor(
    learning_rate: Optional[optax.ScalarOrSchedule] = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: ArrayLike = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: Union[bool, Mapping[str, bool],
                                       Sequence[tuple[str, bool]]] = True,
    clipping_threshold: Optional[ArrayLike] = 1.0,
    momentum: Optional[ArrayLike] = None,
    dtype_momentum: DTypeLike = jnp.float32,
    weight_decay_rate: Optional[optax.ScalarOrSchedule] = None,
    eps: ArrayLike = 1e-30,
    factored: bool = True,
    weight_decay_mask: masks.MaskOrFn = None,
    *,
    factor_rule: factoring.FactorRule = "largest",
    stats_dtype: Optional[DTypeLike] = jnp.float32,
    max_parameter_scale: Optional[ArrayLike] = None,
    global_norm_clip_threshold: Optional[ArrayLike] = None,
    weight_decay_rate_lr_exponent: Optional[ArrayLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The Adafactor optimizer, with optax's signature and defaults (a superset).

  The update travels grads -> [global-norm clipping] -> factored statistics -> update clipping
  -> learning rate -> parameter scale -> momentum -> weight decay -> sign:

  .. math::

     G_t &\leftarrow G_t \min(1, c / \lVert G_t \rVert_{\text{global}})
       \quad\text{(if global\_norm\_clip\_threshold } c\text{)} \\
     u_t &= G_t / \sqrt{\hat V_t} \quad\text{(see scale\_by\_factored\_rms)} \\
     \hat u_t &= u_t / \max(1, \mathrm{RMS}(u_t)/d) \\
     s_t &= \eta_t\, \min(\max(\mathrm{RMS}(p_{t-1}), 10^{-3}), \text{max\_parameter\_scale})
       \, \hat u_t \\
     m_t &= \beta_1 m_{t-1} + (1-\beta_1) s_t \quad\text{(if momentum)} \\
     p_t &= p_{t-1} - (m_t \text{ or } s_t) - \lambda_t\, p_{t-1} \quad\text{(if weight decay)}

  with :math:`\lambda_t = (\text{weight\_decay\_rate or } 1)\,\eta_t^{e}` when
  ``weight_decay_rate_lr_exponent`` :math:`e` is set (t5x).

  Args:
    learning_rate: a float or schedule; ``None`` applies no learning-rate scaling at all (as
      optax: the step is then about ``RMS(p)`` -- pass a schedule such as
      ``lambda t: jnp.minimum(1e-2, jax.lax.rsqrt(t + 1.0))`` for the paper's relative step).
    min_dim_size_to_factor: only factor a leaf whose factored dims are all this large.
    decay_rate: exponent of the second-moment decay schedule ``1 - t**-decay_rate`` (>= 0; 0
      keeps only the latest squared gradient).
    decay_offset: subtracted from the step count in that schedule (fine-tuning).
    multiply_by_parameter_scale: scale the step by ``max(RMS(p), 1e-3)``; a bool, or (as t5x's
      ``HParamMap``) a mapping or sequence of pairs from key-path regular expressions (matched
      with ``re.search`` against the '/'-joined key path; the first match wins) to bools. A leaf
      matching no pattern is an error, as in t5x: end with a catch-all ``'.*'``.
    clipping_threshold: update clipping threshold (> 0), or None for no clipping.
    momentum: EMA coefficient of the (lr- and scale-multiplied) updates in [0, 1), or None.
    dtype_momentum: dtype of the momentum buffer.
    weight_decay_rate: decoupled weight decay (not multiplied by the learning rate), or None.
    eps: added to the squared gradients (>= 0).
    factored: whether to factor the second moments at all.
    weight_decay_mask: pytree of bools or callable ``params -> bools`` (e.g. `mask_by_path`).
    factor_rule: which dims are factored: ``"largest"`` (optax), ``"last"`` (Keras, PyTorch),
      or explicit per key-path rules with row/col/batch dims (t5x); batch dims also get their
      own clipping and parameter-scale RMS.
    stats_dtype: dtype of the second-moment statistics (float32); None keeps the param dtype.
    max_parameter_scale: optional cap on the parameter scale (t5x), > 0.
    global_norm_clip_threshold: optional: clip the gradients to this global norm before the
      statistics (t5x), > 0.
    weight_decay_rate_lr_exponent: optional (t5x): the weight decay becomes
      ``(weight_decay_rate or 1) * learning_rate(t) ** exponent``; needs a learning rate. As in
      t5x, 0 or None switches it off (a ``weight_decay_rate`` of 0 stays 0 here, where t5x's
      ``or`` turns it into 1).

  Returns:
    An `optax.GradientTransformationExtraArgs`: a `chain` of the building blocks.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import adafactor_jax
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> params = jnp.array([1.0, 2.0, 3.0])
    >>> solver = adafactor_jax.adafactor(learning_rate=0.003)
    >>> opt_state = solver.init(params)
    >>> for _ in range(5):
    ...   updates, opt_state = solver.update(jax.grad(f)(params), opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"{f(params):.5f}")
    13.92236
    13.84529
    13.76878
    13.69283
    13.61743

  References:
    Shazeer & Stern, `Adafactor: Adaptive Learning Rates with Sublinear Memory Cost
    <https://arxiv.org/abs/1804.04235>`_, 2018.

  Notes:
    Equal to ``optax.adafactor`` for float32 params with the same arguments, to float rounding
    (the means of squares add ``eps`` after the mean, unfactored leaves use ``rsqrt``: the fast
    path, see `chain`). Differences: the state holds only what each leaf needs (no ``(1,)``
    placeholders); statistics are float32 whatever the param dtype (``stats_dtype=None`` for
    optax's behaviour); ``decay_offset`` larger than the step count gives finite updates;
    ``factor_rule``. As in optax (and unlike the
    paper) ``learning_rate=None`` means no relative step size (pass
    ``relative_step_size(1e-2)`` for the paper's), momentum averages lr-scaled steps, and weight
    decay is not multiplied by the learning rate.

    t5x's Adafactor is this function with ``factor_rule`` (its ``factor_map``; here rules also
    apply to leaves of rank <= 2, which t5x ignores unless they have batch dims), a per-path
    ``multiply_by_parameter_scale``, ``max_parameter_scale``, ``global_norm_clip_threshold`` and
    ``weight_decay_rate_lr_exponent``; its ``epsilon1``/``step_offset`` are ``eps``/
    ``decay_offset``. Rank > 2 leaves without a rule are factored over their two largest dims
    here, where t5x raises. Skipping non-finite steps is not part of this function.
  """
  validation.check("min_dim_size_to_factor", min_dim_size_to_factor)
  if learning_rate is not None:
    validation.check("learning_rate", learning_rate)
  validation.check("decay_rate", decay_rate)
  validation.check("decay_offset", decay_offset)
  if clipping_threshold is not None:
    validation.check("clipping_threshold", clipping_threshold)
  if momentum is not None:
    validation.check("momentum", momentum)
  if weight_decay_rate is not None:
    validation.check("weight_decay_rate", weight_decay_rate)
  validation.check("eps", eps)
  validation.check("factored", factored)
  validation.check("dtype_momentum", dtype_momentum)
  validation.check("weight_decay_mask", weight_decay_mask)
  if max_parameter_scale is not None:
    validation.check("max_parameter_scale", max_parameter_scale)
  if global_norm_clip_threshold is not None:
    validation.check("global_norm_clip_threshold", global_norm_clip_threshold)
  if weight_decay_rate_lr_exponent is not None:
    validation.check("weight_decay_rate_lr_exponent", weight_decay_rate_lr_exponent)
  if isinstance(multiply_by_parameter_scale, (bool, np.bool_)):
    scale_mask = None
  else:
    scale_mask = masks.mask_by_first_match(multiply_by_parameter_scale,
                                            "multiply_by_parameter_scale")
  if weight_decay_rate_lr_exponent is not None:
    # Whatever its value, a given exponent puts the decay block in (a concrete 0, t5x's off, adds
    # only the rate, if any): the state's structure is the same when optax.inject_hyperparams
    # injects the exponent as an array, whose value is not known when the step is traced.
    if learning_rate is None and _is_on(weight_decay_rate_lr_exponent):
      raise ValueError("weight_decay_rate_lr_exponent needs a learning_rate (the decay is "
                       "(weight_decay_rate or 1) * learning_rate ** exponent), got None.")
    weight_decay_rate = _lr_coupled_decay(weight_decay_rate, learning_rate,
                                          weight_decay_rate_lr_exponent)
  rules = factoring.as_rules(factor_rule, factored=factored,
                             min_dim_size_to_factor=min_dim_size_to_factor)
  block_rule = rules if rules.patterns else None
  tx: list[Any] = []
  if global_norm_clip_threshold is not None:
    tx.append(clipping.clip_by_global_norm(global_norm_clip_threshold))
  tx.append(scale_by_factored_rms(
      factored, decay_rate, decay_offset, min_dim_size_to_factor, eps,
      factor_rule=rules, stats_dtype=stats_dtype))
  if clipping_threshold is not None:
    tx.append(clipping.clip_by_block_rms(clipping_threshold, factor_rule=block_rule))
  if learning_rate is not None:
    tx.append(scaling.scale_by_learning_rate(learning_rate, flip_sign=False))
  if scale_mask is not None or multiply_by_parameter_scale:
    tx.append(scaling.scale_by_param_block_rms(max_scale=max_parameter_scale,
                                              factor_rule=block_rule, mask=scale_mask))
  if momentum is not None:
    tx.append(scaling.scale_by_momentum(momentum, accumulator_dtype=dtype_momentum))
  if weight_decay_rate is not None:
    tx.append(decay_lib.add_decayed_weights(weight_decay_rate, weight_decay_mask))
  tx.append(scaling.scale_by_learning_rate(1.0))  # descent: flip the sign
  return engine.chain(*tx)


def _is_on(x: Any) -> bool:
  """t5x's truthiness of an optional hyperparameter (None and 0 are off; tracers are on)."""
  if x is None:
    return False
  if isinstance(x, jax.core.Tracer):
    return True
  return float(x) != 0.0


def _lr_coupled_decay(rate: Optional[optax.ScalarOrSchedule], lr: optax.ScalarOrSchedule,
                      exponent: ArrayLike) -> optax.ScalarOrSchedule:
  """t5x's ``(rate or 1) * lr ** exponent``, a schedule when either is one. An exponent of 0 is
  off (t5x): the decay is then the rate, or 0; for a traced exponent (injected by
  optax.inject_hyperparams) that is decided in the step, not ``lr ** 0 = 1``."""
  if not _is_on(exponent):
    return 0.0 if rate is None else rate

  def decay(r, eta):
    coupled = (1.0 if rate is None else r) * jnp.asarray(eta, jnp.float32) ** exponent
    if not isinstance(exponent, jax.core.Tracer):
      return coupled
    return jnp.where(exponent == 0, 0.0 if rate is None else r, coupled)

  if not callable(rate) and not callable(lr):
    return decay(rate, lr)
  at = lambda x, count: x(count) if callable(x) else x
  return lambda count: decay(at(rate, count), at(lr, count))


@preset
def adadelta(
    learning_rate: Optional[optax.ScalarOrSchedule] = None,
    rho: ArrayLike = 0.9,
    eps: ArrayLike = 1e-6,
    weight_decay: ArrayLike = 0.0,
    weight_decay_mask: masks.MaskOrFn = None,
    *,
    stats_dtype: Optional[DTypeLike] = jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""The Adadelta optimizer, with optax's signature and defaults.

  .. math::

     g &\leftarrow g + \lambda p \quad\text{(coupled L2, as optax)} \\
     \Delta_t &= \sqrt{E[\Delta^2]_{t-1}+\epsilon}/\sqrt{E[g^2]_t+\epsilon}\; g_t, \qquad
     p_t = p_{t-1} - \eta_t \Delta_t

  Args:
    learning_rate: a float or schedule; ``None`` means a unit step (descending).
    rho: decay of the averages, in [0, 1].
    eps: added inside the square roots (>= 0).
    weight_decay: L2 coefficient added to the gradient before preconditioning (>= 0, or a
      schedule).
    weight_decay_mask: pytree of bools or callable ``params -> bools``.
    stats_dtype: dtype of the averages (float32); None keeps the param dtype.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import adafactor_jax
    >>> f = lambda x: jnp.sum(x ** 2)
    >>> params = jnp.array([1.0, 2.0, 3.0])
    >>> solver = adafactor_jax.adadelta(learning_rate=10.0)
    >>> opt_state = solver.init(params)
    >>> for _ in range(5):
    ...   updates, opt_state = solver.update(jax.grad(f)(params), opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"{f(params):.5f}")
    13.62353
    13.24635
    12.87284
    12.50508
    12.14423

  References:
    Zeiler, `ADADELTA: An Adaptive Learning Rate Method <https://arxiv.org/abs/1212.5701>`_, 2012.

  Notes:
    ``optax.adadelta(learning_rate=None)`` never flips the sign and so *ascends* (on
    ``sum(x**2)`` from [1, 2, 3] it goes from 14.0 up to 16.44 in 50 steps); here None is a unit
    learning rate and descends. Equal to optax for every non-None learning rate.
  """
  if learning_rate is not None:
    validation.check("learning_rate", learning_rate)
  validation.check("weight_decay", weight_decay)
  validation.check("weight_decay_mask", weight_decay_mask)
  # Always a decay block, as optax (a concrete 0 adds nothing): the state's structure does not
  # depend on the rate's value, which optax.inject_hyperparams injects as an array.
  return engine.chain(
      decay_lib.add_decayed_weights(weight_decay, weight_decay_mask),
      scale_by_adadelta(rho, eps, stats_dtype=stats_dtype),
      scaling.scale_by_learning_rate(1.0 if learning_rate is None else learning_rate))
