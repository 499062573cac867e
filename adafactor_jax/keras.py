"""Keras 3 optimizers: `Adafactor` and `Adadelta` for ``model.compile`` and ``model.fit``.

``keras.optimizers.Optimizer`` subclasses that take exactly ``keras.optimizers.Adafactor``'s and
``keras.optimizers.Adadelta``'s arguments, in Keras's order, with Keras's defaults, and give
Keras's numbers for float32 variables, on every Keras backend (JAX, PyTorch, TensorFlow). R's
keras3 passes the optimizer object to Python unchanged, so R users can use them too:
``model$compile(optimizer = afx$keras$Adafactor(learning_rate = 1e-3))``.

What differs from Keras's classes:

* `Adafactor` keeps, for a variable of rank >= 2, its row and column statistics only (Keras also
  allocates a full-size ``velocity`` per variable: for one (4096, 4096) float32 kernel, 67 MB of
  state where these need 32 KB); a variable of rank < 2 keeps its full second moment.
* Statistics are float32 whatever the variable dtype (``stats_dtype=None`` keeps the variable's
  dtype, as Keras does).
* On the JAX backend the step over all variables is this library's fused step (one call, no
  temporaries of the parameters' size); on PyTorch and TensorFlow it is a per-variable
  ``update_step`` written with ``keras.ops``.
* Every argument is checked at construction (the same rule and message as the presets'); where
  Keras takes an int, an integral float is accepted (R passes ``4`` as the double ``4.0``).
* Optimizer variables saved by ``keras.optimizers.Adafactor`` load into `Adafactor` (its row and
  column statistics are ours; its ``velocity`` is dropped); any other mismatch raises a
  ``ValueError`` instead of Keras's warning-and-skip.
* ``fit`` can be called twice with ``use_ema=True`` on the JAX backend (Keras's ``finalize``
  makes a weight and its average share one buffer, which the next ``fit`` donates twice).

Importing this module imports Keras; importing ``adafactor_jax`` does not.
"""

from __future__ import annotations

from typing import Any
from typing import Optional

import keras
import numpy as np
from keras import ops

from adafactor_jax._src import validation
from adafactor_jax._src.presets import keras as _presets

__all__ = ["Adadelta", "Adafactor"]

_PACKAGE = "adafactor_jax"


def _check_base(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
                ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                gradient_accumulation_steps, name, stats_dtype):
  """The presets' checks of Keras's base arguments; returns the ints as ints and the dtype."""
  freq, steps = _presets._check_base_args(
      learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
      ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, None, name)
  dtype = validation.check("stats_dtype", stats_dtype)
  return freq, steps, (None if dtype is None else dtype.name)


def _layout_keeping(variable, dims) -> Any:
  """The layout of an optimizer variable that keeps `dims` of `variable`: the variable's mesh
  axes on those dims (under a `keras.distribution`), or None (no distribution)."""
  layout = getattr(variable, "_layout", None)
  if layout is None:
    try:
      distribution = keras.distribution.distribution()
    except (AttributeError, NotImplementedError):  # a backend without the distribution API
      distribution = None
    if distribution is None:
      return None
    layout = distribution.get_variable_layout(variable)
  if not isinstance(layout, keras.distribution.TensorLayout):
    return None
  return keras.distribution.TensorLayout([layout.axes[d] for d in dims], layout.device_mesh)


