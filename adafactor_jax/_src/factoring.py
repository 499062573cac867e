"""Which dimensions of a leaf are factored: pure shape logic, no arrays.

A leaf's plan says which dims the row statistic keeps (``row_dims``: the column statistic
averages them away), which dims the column statistic keeps (``col_dims``), and which dims are
*batch* dims: kept by both statistics and excluded from the RMS used for update clipping and
parameter scale, so that stacked or scanned layers get one RMS per slice (as t5x does).
Dims that are none of these (the extra dims of a rank > 2 leaf under the "largest" or "last"
rules) are kept by both statistics, and averaged over for the RMS (as optax and Keras do).

Rules:

* ``"largest"`` (optax, t5x, big_vision): the two largest dims, if the smaller of the two is at
  least ``min_dim_size_to_factor``. Ties keep the earlier dim as the row dim (a stable sort).
  optax sorts with ``np.argsort``'s default, which NumPy 2 does not keep stable for every shape
  (``(64, 64, 3, 3)``: the later dim is the row dim there), so that the row and column
  statistics of such a leaf trade places with the machine; the updates are the same to
  rounding. The largest dim is averaged away in the row statistic.
* ``"last"`` (Keras, PyTorch, transformers): the last two dims of any leaf of rank >= 2 whose
  last two sizes are both at least ``min_dim_size_to_factor`` (those libraries use no
  threshold: pass 0). The last dim is averaged away in the row statistic.
* explicit, per key-path pattern: a mapping (or sequence of pairs) from a regular expression,
  matched with ``re.search`` against the leaf's key path joined with '/', to a rule: one label
  per dim, each of ``"row"``, ``"col"``, ``"batch"`` or ``"none"`` (a tuple, or a comma-separated
  string such as ``"batch,row,col"``), or one of the words ``"largest"``, ``"last"``,
  ``"unfactored"``. The first matching pattern wins; a leaf matching none uses ``"largest"``.
  Several ``row`` (or ``col``) dims are averaged together. A rule without both a row and a col
  dim keeps a full second moment.
"""

from __future__ import annotations

import re
from typing import Any
from typing import Mapping
from typing import NamedTuple
from typing import Sequence
from typing import Union

import numpy as np

FactorRule = Union[str, Mapping[str, Any], Sequence[tuple[str, Any]], "FactorRules"]

_LABELS = ("row", "col", "batch", "none")
_WORDS = ("largest", "last", "unfactored")


class LeafPlan(NamedTuple):
  """How one leaf is treated. ``row_dims``/``col_dims`` are empty when it is not factored."""

  row_dims: tuple[int, ...]
  col_dims: tuple[int, ...]
  batch_dims: tuple[int, ...]

  @property
  def factored(self) -> bool:
    return bool(self.row_dims) and bool(self.col_dims)

  def row_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of the row statistic: the leaf's shape without the col dims."""
    return tuple(s for i, s in enumerate(shape) if i not in self.col_dims)

  def col_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of the column statistic: the leaf's shape without the row dims."""
    return tuple(s for i, s in enumerate(shape) if i not in self.row_dims)

  def row_dims_in_row_stat(self) -> tuple[int, ...]:
    """Positions of the row dims inside the row statistic (col dims removed)."""
    return tuple(r - sum(c < r for c in self.col_dims) for r in self.row_dims)

  def rms_axes(self, ndim: int) -> tuple[int, ...]:
    """The axes averaged over for block RMS (all but the batch dims)."""
    return tuple(i for i in range(ndim) if i not in self.batch_dims)


UNFACTORED = LeafPlan((), (), ())


def _parse_labels(rule: Any, where: str) -> tuple[str, ...] | str:
  if isinstance(rule, str):
    word = rule.strip().lower()
    if word in _WORDS:
      return word
    labels = tuple(x.strip().lower() for x in word.split(","))
  else:
    try:
      labels = tuple(str(x).strip().lower() if x is not None else "none" for x in rule)
    except TypeError:
      raise ValueError(f"factor_rule: the rule {rule!r} for {where} is not a string or a "
                       f"sequence of labels from {_LABELS}.") from None
  bad = [x for x in labels if x not in _LABELS]
  if bad or not labels:
    raise ValueError(
        f"factor_rule: the rule {rule!r} for {where} has unknown labels {bad}; each dim must be "
        f"one of {_LABELS}, or the whole rule one of {_WORDS}.")
  return labels


