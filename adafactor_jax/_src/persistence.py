"""Portable single-file checkpoints of optimizer states (``.npz``, no pickle)."""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

from adafactor_jax._src import tree as tree_lib

_META = "__adafactor_jax_meta__"
_FORMAT = 1


def _leaves(tree: Any) -> list[tuple[str, Any]]:
  return [(tree_lib.path_str(p), x) for p, x in tree_util.tree_flatten_with_path(tree)[0]]


def save_state(path: str | os.PathLike, opt_state: Any, *, tx: Any = None) -> None:
  """Writes an optimizer state to one ``.npz`` file, atomically.

  Each array is stored under its key path in the state (for example ``0/v_row/encoder/kernel``),
  with the library version, the dtype and shape of every leaf, and, when `tx` is given, the
  optimizer's config (`get_config`). The file is written under a temporary name in the same
  folder and renamed into place, so an interrupted write never leaves a file that loads.

  Args:
    path: the file to write (``.npz`` is appended by NumPy conventions only if you add it).
    opt_state: the state, a pytree of arrays.
    tx: optional optimizer made by a preset; its config is stored and checked by `load_state`.

  Returns:
    None. The file at `path` holds the state (an existing file is replaced atomically).

  Examples:
    >>> import os, tempfile, jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.adafactor(0.01)
    >>> state = tx.init({"w": jnp.ones((3, 4))})
    >>> path = os.path.join(tempfile.mkdtemp(), "opt.npz")
    >>> adafactor_jax.save_state(path, state, tx=tx)
    >>> restored = adafactor_jax.load_state(path, like=state, tx=tx)
    >>> bool(restored[0].count == state[0].count)
    True
  """
  from adafactor_jax import __version__
  from adafactor_jax._src.config import get_config

  arrays, leaves_meta = {}, []
  for key, leaf in _leaves(opt_state):
    arr = np.asarray(jax.device_get(leaf))
    dtype = jnp.dtype(arr.dtype)
    if key in arrays or key == _META:
      raise ValueError(f"save_state: duplicate key path {key!r} in the state.")
    stored = arr if arr.dtype.kind in "biufc" and arr.dtype.isbuiltin else arr.view(
        np.dtype(f"u{arr.dtype.itemsize}"))
    arrays[key] = stored
    leaves_meta.append({"key": key, "dtype": dtype.name, "shape": list(arr.shape)})
  meta = {"format": _FORMAT, "version": __version__, "leaves": leaves_meta,
          "config": get_config(tx) if tx is not None else None}
  arrays[_META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  # A new file of a random name, created with mode 0o666 less the umask, as np.savez's would be
  # (tempfile.mkstemp's are 0o600, which os.replace would keep).
  tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}.npz")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)  # type: ignore[arg-type]  # (numpy's stubs: allow_pickle)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load_state(path: str | os.PathLike, like: Any, *, tx: Any = None) -> Any:
  """Reads a state written by `save_state` into the structure of `like`.

  Args:
    path: the file.
    like: a state of the same optimizer, or its shapes (``jax.eval_shape(tx.init, params)``);
      leaves carrying a `jax.sharding.Sharding` are placed with it: sharded arrays, or
      ``jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)`` with ``s`` from `state_shardings`.
    tx: optional optimizer; if the file holds a config, it must equal ``get_config(tx)``.

  Returns:
    The state, with `like`'s tree structure.

  Raises:
    ValueError: the file is truncated or not a state file, or its keys, shapes or dtypes differ
      from `like`'s (the message names the first mismatching key), or it was written for an
      optimizer with another config.

  Examples:
    >>> import os, tempfile, jax, jax.numpy as jnp
    >>> import adafactor_jax
    >>> tx = adafactor_jax.adafactor(0.01, momentum=0.9)
    >>> params = {"w": jnp.ones((3, 4))}
    >>> path = os.path.join(tempfile.mkdtemp(), "opt.npz")
    >>> adafactor_jax.save_state(path, tx.init(params))
    >>> state = adafactor_jax.load_state(path, like=jax.eval_shape(tx.init, params))
    >>> adafactor_jax.load_state(path, like=adafactor_jax.adafactor(0.01).init(params))
    Traceback (most recent call last):
    ...
    ValueError: load_state: the state in ... does not match the target: first mismatching key '4/mu/w' in the file vs <nothing> in the target (3 vs 2 arrays).
  """
  from adafactor_jax._src.config import get_config

  path = os.fspath(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      files = {k: data[k] for k in data.files}
  # NotImplementedError: zipfile's answer to a corrupt compression-method or version field.
  except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError, NotImplementedError) as e:
    raise ValueError(f"load_state: {path!r} is truncated or not an optimizer-state file "
                     f"({type(e).__name__}: {e}).") from e
  if _META not in files:
    raise ValueError(f"load_state: {path!r} has no adafactor_jax metadata: not a state file.")
  try:
    meta = json.loads(files.pop(_META).tobytes().decode())
  except ValueError as e:
    raise ValueError(f"load_state: the metadata of {path!r} is corrupt: {e}") from e
  if tx is not None and meta.get("config") is not None:
    want = get_config(tx)
    if meta["config"]["name"] != want["name"] or meta["config"]["config"] != want["config"]:
      raise ValueError(
          f"load_state: {path!r} was written for {meta['config']['name']} with config "
          f"{meta['config']['config']}, not for {want['name']} with {want['config']}.")
  expected = _leaves(like)
  stored = meta["leaves"]
  for i in range(max(len(expected), len(stored))):
    a = expected[i][0] if i < len(expected) else None
    b = stored[i]["key"] if i < len(stored) else None
    if a != b:
      a, b = ("<nothing>" if x is None else repr(x) for x in (a, b))
      raise ValueError(
          f"load_state: the state in {path!r} does not match the target: first mismatching key "
          f"{b} in the file vs {a} in the target ({len(stored)} vs {len(expected)} arrays).")
  out = []
  for (key, target), info in zip(expected, stored):
    shape, dtype = tuple(info["shape"]), jnp.dtype(info["dtype"])
    if tuple(target.shape) != shape or jnp.dtype(target.dtype) != dtype:
      raise ValueError(
          f"load_state: {key!r} is {dtype.name}{list(shape)} in the file but "
          f"{jnp.dtype(target.dtype).name}{list(target.shape)} in the target.")
    arr = files[key]
    if arr.dtype != dtype:
      arr = arr.view(dtype)
    if arr.shape != shape:
      raise ValueError(f"load_state: {key!r} is corrupt in {path!r}.")
    sharding = getattr(target, "sharding", None)
    out.append(jax.device_put(arr, sharding) if sharding is not None else jnp.asarray(arr))
  return jax.tree.unflatten(jax.tree.structure(like), out)
