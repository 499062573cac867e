"""Pytree helpers: key-path names and tree-mismatch errors that name the first differing path."""

from __future__ import annotations

from typing import Any
from typing import Sequence

import jax
import numpy as np
from jax import tree_util


def _key_str(key: Any) -> str:
  if isinstance(key, tree_util.DictKey):
    return str(key.key)
  if isinstance(key, tree_util.GetAttrKey):
    return str(key.name)
  if isinstance(key, tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_str(path: Sequence[Any]) -> str:
  """Joins a key path with '/': ``{'a': [x, y]}`` -> ``"a/0"``, ``"a/1"``."""
  return "/".join(_key_str(k) for k in path)


def is_none(x: Any) -> bool:
  return x is None


def is_array_like(x: Any) -> bool:
  """Arrays, `jax.ShapeDtypeStruct`s and array wrappers such as ``flax.nnx.Variable``."""
  return hasattr(x, "shape") and hasattr(x, "dtype")


def flatten_params(params: Any) -> tuple[list[tuple[str, Any]], Any]:
  """The params' leaves with their '/'-joined key paths, and a tree structure for statistics.

  Array wrappers (``flax.nnx.Variable``, which carries the parameter's sharding metadata) count
  as leaves, so that statistics whose shape differs from their parameter's are built without
  the wrapper and do not inherit a sharding annotation of the wrong rank.
  """
  leaves, treedef = tree_util.tree_flatten_with_path(params, is_leaf=is_array_like)
  return [(path_str(p), x) for p, x in leaves], treedef


def leaf_paths(tree: Any, is_leaf: Any = None) -> list[str]:
  """The '/'-joined key path of every leaf of `tree`, in flattening order."""
  return [path_str(p) for p, _ in tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]]


def check_same_tree(
    transform: str,
    expected: Any,
    got: Any,
    *,
    expected_name: str = "the optimizer state",
    got_name: str = "the updates",
    expected_is_leaf: Any = None,
    same_shapes: bool = False,
) -> jax.tree_util.PyTreeDef:
  """Raises `ValueError` naming the first differing key path unless the trees match (and, with
  `same_shapes`, the first leaf whose shape differs).

  Returns the tree structure of `got` (its leaves are the positions to zip over).
  """
  got_def: Any = jax.tree.structure(got)
  exp_def: Any = jax.tree.structure(expected, is_leaf=expected_is_leaf)
  if got_def == exp_def:
    if same_shapes:
      for (path, a), b in zip(tree_util.tree_flatten_with_path(got)[0],
                              jax.tree.leaves(expected, is_leaf=expected_is_leaf)):
        if not jax.tree.leaves(b):  # a stand-in that holds no array (optax.MaskedNode)
          continue
        if np.shape(a) != np.shape(b):
          raise ValueError(
              f"{transform}: the leaf {path_str(path)!r} has shape {np.shape(a)} in {got_name} "
              f"but {np.shape(b)} in {expected_name}.")
    return got_def
  got_paths = leaf_paths(got)
  exp_paths = leaf_paths(expected, is_leaf=expected_is_leaf)
  first = None
  for i in range(max(len(got_paths), len(exp_paths))):
    a = got_paths[i] if i < len(got_paths) else None
    b = exp_paths[i] if i < len(exp_paths) else None
    if a != b:
      first = (a, b)
      break
  if first is None:
    detail = f"the same leaf paths but different node types: {got_def} vs {exp_def}"
  else:
    a, b = first
    a = "<nothing>" if a is None else repr(a)
    b = "<nothing>" if b is None else repr(b)
    detail = f"first differing key path: {a} in {got_name} against {b} in {expected_name}"
  raise ValueError(
      f"{transform}: the tree of {got_name} does not match {expected_name} "
      f"({len(got_paths)} vs {len(exp_paths)} leaves); {detail}.")


def check_shapes(transform: str, expected: Sequence[tuple[int, ...]], got: Any) -> None:
  """Raises `ValueError` naming the first leaf of `got` whose shape is not the expected one."""
  for (path, leaf), shape in zip(tree_util.tree_flatten_with_path(got)[0], expected):
    if tuple(leaf.shape) != tuple(shape):
      raise ValueError(
          f"{transform}: the leaf {path_str(path)!r} has shape {tuple(leaf.shape)} but the "
          f"optimizer state was built for shape {tuple(shape)}.")


def require_params(transform: str, params: Any, why: str) -> None:
  if params is None:
    raise ValueError(
        f"{transform} needs the current params ({why}): call update(updates, state, params).")


def find_states(opt_state: Any, cls: type) -> list[Any]:
  found = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, cls))
  return [x for x in found if isinstance(x, cls)]
