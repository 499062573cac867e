"""`keras_adafactor` and `keras_adadelta`: Keras 3's optimizers, argument for argument.

Each preset translates ``keras.optimizers.Adafactor`` / ``Adadelta`` arguments into this package's
blocks, wrapped in the Keras base-optimizer features (`loss_scaling`, `accumulation`,
`clipping`, `weight_decay`, `ema`) in Keras's order:

.. code-block:: text

   static_loss_scale -> accumulate_gradients( clip -> with_decoupled_weight_decay( core ) )
     -> ema_params

Keras itself is not needed at runtime.
"""

from __future__ import annotations

from typing import Any
from typing import Optional
from typing import Sequence
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from adafactor_jax._src import accumulation
from adafactor_jax._src import clipping
from adafactor_jax._src import ema
from adafactor_jax._src import engine
from adafactor_jax._src import loss_scaling
from adafactor_jax._src import masks
from adafactor_jax._src import scaling
from adafactor_jax._src import validation
from adafactor_jax._src import weight_decay as decay_lib
from adafactor_jax._src.adadelta import scale_by_adadelta
from adafactor_jax._src.config import preset
from adafactor_jax._src.factored import scale_by_factored_rms

ExcludeFromWeightDecay = Union[None, str, Sequence[str], Any]


def _per_update(learning_rate: optax.ScalarOrSchedule,
                gradient_accumulation_steps: Optional[int]) -> optax.ScalarOrSchedule:
  """The schedule as seen by blocks that count applied updates (Keras: the schedule sees calls)."""
  k = gradient_accumulation_steps
  if not callable(learning_rate) or k is None:
    return learning_rate
  return lambda j: learning_rate(k * j + (k - 1))


def _weight_decay_mask(exclude: ExcludeFromWeightDecay) -> masks.MaskOrFn:
  if exclude is None:
    return None
  if isinstance(exclude, str):
    exclude = [exclude]
  leaves = jax.tree.leaves(exclude)
  if isinstance(exclude, (list, tuple)) and all(isinstance(x, str) for x in leaves):
    return masks.mask_by_path(exclude=list(exclude))
  if leaves and all(isinstance(x, (bool, np.bool_)) for x in leaves):
    return jax.tree.map(lambda x: not bool(x), exclude)
  raise ValueError(
      "exclude_from_weight_decay must be a list of regular expressions (matched against each "
      "leaf's key path joined with '/') or a pytree of bools with the params' structure (True: "
      f"excluded), got {exclude!r}.")


def _check_base_args(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
                     ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                     gradient_accumulation_steps, exclude_from_weight_decay,
                     name) -> tuple[Optional[int], Optional[int]]:
  """Keras's base-optimizer argument checks, with ranges in every message. Returns
  ``ema_overwrite_frequency`` and ``gradient_accumulation_steps`` as ints (or None)."""
  if name is not None and not isinstance(name, str):
    raise ValueError(f"name must be a string or None, got {name!r}.")
  validation.check("learning_rate", learning_rate)
  if weight_decay is not None:
    validation.check("weight_decay", weight_decay)
  clips = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
  given = [k for k, v in clips.items() if v is not None]
  if len(given) > 1:
    raise ValueError(
        f"Only one of clipnorm, clipvalue and global_clipnorm can be set; got {given} "
        f"(clipnorm={clipnorm!r}, clipvalue={clipvalue!r}, global_clipnorm={global_clipnorm!r}).")
  for k in given:
    validation.check(k, clips[k])
  validation.check("use_ema", use_ema)
  validation.check("ema_momentum", ema_momentum)
  if ema_overwrite_frequency is not None:
    ema_overwrite_frequency = validation.check("ema_overwrite_frequency", ema_overwrite_frequency)
  if loss_scale_factor is not None:
    validation.check("loss_scale_factor", loss_scale_factor)
  if gradient_accumulation_steps is not None:
    gradient_accumulation_steps = validation.check("gradient_accumulation_steps",
                                                   gradient_accumulation_steps)
  _weight_decay_mask(exclude_from_weight_decay)  # raises on a malformed argument
  return ema_overwrite_frequency, gradient_accumulation_steps


