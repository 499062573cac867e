"""The examples run (with tiny sizes) and the README's numbers are what the package computes."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import sys

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses (flax.linen modules) look their module up
  spec.loader.exec_module(module)
  return module


def test_train_lm_tiny(tmp_path):
  out = tmp_path / "lm.png"
  results = load("train_lm").main(["--tiny", "--steps", "30", "--out", str(out)])
  assert out.exists() and out.stat().st_size > 1000
  ada = results["adafactor"]
  assert sum(ada["losses"][-5:]) / 5 < ada["losses"][0] - 0.3
  assert ada["state_bytes"] < results["adam"]["state_bytes"]


def test_readme_memory_table_is_computed():
  mem = load("state_memory")
  shapes = mem.bert_base_shapes()
  n = sum(x.size for x in jax.tree.leaves(shapes))
  readme = (ROOT / "README.md").read_text()
  assert f"{n:,} parameters" in readme
  for name, nbytes in mem.table(shapes):
    assert re.search(rf"\| {re.escape(name)} \| {nbytes:,} \|", readme), name
