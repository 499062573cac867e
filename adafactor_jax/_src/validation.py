"""Argument checks shared by every factory: clear `ValueError`s at construction.

Each check names the argument, the value received and the allowed range. Values that are
tracers (hyperparameters injected by `optax.inject_hyperparams` and traced under `jax.jit`)
cannot be inspected and are let through; everything concrete is checked.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


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


def check_int(name: str, value: Any, *, low: int) -> None:
  """Raises `ValueError` unless `value` is a concrete Python/NumPy integer >= low."""
  if isinstance(value, jax.core.Tracer):
    raise ValueError(
        f"{name} decides array shapes and must be a concrete integer, got a traced value; "
        f"with optax.inject_hyperparams pass static_args=({name!r},).")
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    arr = np.asarray(value) if isinstance(value, (np.ndarray, jax.Array)) else None
    if arr is None or arr.ndim != 0 or not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    value = int(arr)
  if int(value) < low:
    raise ValueError(f"{name}={value!r} is out of range: it must be an integer >= {low}.")


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
