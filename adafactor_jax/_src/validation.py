"""Argument checks shared by every factory: clear `ValueError`s at construction.

Each check names the argument, the value received and the allowed range. Values that are
tracers (hyperparameters injected by `optax.inject_hyperparams` and traced under `jax.jit`)
cannot be inspected and are let through; everything concrete is checked.
"""

from __future__ import annotations

import math
from typing import Any

import jax
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
  if arr.ndim != 0 or not (np.issubdtype(arr.dtype, np.number)):
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