def _keras_base(core, *, learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                gradient_accumulation_steps, exclude_from_weight_decay, stats_dtype):
  """Wraps an optimizer core (which ends in the sign flip) in Keras's base-optimizer features."""
  k = gradient_accumulation_steps
  stats_dtype = validation.as_dtype(stats_dtype)  # (checked by the preset)
  inner: list[Any] = []
  if clipnorm is not None:
    inner.append(clipping.clip_by_leaf_norm(clipnorm))
  elif global_clipnorm is not None:
    inner.append(clipping.clip_by_global_norm_nan_on_nonfinite(global_clipnorm))
  elif clipvalue is not None:
    inner.append(clipping.clip_by_value(clipvalue))
  if weight_decay is not None:
    core = decay_lib.with_decoupled_weight_decay(core, weight_decay, _per_update(learning_rate, k),
                                          mask=_weight_decay_mask(exclude_from_weight_decay))
  inner.append(core)
  inner_tx = inner[0] if len(inner) == 1 else engine.chain(*inner)
  tx: list[Any] = []
  if loss_scale_factor is not None:
    tx.append(loss_scaling.static_loss_scale(loss_scale_factor))
  tx.append(accumulation.accumulate_gradients(inner_tx, k, accumulator_dtype=stats_dtype)
            if k is not None else inner_tx)
  if use_ema:
    tx.append(ema.ema_params(ema_momentum, ema_overwrite_frequency,
                            gradient_accumulation_steps=k, dtype=stats_dtype))
  return engine.chain(*tx)


