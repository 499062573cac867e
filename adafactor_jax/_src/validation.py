"""Argument checks shared by every factory: clear `ValueError`s at construction.

Each check names the argument, the value received and the allowed range. Values that are
tracers (hyperparameters injected by `optax.inject_hyperparams` and traced under `jax.jit`)
cannot be inspected and are let through; everything concrete is checked.
"""

from __future__ import annotations

import math
from typing import Any
from typing import NamedTuple
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

# A number a preset negates or compares (a Python number, or an array injected by
# optax.inject_hyperparams).
Scalar = Union[float, int, jax.Array]


def _concrete_float(name: str, value: Any) -> float | None:
  """Returns `value` as a Python float, or None when it is a tracer."""
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, bool):
    raise ValueError(f"{name} must be a number, got the bool {value!r}.")
  try:
    arr = np.asarray(value)
  except Exception as e:  # pragma: no cover - exotic objects
    raise ValueError(f"{name} must be a number, got {value!r}.") from e
  # jnp.issubdtype: np.issubdtype does not count bfloat16 (an ml_dtypes type) as a number, and
  # optax.inject_hyperparams casts hyperparameters to bfloat16 for bfloat16 params.
  if arr.ndim != 0 or not jnp.issubdtype(arr.dtype, jnp.number):
    raise ValueError(f"{name} must be a scalar number, got {value!r}.")
  if np.iscomplexobj(arr):
    raise ValueError(f"{name} must be a real number, got {value!r}.")
  return float(arr)


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
  """Raises `ValueError` unless `value` is a finite number in the given range."""
  x = _concrete_float(name, value)
  if x is None:
    return
  lo = "-inf" if low is None else repr(low)
  hi = "inf" if high is None else repr(high)
  interval = ("[" if low_inclusive and low is not None else "(") + f"{lo}, {hi}" + (
      "]" if high_inclusive and high is not None else ")")
  ok = math.isfinite(x)
  if ok and low is not None:
    ok = x >= low if low_inclusive else x > low
  if ok and high is not None:
    ok = x <= high if high_inclusive else x < high
  if not ok:
    raise ValueError(f"{name}={value!r} is out of range: it must be a finite number in {interval}.")


def is_zero(value: Any) -> bool:
  """True for a concrete number 0 (never for a schedule or a traced value)."""
  if callable(value) or isinstance(value, jax.core.Tracer) or isinstance(value, bool):
    return False
  try:
    return float(value) == 0.0
  except (TypeError, ValueError):
    return False


def check_scalar_or_schedule(name: str, value: Any, **ranges: Any) -> None:
  """Like `check_number`, but a callable schedule is accepted as it is."""
  if callable(value):
    return
  check_number(name, value, **ranges)


def check_int(name: str, value: Any, *, low: int) -> int:
  """Returns `value` as an int; raises `ValueError` unless it is a concrete integer >= low.

  An integral float (``4.0``) is accepted as that integer: R passes every number as a double, so
  keras3's ``gradient_accumulation_steps = 4`` arrives as ``4.0``.
  """
  if isinstance(value, jax.core.Tracer):
    raise ValueError(
        f"{name} decides array shapes and must be a concrete integer, got a traced value; "
        f"with optax.inject_hyperparams pass static_args=({name!r},).")
  if isinstance(value, bool):
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
  arr = np.asarray(value) if isinstance(value, (int, float, np.generic, np.ndarray,
                                                jax.Array)) else None
  integral = arr is not None and arr.ndim == 0 and (
      np.issubdtype(arr.dtype, np.integer) or
      (np.issubdtype(arr.dtype, np.floating) and bool(np.isfinite(arr)) and float(arr) ==
       int(arr)))
  if arr is None or not integral:
    raise ValueError(f"{name} must be an integer >= {low} (or an integral float such as 4.0), "
                     f"got {value!r}.")
  as_int = int(arr)
  if as_int < low:
    raise ValueError(f"{name}={value!r} is out of range: it must be an integer >= {low}.")
  return as_int


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {choices!r}.")


def check_bool(name: str, value: Any) -> None:
  """Raises `ValueError` unless `value` is a concrete bool (a switch that decides the program)."""
  if isinstance(value, jax.core.Tracer):
    raise ValueError(
        f"{name} is a switch of the optimizer's structure and must be a concrete bool, got a "
        f"traced value; with optax.inject_hyperparams pass a Python bool or "
        f"static_args=({name!r},).")
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{name} must be a bool, got {value!r}.")


def as_dtype(dtype: Any) -> np.dtype | None:
  """`dtype` as a NumPy dtype (None stays None).

  ``optax.inject_hyperparams`` treats every callable argument as a schedule, so a dtype default
  such as ``jnp.float32`` reaches the factory as ``jnp.float32(count)``, an array of that
  dtype: its dtype is the one meant.
  """
  if dtype is None:
    return None
  if hasattr(dtype, "dtype") and not isinstance(dtype, (np.dtype, type)):
    return jnp.dtype(dtype.dtype)
  return jnp.dtype(dtype)


def check_dtype(name: str, value: Any, *, complex_ok: bool = False) -> np.dtype | None:
  """`value` as a NumPy dtype (`as_dtype`; None stays None); raises `ValueError` unless it names
  a floating dtype (or, with `complex_ok`, a complex one: an accumulator of complex updates)."""
  if value is None:
    return None
  try:
    dtype = as_dtype(value)
  except (TypeError, ValueError):
    dtype = None
  ok = dtype is not None and (jnp.issubdtype(dtype, jnp.floating) or
                              (complex_ok and jnp.issubdtype(dtype, jnp.complexfloating)))
  if not ok:
    kind = "floating or complex" if complex_ok else "floating"
    shown = value if dtype is None else dtype
    raise ValueError(f"{name}={shown!r} is not a {kind} dtype: pass one such as jnp.float32, "
                     f"or None.")
  return dtype