class FactorRules:
  """A validated factoring rule; `plan(path, shape)` gives a leaf's `LeafPlan`."""

  def __init__(self, rule: FactorRule, *, factored: bool = True, min_dim_size_to_factor: int = 128):
    self.factored = factored
    self.patterns: tuple[tuple[re.Pattern[str], Any], ...] = ()
    self.min_dim_size_to_factor = int(min_dim_size_to_factor)
    self.spec = rule
    if isinstance(rule, str):
      word = rule.strip().lower()
      if word not in ("largest", "last"):
        raise ValueError(
            f"factor_rule={rule!r} is not a known rule: use 'largest', 'last', or a mapping from "
            "key-path regular expressions to per-dim labels (row/col/batch/none).")
      self.default, self.patterns = word, ()
      return
    if not isinstance(rule, (Mapping, list, tuple)):
      raise ValueError(
          f"factor_rule={rule!r} is not a rule: use 'largest', 'last', or a mapping from "
          "key-path regular expressions to per-dim labels (row/col/batch/none).")
    items = list(rule.items()) if isinstance(rule, Mapping) else list(rule)
    patterns = []
    for item in items:
      if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
        raise ValueError(
            f"factor_rule: {item!r} is not a (key-path regex, rule) pair; pass a mapping such as "
            "{'layers/.*/kernel': ('batch', 'row', 'col')}.")
      pattern, leaf_rule = item
      try:
        compiled = re.compile(pattern)
      except re.error as e:
        raise ValueError(f"factor_rule: {pattern!r} is not a valid regular expression: {e}") from e
      patterns.append((compiled, _parse_labels(leaf_rule, repr(pattern))))
    self.default, self.patterns = "largest", tuple(patterns)

  def _word_plan(self, word: str, shape: tuple[int, ...]) -> LeafPlan:
    if word == "unfactored" or not self.factored or len(shape) < 2 or 0 in shape:
      return UNFACTORED
    if word == "largest":
      order = np.argsort(np.asarray(shape), kind="stable")
      d1, d0 = int(order[-2]), int(order[-1])
      if shape[d1] < self.min_dim_size_to_factor:
        return UNFACTORED
      return LeafPlan((d1,), (d0,), ())
    n = len(shape)
    if min(shape[-2:]) < self.min_dim_size_to_factor:
      return UNFACTORED
    return LeafPlan((n - 2,), (n - 1,), ())

  def plan(self, path: str, shape: Sequence[int]) -> LeafPlan:
    """The plan of the leaf at key path `path` (joined with '/') and shape `shape`."""
    shape = tuple(int(s) for s in shape)
    rule: Any = self.default
    for compiled, leaf_rule in self.patterns:
      if compiled.search(path):
        rule = leaf_rule
        break
    if isinstance(rule, str):
      return self._word_plan(rule, shape)
    if len(rule) != len(shape):
      raise ValueError(
          f"factor_rule: the leaf {path!r} has shape {shape} (rank {len(shape)}) but its rule "
          f"{rule} names {len(rule)} dims.")
    rows = tuple(i for i, x in enumerate(rule) if x == "row")
    cols = tuple(i for i, x in enumerate(rule) if x == "col")
    batch = tuple(i for i, x in enumerate(rule) if x == "batch")
    if not self.factored or not rows or not cols or 0 in shape:
      return LeafPlan((), (), batch)
    return LeafPlan(rows, cols, batch)


def as_rules(factor_rule: FactorRule | FactorRules, *, factored: bool = True,
             min_dim_size_to_factor: int = 128) -> FactorRules:
  if isinstance(factor_rule, FactorRules):
    return factor_rule
  return FactorRules(factor_rule, factored=factored, min_dim_size_to_factor=min_dim_size_to_factor)