@preset
def keras_adafactor(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    beta_2_decay: validation.Scalar = -0.8,
    epsilon_1: ArrayLike = 1e-30,
    epsilon_2: ArrayLike = 0.001,
    clip_threshold: ArrayLike = 1.0,
    relative_step: bool = True,
    weight_decay: Optional[ArrayLike] = None,
    clipnorm: Optional[ArrayLike] = None,
    clipvalue: Optional[ArrayLike] = None,
    global_clipnorm: Optional[ArrayLike] = None,
    use_ema: bool = False,
    ema_momentum: ArrayLike = 0.99,
    ema_overwrite_frequency: Optional[int] = None,
    loss_scale_factor: Optional[ArrayLike] = None,
    gradient_accumulation_steps: Optional[int] = None,
    name: Optional[str] = None,
    *,
    exclude_from_weight_decay: ExcludeFromWeightDecay = None,
    stats_dtype: Optional[DTypeLike] = jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""Keras 3's ``keras.optimizers.Adafactor``, step for step, with factored memory.

  With :math:`t` the 1-based number of applied updates, :math:`\eta_n` the learning rate at call
  :math:`n`, :math:`G` the (unscaled, accumulated, clipped) gradient and :math:`X` the variable:

  .. math::

     X &\leftarrow X - X\,\lambda\,\eta_n \quad\text{(if weight\_decay)} \\
     \rho_t &= \min(\eta_n, 1/\sqrt t), \qquad \alpha_t = \max(\epsilon_2, \mathrm{RMS}(X))\,
       \rho_t \\
     \hat\beta_{2,t} &= 1 - t^{\text{beta\_2\_decay}} \\
     R_t &= \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{-1}(G^2 + \epsilon_1),
       \quad C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{-2}(G^2+\epsilon_1)
       \\
     U_t &= G / \sqrt{R_t C_t / \mathrm{mean}_{-1}(R_t)}, \qquad
       \hat U_t = U_t / \max(1, \mathrm{RMS}(U_t)/d) \\
     X &\leftarrow X - \alpha_t \hat U_t

  for leaves of rank >= 2 (the last two dims are factored, whatever their size; leading dims are
  batch dims of the statistics), and :math:`V_t = \hat\beta_{2,t} V_{t-1} + (1-\hat\beta_{2,t})
  (G^2+\epsilon_1)`, :math:`U_t = G/\sqrt{V_t}` for rank 0 and 1. Then the EMA of the weights,
  if ``use_ema``.

  Args:
    learning_rate: a float >= 0, or a schedule called with the 0-based call count (Keras's
      ``optimizer.iterations`` before the update, counting every call even with gradient
      accumulation), e.g. ``lambda n: 0.5 * 0.9 ** (n / 10)`` for Keras's
      ``ExponentialDecay(0.5, 10, 0.9)``.
    beta_2_decay: exponent of the second-moment decay ``1 - t**beta_2_decay`` (<= 0).
    epsilon_1: added to the squared gradient (>= 0).
    epsilon_2: floor of the parameter scale (>= 0).
    clip_threshold: update-clipping threshold :math:`d` (> 0).
    relative_step: accepted and recorded for Keras compatibility; it has no effect (as in Keras).
    weight_decay: if set (>= 0, or a schedule), decoupled weight decay ``var <- var - var*wd*lr``
      before each update, with the base learning rate (see `with_decoupled_weight_decay`).
    clipnorm: clip each leaf's gradient to this L2 norm (`clip_by_leaf_norm`).
    clipvalue: clip each gradient element to ``[-clipvalue, clipvalue]`` (`clip_by_value`).
    global_clipnorm: clip all gradients to this global L2 norm (`clip_by_global_norm`). At most
      one of the three clipping arguments may be set.
    use_ema: keep an EMA of the weights (`ema_params`); read it with `finalize_variable_values`.
    ema_momentum: the EMA coefficient, in [0, 1].
    ema_overwrite_frequency: an integer >= 1: every that many updates the weights are replaced by
      their EMA; None never.
    loss_scale_factor: a static loss scale (> 0): multiply the loss with `scale_loss`, the
      optimizer divides the gradients (`static_loss_scale`).
    gradient_accumulation_steps: an integer >= 2: update once every that many calls, with the
      mean gradient (`accumulate_gradients`).
    name: accepted for Keras compatibility (Keras names the optimizer's variables with it); it
      has no effect. A string or None.
    exclude_from_weight_decay: a list of regular expressions, matched with ``re.search`` against
      each leaf's key path joined with '/' (Keras matches ``variable.name``), or a pytree of bools
      with the params' structure (True: excluded).
    stats_dtype: dtype of every optimizer statistic, accumulator and EMA (float32 whatever the
      param dtype); None stores them in the param dtype, as Keras does (the scalars such as the
      decay rate and the step size stay float32, so half-precision runs are close to Keras's
      but not bit-identical).

  Returns:
    An `optax.GradientTransformationExtraArgs`; ``update`` needs ``params``.

  Examples:
    Keras's ``adafactor_test.test_single_step_1d``:

    >>> import jax, jax.numpy as jnp, optax
    >>> import adafactor_jax
    >>> tx = adafactor_jax.keras_adafactor(learning_rate=0.5)
    >>> x = jnp.array([1.0, 2.0, 3.0, 4.0])
    >>> updates, state = tx.update(jnp.array([1.0, 6.0, 7.0, 2.0]), tx.init(x), x)
    >>> print(optax.apply_updates(x, updates))
    [-0.36930645  0.63069355  1.6306936   2.6306934 ]

    A (4096, 4096) kernel keeps only its row and column statistics:

    >>> state = tx.init({"w": jnp.zeros((4096, 4096))})
    >>> sum(x.size for x in jax.tree.leaves(state)) < 8200  # Keras: 16.8 M floats
    True

  References:
    Shazeer & Stern, `Adafactor: Adaptive Learning Rates with Sublinear Memory Cost
    <https://arxiv.org/abs/1804.04235>`_, 2018. Keras ``keras/src/optimizers/adafactor.py`` and
    ``base_optimizer.py`` (Keras 3.15).

  Notes:
    Keras quirks reproduced on purpose, so that a run moves over step for step:

    * ``relative_step`` has no effect: Keras always uses :math:`\rho_t = \min(\eta, 1/\sqrt t)`.
    * The learning rate is therefore capped at :math:`1/\sqrt t`, schedules included (the default
      ``1e-3`` is not the paper's ``1e-2``).
    * Weight decay uses the base learning rate :math:`\eta_n` (not :math:`\alpha_t`) and runs
      before the step, so :math:`\mathrm{RMS}(X)` is taken on the decayed weights.
    * The last two dims are factored for every leaf of rank >= 2, without a size threshold.
    * With gradient accumulation, :math:`t` counts applied updates but a schedule sees every call
      (update :math:`j` uses :math:`\eta_{kj+k-1}`), and the EMA is updated on every call.

    Better than Keras: a factored leaf stores only :math:`R` and :math:`C` (Keras also keeps a
    full-size ``velocity``: ``n*m + n + m`` floats); statistics are float32 for bf16/f16 params
    (Keras computes :math:`\hat\beta_2` and the step in the variable dtype, which freezes the
    statistics in bf16 and gives NaN in f16; ``stats_dtype=None`` keeps the param dtype); the
    argument errors below are raised at construction.

  Raises:
    ValueError: more than one of clipnorm/clipvalue/global_clipnorm;
      gradient_accumulation_steps not an integer >= 2; ema_momentum outside [0, 1];
      ema_overwrite_frequency not an integer >= 1; a negative or non-finite learning rate, weight
      decay or epsilon; beta_2_decay > 0; clip thresholds or loss_scale_factor <= 0.
  """
  ema_overwrite_frequency, gradient_accumulation_steps = _check_base_args(
      learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
      ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps,
      exclude_from_weight_decay, name)
  validation.check("beta_2_decay", beta_2_decay)
  validation.check("epsilon_1", epsilon_1)
  validation.check("epsilon_2", epsilon_2)
  validation.check("clip_threshold", clip_threshold)
  validation.check("relative_step", relative_step)
  del relative_step  # Keras ignores it too (always min(lr, 1/sqrt(t))).
  lr = _per_update(learning_rate, gradient_accumulation_steps)
  stats_dtype = validation.check("stats_dtype", stats_dtype)
  core = engine.chain(
      scale_by_factored_rms(factored=True, decay_rate=-beta_2_decay, min_dim_size_to_factor=0,
                            epsilon=epsilon_1, factor_rule="last", stats_dtype=stats_dtype),
      clipping.clip_by_block_rms(clip_threshold),
      scaling.scale_by_learning_rate(scaling.relative_step_size(lr), flip_sign=False),
      scaling.scale_by_param_block_rms(epsilon_2),
      scaling.scale_by_learning_rate(1.0),  # descent: flip the sign
  )
  return _keras_base(
      core, learning_rate=learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
      clipvalue=clipvalue, global_clipnorm=global_clipnorm, use_ema=use_ema,
      ema_momentum=ema_momentum, ema_overwrite_frequency=ema_overwrite_frequency,
      loss_scale_factor=loss_scale_factor, gradient_accumulation_steps=gradient_accumulation_steps,
      exclude_from_weight_decay=exclude_from_weight_decay, stats_dtype=stats_dtype)


@preset
def keras_adadelta(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    rho: ArrayLike = 0.95,
    epsilon: ArrayLike = 1e-07,
    weight_decay: Optional[ArrayLike] = None,
    clipnorm: Optional[ArrayLike] = None,
    clipvalue: Optional[ArrayLike] = None,
    global_clipnorm: Optional[ArrayLike] = None,
    use_ema: bool = False,
    ema_momentum: ArrayLike = 0.99,
    ema_overwrite_frequency: Optional[int] = None,
    loss_scale_factor: Optional[ArrayLike] = None,
    gradient_accumulation_steps: Optional[int] = None,
    name: Optional[str] = None,
    *,
    exclude_from_weight_decay: ExcludeFromWeightDecay = None,
    stats_dtype: Optional[DTypeLike] = jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""Keras 3's ``keras.optimizers.Adadelta``, step for step.

  .. math::

     X &\leftarrow X - X\,\lambda\,\eta_n \quad\text{(if weight\_decay)} \\
     E[g^2] &\leftarrow \rho E[g^2] + (1-\rho) g^2 \\
     \Delta &= \sqrt{E[\Delta^2] + \epsilon}\,/\,\sqrt{E[g^2] + \epsilon}\; g \\
     E[\Delta^2] &\leftarrow \rho E[\Delta^2] + (1-\rho) \Delta^2 \\
     X &\leftarrow X - \eta_n \Delta

  Args:
    learning_rate: a float >= 0, or a schedule called with the 0-based call count (as Keras).
      Keras's default 1e-3 makes the first steps tiny (about ``1.4e-6``); use 1.0 for the paper.
    rho: decay of both averages, in [0, 1].
    epsilon: added inside both square roots (>= 0).
    weight_decay: if set (>= 0, or a schedule), decoupled weight decay ``var <- var - var*wd*lr``
      before each update, with the base learning rate (see `with_decoupled_weight_decay`).
    clipnorm: clip each leaf's gradient to this L2 norm (`clip_by_leaf_norm`).
    clipvalue: clip each gradient element to ``[-clipvalue, clipvalue]`` (`clip_by_value`).
    global_clipnorm: clip all gradients to this global L2 norm (`clip_by_global_norm`). At most
      one of the three clipping arguments may be set.
    use_ema: keep an EMA of the weights (`ema_params`); read it with `finalize_variable_values`.
    ema_momentum: the EMA coefficient, in [0, 1].
    ema_overwrite_frequency: an integer >= 1: every that many updates the weights are replaced by
      their EMA; None never.
    loss_scale_factor: a static loss scale (> 0): multiply the loss with `scale_loss`, the
      optimizer divides the gradients (`static_loss_scale`).
    gradient_accumulation_steps: an integer >= 2: update once every that many calls, with the
      mean gradient (`accumulate_gradients`).
    name: accepted for Keras compatibility (Keras names the optimizer's variables with it); it
      has no effect. A string or None.
    exclude_from_weight_decay: a list of regular expressions, matched with ``re.search`` against
      each leaf's key path joined with '/' (Keras matches ``variable.name``), or a pytree of bools
      with the params' structure (True: excluded).
    stats_dtype: dtype of every optimizer statistic, accumulator and EMA (float32 whatever the
      param dtype); None stores them in the param dtype, as Keras does (the scalars such as the
      decay rate and the step size stay float32, so half-precision runs are close to Keras's
      but not bit-identical).

  Returns:
    An `optax.GradientTransformationExtraArgs`; ``update`` needs ``params`` when weight decay or
    the EMA is on.

  Examples:
    Keras's ``adadelta_test.test_single_step``:

    >>> import jax.numpy as jnp, optax
    >>> import adafactor_jax
    >>> tx = adafactor_jax.keras_adadelta(learning_rate=0.5)
    >>> x = jnp.array([1.0, 2.0, 3.0, 4.0])
    >>> updates, state = tx.update(jnp.array([1.0, 6.0, 7.0, 2.0]), tx.init(x), x)
    >>> print(optax.apply_updates(x, updates))
    [0.9992929 1.9992929 2.9992929 3.9992929]

  References:
    Zeiler, `ADADELTA: An Adaptive Learning Rate Method <https://arxiv.org/abs/1212.5701>`_, 2012.
    Keras ``keras/src/optimizers/adadelta.py`` (Keras 3.15).

  Notes:
    Differs from `adadelta` (optax's defaults and coupled L2 decay): Keras's defaults
    (``rho=0.95``, ``epsilon=1e-7``, ``learning_rate=1e-3``) and Keras's decoupled weight decay,
    which uses the base learning rate and runs before the step. Statistics are float32 for
    bf16/f16 params (``stats_dtype=None``: the param dtype, as Keras).

  Raises:
    ValueError: as `keras_adafactor` for the shared arguments; rho outside [0, 1]; epsilon < 0.
  """
  ema_overwrite_frequency, gradient_accumulation_steps = _check_base_args(
      learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
      ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps,
      exclude_from_weight_decay, name)
  validation.check("rho", rho)
  validation.check("epsilon", epsilon)
  lr = _per_update(learning_rate, gradient_accumulation_steps)
  stats_dtype = validation.check("stats_dtype", stats_dtype)
  core = engine.chain(scale_by_adadelta(rho, epsilon, stats_dtype=stats_dtype),
                     scaling.scale_by_learning_rate(lr))
  return _keras_base(
      core, learning_rate=learning_rate, weight_decay=weight_decay, clipnorm=clipnorm,
      clipvalue=clipvalue, global_clipnorm=global_clipnorm, use_ema=use_ema,
      ema_momentum=ema_momentum, ema_overwrite_frequency=ema_overwrite_frequency,
      loss_scale_factor=loss_scale_factor, gradient_accumulation_steps=gradient_accumulation_steps,
      exclude_from_weight_decay=exclude_from_weight_decay, stats_dtype=stats_dtype)
