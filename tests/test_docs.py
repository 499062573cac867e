"""The public surface: __all__, docstrings, every docstring example and the README quick start."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pathlib
import re

import pytest

import adafactor_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


# public submodules, imported on demand: they become attributes of the package once any code
# (an earlier test, a user) imports them, so they are not part of __all__
PUBLIC_SUBMODULES = {"keras"}


def _assert_all_matches_exports():
  public = {n for n in dir(adafactor_jax) if not n.startswith("_")}
  modules = {n for n in public if inspect.ismodule(getattr(adafactor_jax, n))}
  assert modules <= PUBLIC_SUBMODULES
  assert set(adafactor_jax.__all__) == public - modules


def test_all_matches_exports():
  _assert_all_matches_exports()
  assert len(adafactor_jax.__all__) == len(set(adafactor_jax.__all__))
  assert re.fullmatch(r"\d+\.\d+\.\d+", adafactor_jax.__version__)


@pytest.mark.references
def test_all_matches_exports_after_importing_the_keras_submodule():
  # CI's failure of 2026-12-05: a test importing adafactor_jax.keras earlier in the same worker
  # made ``keras`` an attribute of the package
  importlib.import_module("adafactor_jax.keras")
  assert inspect.ismodule(adafactor_jax.keras)
  _assert_all_matches_exports()


@pytest.mark.parametrize("name", adafactor_jax.__all__)
def test_public_name_has_docstring(name):
  obj = getattr(adafactor_jax, name)
  doc = inspect.getdoc(obj)
  assert doc and len(doc.splitlines()[0]) > 10, name
  if inspect.isfunction(obj) and name[0].islower():
    # optimizers and building blocks: Args/Returns and a runnable example (mask/config helpers
    # included); pure helper functions at least say what they return
    for section in ("Returns:", "Examples:"):
      if name not in ("decay_rate_pow",):
        assert section in doc, f"{name} lacks {section}"


@pytest.mark.parametrize("name", adafactor_jax.__all__)
def test_docstring_examples_run(name):
  obj = getattr(adafactor_jax, name)
  finder = doctest.DocTestFinder(recurse=False)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  for test in finder.find(obj, name, globs={}):
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f"{name}: {result.failed} docstring example(s) failed"


def _python_blocks(text: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_quick_start_runs():
  blocks = _python_blocks((ROOT / "README.md").read_text())
  assert blocks, "README has no python block"
  quick = blocks[0]
  assert len(quick.strip().splitlines()) <= 15
  namespace: dict = {}
  exec(compile(quick, "README quick start", "exec"), namespace)


def test_ci_runs_the_readme_test_command_verbatim():
  readme = (ROOT / "README.md").read_text()
  command = next(ln.strip() for ln in readme.splitlines()
                 if ln.strip().startswith("python3 -m venv") and "pytest" in ln)
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  assert command in [ln.strip() for ln in ci]


@pytest.mark.unit
def test_contributing_worked_example_runs():
  """CONTRIBUTING.md's block and its test, run in order."""
  blocks = _python_blocks((ROOT / "CONTRIBUTING.md").read_text())
  assert len(blocks) == 2
  namespace: dict = {}
  for i, block in enumerate(blocks):
    exec(compile(block, f"CONTRIBUTING.md block {i}", "exec"), namespace)
