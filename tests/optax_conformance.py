"""optax's own shipped tests, pointed at this package: what they are and how they are patched.

The tests are collected at test time from the installed optax package (never copied here):

* ``optax/_src/factorized_test.py``: every test, with ``factorized.scale_by_factored_rms``
  replaced by `adafactor_jax.scale_by_factored_rms`;
* ``optax/_src/alias_test.py``: every case of ``AliasTest`` whose parameters name
  ``adafactor`` or ``adadelta``, with ``alias.adafactor`` and ``alias.adadelta`` replaced by
  this package's presets;
* ``optax/_src/sharding_test.py`` (8 devices) and ``optax/_src/transform_test.py`` bind the
  optimizers when they are imported: they run in a subprocess that replaces optax's functions
  before importing them (`optax_conformance_sharded.py`).

`PATCHES` is the one list of replacements; `DESELECTED` the cases not run, each with its reason
(a flaw of optax that this package fixes on purpose; tested in the test named there).
"""

from __future__ import annotations

from typing import Any

import adafactor_jax as af

# (module name, attribute, replacement): optax's function and ours.
PATCHES: tuple[tuple[str, str, Any], ...] = (
    ("optax", "adafactor", af.adafactor),
    ("optax", "adadelta", af.adadelta),
    ("optax", "scale_by_factored_rms", af.scale_by_factored_rms),
    ("optax", "scale_by_adadelta", af.scale_by_adadelta),
    ("optax", "scale_by_param_block_rms", af.scale_by_param_block_rms),
    ("optax._src.alias", "adafactor", af.adafactor),
    ("optax._src.alias", "adadelta", af.adadelta),
    ("optax._src.factorized", "scale_by_factored_rms", af.scale_by_factored_rms),
    ("optax._src.transform", "scale_by_adadelta", af.scale_by_adadelta),
    ("optax._src.transform", "scale_by_param_block_rms", af.scale_by_param_block_rms),
)

# Names that select optax's cases: a case runs when its parameters name one of them.
SUBJECTS = ("adafactor", "adadelta")

# test id -> why it does not run here. Empty: every selected case of optax 0.2.8 passes.
DESELECTED: dict[str, str] = {}


def selects(params_repr: str) -> bool:
  """Whether a parameterized case (absl's repr of its parameters) is about our subjects."""
  return any(f"'{name}'" in params_repr for name in SUBJECTS)


def patch_all(patch: Any) -> None:
  """Applies `PATCHES` with ``patch(module, attribute, value)`` (a monkeypatch or mock)."""
  import importlib

  for module, attr, value in PATCHES:
    patch(importlib.import_module(module), attr, value)
