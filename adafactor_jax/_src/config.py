"""Hyperparameter configs of presets (Keras's ``get_config`` / ``from_config``).

Every preset factory is wrapped with `preset`: the transformation it returns remembers the
preset's name and its bound arguments, `get_config` turns them into a JSON-serialisable dict,
and `from_config` calls the factory again with them.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any
from typing import Callable

import jax.numpy as jnp
import numpy as np
import optax

from adafactor_jax._src import validation
from adafactor_jax._src.masks import PathMask
from adafactor_jax._src.masks import mask_by_path

_REGISTRY: dict[str, Callable[..., Any]] = {}
_DTYPE_TAG = "__dtype__"
_TUPLE_TAG = "__tuple__"
_MASK_TAG = "__mask_by_path__"


class ConfiguredTransformation(optax.GradientTransformationExtraArgs):
  """An `optax.GradientTransformationExtraArgs` that also remembers how it was made.

  It is still the 2-tuple ``(init, update)``; ``preset_name`` and ``preset_args`` are plain
  attributes read by `get_config`.
  """

  preset_name: str
  preset_args: dict


def preset(fn: Callable[..., optax.GradientTransformationExtraArgs]):
  """Registers a preset factory under its function name and records its arguments.

  Every preset also gets the keyword-only argument ``skip_nonfinite=False``: with True the
  whole optimizer is wrapped in `skip_nonfinite` (atomic skipping of non-finite steps).
  """
  sig = inspect.signature(fn)
  params = list(sig.parameters.values())
  params.append(inspect.Parameter("skip_nonfinite", inspect.Parameter.KEYWORD_ONLY,
                                  default=False, annotation="bool"))
  full_sig = sig.replace(parameters=params)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    bound = full_sig.bind(*args, **kwargs)
    bound.apply_defaults()
    skip = bound.arguments["skip_nonfinite"]
    validation.check("skip_nonfinite", skip)
    kwargs.pop("skip_nonfinite", None)
    tx = fn(*args, **kwargs)
    if skip:
      from adafactor_jax._src.reliability import skip_nonfinite
      tx = skip_nonfinite(tx)
    out = ConfiguredTransformation(tx.init, tx.update)
    out.preset_name = fn.__name__
    out.preset_args = dict(bound.arguments)
    return out

  wrapper.__signature__ = full_sig  # type: ignore[attr-defined]
  _REGISTRY[fn.__name__] = wrapper
  return wrapper


def _encode(name: str, value: Any) -> Any:
  if value is None or isinstance(value, (bool, str)):
    return value
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value)
  if isinstance(value, (np.ndarray,)) or hasattr(value, "__jax_array__") or (
      hasattr(value, "shape") and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0):
    arr = np.asarray(value)
    if arr.ndim == 0 and (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
      return arr.item()
  if isinstance(value, (type, np.dtype)) and _is_dtype(value):
    return {_DTYPE_TAG: jnp.dtype(value).name}
  if isinstance(value, PathMask):
    return {_MASK_TAG: {"include": value.include, "exclude": value.exclude}}
  if isinstance(value, dict):
    return {str(k): _encode(f"{name}[{k!r}]", v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    items = [_encode(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return {_TUPLE_TAG: items} if isinstance(value, tuple) else items
  if callable(value):
    raise ValueError(
        f"get_config: the argument {name}={value!r} is a callable (a schedule or mask function) "
        "and cannot be serialised; pass a number, a pytree, or adafactor_jax.mask_by_path(...).")
  raise ValueError(f"get_config: the argument {name}={value!r} of type {type(value).__name__} "
                   "cannot be serialised to JSON.")


def _is_dtype(value: Any) -> bool:
  try:
    jnp.dtype(value)
  except (TypeError, ValueError):
    return False
  return True


def _decode(value: Any) -> Any:
  if isinstance(value, dict):
    if set(value) == {_DTYPE_TAG}:
      return jnp.dtype(value[_DTYPE_TAG])
    if set(value) == {_TUPLE_TAG}:
      return tuple(_decode(v) for v in value[_TUPLE_TAG])
    if set(value) == {_MASK_TAG}:
      return mask_by_path(**value[_MASK_TAG])
    return {k: _decode(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_decode(v) for v in value]
  return value


def get_config(tx: Any) -> dict:
  """Returns the JSON-serialisable hyperparameters of an optimizer made by a preset.

  Args:
    tx: a transformation returned by one of this package's optimizers (`adafactor`,
      `adadelta`, ...).

  Returns:
    ``{"name": preset name, "version": package version, "config": {argument: value}}``, where
    dtypes, tuples and `mask_by_path` masks are encoded so that `from_config` restores them.

  Raises:
    ValueError: `tx` was not made by a preset, or an argument (a schedule function, a mask
      function other than `mask_by_path`) cannot be serialised.

  Examples:
    >>> import json
    >>> import adafactor_jax
    >>> cfg = adafactor_jax.get_config(adafactor_jax.adafactor(0.01, momentum=0.9))
    >>> cfg["name"], cfg["config"]["learning_rate"], cfg["config"]["momentum"]
    ('adafactor', 0.01, 0.9)
    >>> tx = adafactor_jax.from_config(json.loads(json.dumps(cfg)))
  """
  if not isinstance(tx, ConfiguredTransformation):
    raise ValueError(
        f"get_config: {type(tx).__name__} was not made by an adafactor_jax optimizer preset "
        "(building blocks and optax.chain results have no config).")
  from adafactor_jax import __version__
  return {
      "name": tx.preset_name,
      "version": __version__,
      "config": {k: _encode(k, v) for k, v in tx.preset_args.items()},
  }


def from_config(config: dict) -> ConfiguredTransformation:
  """Rebuilds an optimizer from `get_config`'s dict (the inverse of `get_config`).

  Args:
    config: a dict as returned by `get_config` (possibly through JSON).

  Returns:
    The optimizer, with numbers identical to the original's.

  Raises:
    ValueError: unknown preset name or malformed config.

  Examples:
    >>> import adafactor_jax
    >>> tx = adafactor_jax.from_config({"name": "adadelta", "config": {"learning_rate": 1.0}})
    >>> adafactor_jax.get_config(tx)["config"]["rho"]
    0.9
  """
  if not isinstance(config, dict) or "name" not in config:
    raise ValueError(f"from_config: expected a dict with 'name' and 'config', got {config!r}.")
  name = config["name"]
  if name not in _REGISTRY:
    raise ValueError(f"from_config: unknown optimizer {name!r}; known: {sorted(_REGISTRY)}.")
  args = _decode(config.get("config", {}))
  known = inspect.signature(_REGISTRY[name]).parameters
  unknown = sorted(set(args) - set(known))
  if unknown:
    raise ValueError(f"from_config: {name} has no argument(s) {unknown}; known: {list(known)}.")
  return _REGISTRY[name](**args)