class _Optimizer(keras.optimizers.Optimizer):
  """What both classes share: the statistics dtype, strict loading, a copying finalize."""

  _stats_dtype: Optional[str]

  def __init__(self, learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
               ema_momentum, ema_overwrite_frequency, loss_scale_factor,
               gradient_accumulation_steps, name, stats_dtype, **kwargs):
    """Checks Keras's base arguments by the presets' rules, then builds Keras's base."""
    ema_overwrite_frequency, gradient_accumulation_steps, stats_dtype = _check_base(
        learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
        ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name,
        stats_dtype)
    super().__init__(
        learning_rate=learning_rate, name=name, weight_decay=weight_decay, clipnorm=clipnorm,
        clipvalue=clipvalue, global_clipnorm=global_clipnorm, use_ema=use_ema,
        ema_momentum=ema_momentum, ema_overwrite_frequency=ema_overwrite_frequency,
        loss_scale_factor=loss_scale_factor,
        gradient_accumulation_steps=gradient_accumulation_steps, **kwargs)
    self._stats_dtype = stats_dtype

  def _dtype_for(self, variable) -> str:
    """The statistics' dtype, in which the step is computed (Keras: the variable's)."""
    return self._stats_dtype or keras.backend.standardize_dtype(variable.dtype)

  def finalize_variable_values(self, var_list):
    # Keras assigns each average itself: on JAX the weight and its average then share one
    # buffer, and the next `fit` donates it twice. Assign a copy.
    if self.use_ema:
      for var, average in zip(var_list, self._model_variables_moving_average):
        if average is not None:
          var.assign(ops.copy(average))

  def _saved_layout(self, count: int) -> Optional[list[Optional[int]]]:
    """For `count` saved variables other than ours: the index in the file of each of our
    variables (None: not in the file), or None when the file's layout is not known."""
    return None

  def load_own_variables(self, store):
    if len(store.keys()) == len(self.variables):
      sources: list[Optional[int]] = list(range(len(self.variables)))
    else:
      found = self._saved_layout(len(store.keys())) if self.variables else None
      if found is None:
        raise ValueError(
            f"{type(self).__name__} '{self.name}' has {len(self.variables)} variables, but the "
            f"saved optimizer has {len(store.keys())}"
            + (" (this optimizer is not built yet: call optimizer.build(model.trainable_variables)"
               " first)" if not self.variables else
               ": it was saved by another optimizer or for other variables") + ".")
      sources = found
    for variable, i in zip(self.variables, sources):
      if i is None:
        continue
      value = np.asarray(store[str(i)])
      if tuple(value.shape) != tuple(variable.shape):
        raise ValueError(
            f"{type(self).__name__} '{self.name}': the saved variable {i} has shape "
            f"{tuple(value.shape)}, but {variable.path} has shape {tuple(variable.shape)}.")
      variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Adafactor(_Optimizer):
  """Keras 3's ``keras.optimizers.Adafactor``, with factored memory and float32 statistics.

  The same arguments, order and defaults as ``keras.optimizers.Adafactor`` (Keras 3.15), and its
  numbers for float32 variables: at step :math:`t` (``iterations + 1``), with the learning rate
  :math:`\\eta` (a float or a schedule), the last two dims of a variable :math:`X` of rank >= 2
  factored,

  .. math::

     \\rho_t &= \\min(\\eta, 1/\\sqrt t), \\quad \\alpha_t = \\max(\\epsilon_2,
       \\mathrm{RMS}(X))\\,\\rho_t, \\quad \\hat\\beta_{2,t} = 1 - t^{\\text{beta\\_2\\_decay}} \\\\
     R_t &= \\hat\\beta_{2,t} R_{t-1} + (1-\\hat\\beta_{2,t})\\,\\mathrm{mean}_{-1}(G^2+\\epsilon_1),
       \\quad C_t = \\hat\\beta_{2,t} C_{t-1} + (1-\\hat\\beta_{2,t})\\,\\mathrm{mean}_{-2}(G^2+
       \\epsilon_1) \\\\
     U_t &= G / \\sqrt{R_t C_t / \\mathrm{mean}_{-1}(R_t)}, \\quad X \\leftarrow X - \\alpha_t\\,
       U_t / \\max(1, \\mathrm{RMS}(U_t)/d)

  (a variable of rank < 2 keeps :math:`V_t` in full). Weight decay, clipping, the EMA, gradient
  accumulation and the loss scale are Keras's base optimizer's, unchanged. As in Keras,
  ``relative_step`` has no effect: the step is always :math:`\\min(\\eta, 1/\\sqrt t)`.

  Args:
    learning_rate: a float, a ``keras.optimizers.schedules.LearningRateSchedule`` or a callable
      taking no arguments (>= 0).
    beta_2_decay: the exponent of the second-moment decay, <= 0.
    epsilon_1: added to the squared gradient (>= 0).
    epsilon_2: the floor of the parameter scale (>= 0).
    clip_threshold: the update-RMS clipping threshold :math:`d` (> 0).
    relative_step: a bool, recorded and, as in Keras, without effect.
    weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
      ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name: Keras's base
      optimizer's (``ema_overwrite_frequency`` and ``gradient_accumulation_steps`` may be
      integral floats).
    stats_dtype: keyword-only: the dtype of the statistics (``"float32"``); None keeps each
      variable's dtype, as Keras.
    **kwargs: Keras's other base-optimizer arguments.

  Examples:
    >>> import os; os.environ.setdefault("KERAS_BACKEND", "jax")
    'jax'
    >>> import keras, numpy as np
    >>> import adafactor_jax.keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer=adafactor_jax.keras.Adafactor(learning_rate=1e-2), loss="mse")
    >>> _ = model.fit(np.ones((16, 8)), np.ones((16, 4)), epochs=2, verbose=0)
    >>> [tuple(v.shape) for v in model.optimizer.variables[2:]]  # kernel: rows, cols; bias
    [(8,), (4,), (4,)]
  """

  def __init__(self, learning_rate=0.001, beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=1e-3,
               clip_threshold=1.0, relative_step=True, weight_decay=None, clipnorm=None,
               clipvalue=None, global_clipnorm=None, use_ema=False, ema_momentum=0.99,
               ema_overwrite_frequency=None, loss_scale_factor=None,
               gradient_accumulation_steps=None, name=None, *, stats_dtype="float32",
               **kwargs):
    validation.check("beta_2_decay", beta_2_decay)
    validation.check("epsilon_1", epsilon_1)
    validation.check("epsilon_2", epsilon_2)
    validation.check("clip_threshold", clip_threshold)
    validation.check("relative_step", relative_step)
    super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
                     ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                     gradient_accumulation_steps, name, stats_dtype, **kwargs)
    self.beta_2_decay = float(beta_2_decay)
    self.epsilon_1 = float(epsilon_1)
    self.epsilon_2 = float(epsilon_2)
    self.clip_threshold = float(clip_threshold)
    self.relative_step = relative_step

  def build(self, var_list):
    """Creates the row and column statistics of each variable of rank >= 2 (a full second
    moment for the others), laid out along the variable's mesh axes under a distribution."""
    if self.built:
      return
    super().build(var_list)
    self._r: list[Any] = []
    self._c: list[Any] = []
    self._v: list[Any] = []
    for var in var_list:
      if self._overwrite_variable_with_gradient(var):
        self._r.append(None), self._c.append(None), self._v.append(None)
        continue
      dtype, path, rank = self._dtype_for(var), var.path.replace("/", "_"), len(var.shape)
      if rank >= 2:
        self._r.append(self.add_variable(
            shape=tuple(var.shape[:-1]), dtype=dtype, name=f"{path}_row",
            layout=_layout_keeping(var, list(range(rank - 1)))))
        self._c.append(self.add_variable(
            shape=tuple(var.shape[:-2]) + (var.shape[-1],), dtype=dtype, name=f"{path}_col",
            layout=_layout_keeping(var, list(range(rank - 2)) + [rank - 1])))
        self._v.append(None)
      else:
        self._r.append(None), self._c.append(None)
        self._v.append(self.add_variable(shape=tuple(var.shape), dtype=dtype,
                                         name=f"{path}_velocity",
                                         layout=_layout_keeping(var, list(range(rank)))))

  def _saved_layout(self, count):
    # keras.optimizers.Adafactor's variables: the base optimizer's (iterations, the learning
    # rate, accumulators, averages), then three for each variable: r, c and the full-size
    # velocity (for a variable of rank < 2, r and c are scalar placeholders).
    ours = list(self.variables)
    base = len(ours) - sum(x is not None for x in self._r + self._c + self._v)
    sources: list[Optional[int]] = list(range(base))
    i = base
    for r, v in zip(self._r, self._v):
      if r is not None:
        sources += [i, i + 1]  # r, c; Keras's velocity is dropped
      elif v is not None:
        sources.append(i + 2)  # the velocity; the placeholders are dropped
      else:
        continue  # a variable overwritten with its gradient: nothing in either
      i += 3
    return sources if i == count else None

  def update_step(self, gradient, variable, learning_rate):
    """Keras's Adafactor step for one variable, with the velocity a temporary (PyTorch and
    TensorFlow backends; the JAX backend runs `_backend_update_step` over all variables)."""
    index = self._get_variable_index(variable)
    r, c, v = self._r[index], self._c[index], self._v[index]
    dtype = self._dtype_for(variable)
    g = ops.cast(gradient, dtype)
    x = ops.cast(variable, dtype)
    lr = ops.cast(learning_rate, dtype)
    t = ops.cast(self.iterations + 1, dtype)
    rho = ops.minimum(lr, 1 / ops.sqrt(t))
    alpha = ops.maximum(ops.cast(self.epsilon_2, dtype), _rms(x)) * rho
    g2 = ops.add(ops.square(g), self.epsilon_1)
    beta = ops.subtract(1, ops.power(t, self.beta_2_decay))
    if r is not None:
      new_r = ops.add(ops.multiply(beta, ops.cast(r, dtype)),
                      ops.multiply(ops.subtract(1, beta), ops.mean(g2, axis=-1)))
      new_c = ops.add(ops.multiply(beta, ops.cast(c, dtype)),
                      ops.multiply(ops.subtract(1, beta), ops.mean(g2, axis=-2)))
      self.assign(r, ops.cast(new_r, r.dtype))
      self.assign(c, ops.cast(new_c, c.dtype))
      v_hat = ops.multiply(
          ops.expand_dims(ops.divide(new_r, ops.mean(new_r, axis=-1, keepdims=True)), axis=-1),
          ops.expand_dims(new_c, -2))
    else:
      v_hat = ops.add(ops.multiply(beta, ops.cast(v, dtype)),
                      ops.multiply(ops.subtract(1, beta), g2))
      self.assign(v, ops.cast(v_hat, v.dtype))
    u = ops.divide(g, ops.sqrt(v_hat))
    u_hat = ops.divide(u, ops.maximum(ops.cast(1.0, dtype),
                                      ops.divide(_rms(u), self.clip_threshold)))
    self.assign_sub(variable, ops.cast(ops.multiply(alpha, u_hat), variable.dtype))

  def _backend_update_step(self, grads, trainable_variables, learning_rate):
    if keras.backend.backend() != "jax":
      return super()._backend_update_step(grads, trainable_variables, learning_rate)
    from adafactor_jax._src.keras_fused import adafactor_step
    adafactor_step(self, grads, trainable_variables, learning_rate)

  def get_config(self):
    config = super().get_config()
    config.update({"beta_2_decay": self.beta_2_decay, "epsilon_1": self.epsilon_1,
                   "epsilon_2": self.epsilon_2, "clip_threshold": self.clip_threshold,
                   "relative_step": self.relative_step, "stats_dtype": self._stats_dtype})
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Adadelta(_Optimizer):
  """Keras 3's ``keras.optimizers.Adadelta``, with float32 averages.

  The same arguments, order and defaults as ``keras.optimizers.Adadelta`` (Keras 3.15), and its
  numbers for float32 variables:

  .. math::

     A_t &= \\rho A_{t-1} + (1-\\rho) G^2, \\quad
     \\Delta_t = -\\sqrt{D_{t-1}+\\epsilon}\\,G / \\sqrt{A_t+\\epsilon} \\\\
     D_t &= \\rho D_{t-1} + (1-\\rho) \\Delta_t^2, \\quad X \\leftarrow X + \\eta\\,\\Delta_t

  Adadelta's two averages are full size, as in every Adadelta; here they are float32 whatever
  the variable dtype (``stats_dtype=None``: the variable's, as Keras).

  Args:
    learning_rate: a float, a schedule or a callable (>= 0).
    rho: the decay of both averages, in [0, 1].
    epsilon: added inside both square roots (>= 0).
    weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
      ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name: Keras's base
      optimizer's.
    stats_dtype: keyword-only: the dtype of the averages (``"float32"``); None keeps each
      variable's dtype.
    **kwargs: Keras's other base-optimizer arguments.

  Examples:
    >>> import os; os.environ.setdefault("KERAS_BACKEND", "jax")
    'jax'
    >>> import keras, numpy as np
    >>> import adafactor_jax.keras
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer=adafactor_jax.keras.Adadelta(learning_rate=1.0), loss="mse")
    >>> _ = model.fit(np.ones((16, 8)), np.ones((16, 4)), epochs=2, verbose=0)
    >>> len(model.optimizer.variables)  # iterations, learning rate, two averages per variable
    6
  """

  def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None,
               clipnorm=None, clipvalue=None, global_clipnorm=None, use_ema=False,
               ema_momentum=0.99, ema_overwrite_frequency=None, loss_scale_factor=None,
               gradient_accumulation_steps=None, name=None, *, stats_dtype="float32",
               **kwargs):
    validation.check("rho", rho)
    validation.check("epsilon", epsilon)
    super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
                     ema_momentum, ema_overwrite_frequency, loss_scale_factor,
                     gradient_accumulation_steps, name, stats_dtype, **kwargs)
    self.rho = float(rho)
    self.epsilon = float(epsilon)

  def build(self, var_list):
    """Creates the two full-size averages of each variable."""
    if self.built:
      return
    super().build(var_list)
    self._accumulated_grads: list[Any] = []
    self._accumulated_delta_vars: list[Any] = []
    for var in var_list:
      path, rank = var.path.replace("/", "_"), len(var.shape)
      for store, name in ((self._accumulated_grads, "accumulated_grad"),
                          (self._accumulated_delta_vars, "accumulated_delta_var")):
        store.append(self.add_variable(shape=tuple(var.shape), dtype=self._dtype_for(var),
                                       name=f"{path}_{name}",
                                       layout=_layout_keeping(var, list(range(rank)))))

  def update_step(self, grad, variable, learning_rate):
    """Keras's Adadelta step for one variable, computed in the averages' dtype."""
    index = self._get_variable_index(variable)
    acc_g, acc_d = self._accumulated_grads[index], self._accumulated_delta_vars[index]
    dtype = self._dtype_for(variable)
    lr = ops.cast(learning_rate, dtype)
    g = ops.cast(grad, dtype)
    rho = self.rho
    rms = lambda x: ops.sqrt(ops.add(x, self.epsilon))
    new_g = ops.add(rho * ops.cast(acc_g, dtype), ops.multiply(1 - rho, ops.square(g)))
    self.assign(acc_g, ops.cast(new_g, acc_g.dtype))
    delta = ops.negative(ops.divide(ops.multiply(rms(ops.cast(acc_d, dtype)), g), rms(new_g)))
    new_d = ops.add(ops.multiply(rho, ops.cast(acc_d, dtype)),
                    ops.multiply(1 - rho, ops.square(delta)))
    self.assign(acc_d, ops.cast(new_d, acc_d.dtype))
    self.assign_add(variable, ops.cast(ops.multiply(lr, delta), variable.dtype))

  def get_config(self):
    config = super().get_config()
    config.update({"rho": self.rho, "epsilon": self.epsilon, "stats_dtype": self._stats_dtype})
    return config


def _rms(x):
  return ops.sqrt(ops.mean(ops.square(x)))
