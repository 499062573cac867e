"""Masks: which leaves a block touches, as a pytree of bools, a function of the params, or
regular expressions on the key paths."""

from __future__ import annotations

import re
from typing import Any
from typing import Callable
from typing import Optional
from typing import Sequence
from typing import Union

import jax
import numpy as np
import optax
from jax import tree_util

from adafactor_jax._src import tree as tree_lib

MaskOrFn = Union[Any, Callable[[optax.Params], Any], None]


def resolve_mask(mask: MaskOrFn, params: Any, treedef: Any, transform: str) -> list[Any]:
  """The mask's leaves, one per leaf of `treedef` (True everywhere when `mask` is None); a mask
  whose tree is a prefix of the params' gives each of its leaves to the params under it."""
  if mask is None:
    return [True] * treedef.num_leaves
  m = mask(params) if callable(mask) else mask
  like = treedef.unflatten([0] * treedef.num_leaves)
  try:  # a prefix of the params' tree (as optax.masked takes): each leaf covers its subtree
    m = jax.tree.map(lambda x, sub: jax.tree.map(lambda _: x, sub), m, like)
  except (ValueError, TypeError):
    pass  # not a prefix: named by the check below
  tree_lib.check_same_tree(transform, m, like, expected_name="the mask", got_name="the params")
  return treedef.flatten_up_to(m)


def mask_by_path(
    include: Optional[Union[str, Sequence[str]]] = None,
    exclude: Optional[Union[str, Sequence[str]]] = None,
) -> Callable[[Any], Any]:
  """Makes a mask function from regular expressions on each leaf's key path joined with '/'.

  A leaf is True when its path matches (``re.search``) any `include` pattern (every leaf when
  `include` is None) and no `exclude` pattern.

  Args:
    include: a pattern or list of patterns selecting leaves.
    exclude: a pattern or list of patterns removing leaves (Keras's
      ``exclude_from_weight_decay(var_names=...)``).

  Returns:
    A callable ``params -> pytree of bools`` for `add_decayed_weights` or ``optax.masked``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import adafactor_jax
    >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "ln": {"scale": 1.0}}
    >>> adafactor_jax.mask_by_path(include=["kernel"])(params)
    {'dense': {'bias': False, 'kernel': True}, 'ln': {'scale': False}}
    >>> adafactor_jax.mask_by_path(exclude=["bias", "ln/"])(params)
    {'dense': {'bias': False, 'kernel': True}, 'ln': {'scale': False}}
  """
  def compile_all(arg: str, patterns: Any) -> Optional[list[re.Pattern]]:
    if patterns is None:
      return None
    if isinstance(patterns, str):
      patterns = [patterns]
    if not isinstance(patterns, (list, tuple)):
      raise ValueError(f"mask_by_path: {arg} must be a regular-expression string or a list of "
                       f"them, got {patterns!r}.")
    out = []
    for pat in patterns:
      if not isinstance(pat, str):
        raise ValueError(f"mask_by_path: {arg} must hold regular-expression strings, got {pat!r}.")
      try:
        out.append(re.compile(pat))
      except re.error as e:
        raise ValueError(f"mask_by_path: {arg} pattern {pat!r} is invalid: {e}") from e
    return out

  inc, exc = compile_all("include", include), compile_all("exclude", exclude)
  as_given = lambda x: x if x is None or isinstance(x, str) else list(x)
  return PathMask(as_given(include), as_given(exclude), inc, exc)


class PathMask:
  """The mask of `mask_by_path`: a callable ``params -> pytree of bools`` that also keeps its
  patterns as given (``include``, ``exclude``), so that `get_config` can serialise it."""

  def __init__(self, include: Optional[Union[str, list[str]]],
               exclude: Optional[Union[str, list[str]]],
               compiled_include: Optional[list[re.Pattern]],
               compiled_exclude: Optional[list[re.Pattern]]):
    self.include = include
    self.exclude = exclude
    self._inc, self._exc = compiled_include, compiled_exclude

  def __call__(self, params: Any) -> Any:
    inc, exc = self._inc, self._exc

    def leaf(path, _):
      s = tree_lib.path_str(path)
      keep = inc is None or any(p.search(s) for p in inc)
      return bool(keep and not (exc and any(p.search(s) for p in exc)))

    return tree_util.tree_map_with_path(leaf, params)

  def __repr__(self) -> str:
    return f"mask_by_path(include={self.include!r}, exclude={self.exclude!r})"


def mask_by_first_match(rules: Any, name: str) -> Callable[[Any], Any]:
  """A mask function from ``{key-path regex: bool}`` (or pairs): the first matching pattern
  (``re.search`` on the '/'-joined key path) gives a leaf's value, as t5x's ``HParamMap``; a
  leaf that matches no pattern is an error naming it."""
  if hasattr(rules, "items"):
    items = list(rules.items())
  elif isinstance(rules, (list, tuple)):
    items = list(rules)
  else:
    raise ValueError(f"{name} must be a bool, a mapping or a sequence of (key-path regex, bool) "
                     f"pairs, got {rules!r}.")
  compiled = []
  for item in items:
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], (bool, np.bool_))):
      raise ValueError(f"{name}: {item!r} is not a (key-path regex, bool) pair; pass e.g. "
                       "{'layer_norm': False, '.*': True}.")
    try:
      compiled.append((re.compile(item[0]), bool(item[1])))
    except re.error as e:
      raise ValueError(f"{name}: {item[0]!r} is not a valid regular expression: {e}") from e

  def mask_fn(params):
    def leaf(path, _):
      s = tree_lib.path_str(path)
      for pattern, value in compiled:
        if pattern.search(s):
          return value
      raise ValueError(f"{name}: no pattern matches the parameter {s!r}; add a catch-all such "
                       "as '.*'.")
    return tree_util.tree_map_with_path(leaf, params)

  return mask_fn