def check_transformation(name: str, value: Any) -> None:
  """Raises `ValueError` unless `value` looks like an optax `GradientTransformation`."""
  if not (callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))):
    raise ValueError(f"{name} must be an optax GradientTransformation (with init and update), "
                     f"got {value!r}.")


def check_mask(name: str, mask: Any) -> None:
  """Raises `ValueError` unless `mask` is None, a callable or a pytree of bools (or arrays)."""
  if mask is not None and not callable(mask):
    bad = [x for x in jax.tree.leaves(mask) if not isinstance(x, (bool, np.bool_, jax.Array,
                                                                  np.ndarray))]
    if bad:
      raise ValueError(f"{name} must be a pytree of bools or a callable, got a leaf {bad[0]!r}.")


class Rule(NamedTuple):
  """What an argument may be: a `kind` and, for numbers, the allowed range."""

  kind: str  # number, schedule (a number or a callable), int, bool, dtype, buffer_dtype, mask
  low: float | None = None
  high: float | None = None
  low_inclusive: bool = True
  high_inclusive: bool = True

  def check(self, name: str, value: Any) -> Any:
    """Raises `ValueError` naming `name`, `value` and what is allowed; returns the value (a
    dtype as a NumPy dtype)."""
    if self.kind in ("number", "schedule"):
      if self.kind == "schedule" and callable(value):
        return value
      check_number(name, value, low=self.low, high=self.high, low_inclusive=self.low_inclusive,
                   high_inclusive=self.high_inclusive)
    elif self.kind == "int":
      return check_int(name, value, low=int(self.low if self.low is not None else 0))
    elif self.kind == "bool":
      check_bool(name, value)
    elif self.kind in ("dtype", "buffer_dtype"):
      return check_dtype(name, value, complex_ok=self.kind == "buffer_dtype")
    elif self.kind == "mask":
      check_mask(name, value)
    else:  # pragma: no cover - a rule of this module
      raise AssertionError(self.kind)
    return value


_POSITIVE = Rule("number", low=0.0, low_inclusive=False)
_NON_NEGATIVE = Rule("number", low=0.0)
_FINITE = Rule("number")
_UNIT = Rule("number", low=0.0, high=1.0)  # [0, 1]
_UNIT_OPEN = Rule("number", low=0.0, high=1.0, high_inclusive=False)  # [0, 1)

# The one rule of each argument of the package, by name: every block, preset (and the Keras
# classes) validates an argument of this name with this rule, so with the same message. An
# argument that takes another library's name for another quantity says which rule it follows
# (`check`'s `rule`): transformers' `decay_rate` is PyTorch's `beta2_decay` (<= 0),
# `ema_params`'s `momentum` is Keras's `ema_momentum` ([0, 1]), PyTorch's and transformers' `eps`
# are pairs of `eps`.
RULES: dict[str, Rule] = {
    # learning rates and weight decay: a number >= 0 or a schedule
    **dict.fromkeys(("learning_rate", "lr", "max_rate", "weight_decay", "weight_decay_rate"),
                    Rule("schedule", low=0.0)),
    # second-moment decay: beta2 = 1 - t**-decay_rate; PyTorch's and Keras's exponent is negated
    "decay_rate": _NON_NEGATIVE,
    **dict.fromkeys(("beta2_decay", "beta_2_decay"), Rule("number", high=0.0)),
    **dict.fromkeys(("decay_offset", "step_offset", "weight_decay_rate_lr_exponent"), _FINITE),
    "min_dim_size_to_factor": Rule("int", low=0),
    # thresholds of clipping (of the update RMS, norms, values) and caps
    **dict.fromkeys(("clipping_threshold", "threshold", "clip_threshold",
                     "global_norm_clip_threshold", "max_norm", "clipnorm", "global_clipnorm",
                     "max_value", "clipvalue", "max_parameter_scale", "max_scale",
                     "warmup_rate", "loss_scale_factor"), _POSITIVE),
    "d": Rule("number", low=1.0),  # PyTorch's clipping threshold, as PyTorch checks it
    # averages: momentum of the update in [0, 1); of the weights (Keras's EMA) in [0, 1]
    **dict.fromkeys(("momentum", "decay", "beta1"), _UNIT_OPEN),
    **dict.fromkeys(("rho", "beta2_cap", "ema_momentum"), _UNIT),
    # epsilons and floors
    **dict.fromkeys(("eps", "epsilon", "epsilon_1", "epsilon_2", "min_scale",
                     "param_scale_min"), _NON_NEGATIVE),
    "gradient_accumulation_steps": Rule("int", low=2),
    **dict.fromkeys(("overwrite_frequency", "ema_overwrite_frequency"), Rule("int", low=1)),
    **dict.fromkeys(("factored", "flip_sign", "use_ema", "relative_step", "scale_parameter",
                     "warmup_init", "maximize", "foreach", "skip_nonfinite"), Rule("bool")),
    "stats_dtype": Rule("dtype"),
    **dict.fromkeys(("dtype_momentum", "accumulator_dtype", "dtype"), Rule("buffer_dtype")),
    **dict.fromkeys(("weight_decay_mask", "mask"), Rule("mask")),
}


def check(name: str, value: Any, *, rule: str | None = None) -> Any:
  """Checks the argument `name` against its rule in `RULES` (or the rule of the argument
  `rule`), raising a `ValueError` that names it, the value and what is allowed. Returns the value
  (a dtype argument as a NumPy dtype, None staying None)."""
  return RULES[rule or name].check(name, value)
