"""The documentation site: every public name has an API entry, every page is in the navigation,
and every Python block of every page runs (a page's blocks in order, in one fresh process)."""

from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

import adafactor_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
# Blocks of libraries that publish no package to install: shown, not run (title "... (not run)").
NOT_RUN = {"how-to/from-big-vision.md": 1, "how-to/from-t5x.md": 1}
# What a page's blocks need beyond jax, optax and numpy.
REFERENCES = re.compile(r"^\s*(import|from) (keras|torch|transformers|orbax|flax|haiku|equinox)\b",
                        re.M)
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                    re.M | re.S)
_SNIPPET = re.compile(r'^--8<-- "(?P<file>[^":]+)(?::(?P<section>[\w-]+))?"$', re.M)


def expand_snippets(text: str) -> str:
  """pymdownx.snippets' `--8<-- "FILE"` and `--8<-- "FILE:section"` lines, as the build does."""
  def include(m):
    body = (ROOT / m.group("file")).read_text()
    if m.group("section"):
      name = re.escape(m.group("section"))
      found = re.search(rf"--8<-- \[start:{name}\][^\n]*\n(.*?)\n[^\n]*--8<-- \[end:{name}\]",
                        body, re.S)
      assert found, f"no section {m.group('section')!r} in {m.group('file')}"
      body = found.group(1)
    return body
  return _SNIPPET.sub(include, text)


def python_blocks(page: str) -> tuple[list[str], list[str]]:
  """A page's ```python blocks: (the ones to run, the ones titled "not run")."""
  run, shown = [], []
  for m in _FENCE.finditer(expand_snippets((DOCS / page).read_text())):
    info = m.group("info").strip()
    if info.split(" ")[0] != "python":
      continue
    body = textwrap.dedent(m.group("body"))
    (shown if "(not run)" in info else run).append(body)
  return run, shown


# The public submodules, read without importing them (adafactor_jax.keras imports Keras).
SUBMODULES = {"keras": ROOT / "adafactor_jax" / "keras.py"}


def _submodule_all(path: pathlib.Path) -> list[str]:
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__"
                                            for t in node.targets):
      return list(ast.literal_eval(node.value))
  raise AssertionError(f"{path} has no __all__")


@pytest.mark.unit
def test_every_public_name_has_one_api_entry():
  entries = re.findall(r"^::: adafactor_jax\.([\w.]+)$",
                       "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md")), re.M)
  public = list(adafactor_jax.__all__) + [f"{mod}.{name}" for mod, path in SUBMODULES.items()
                                          for name in _submodule_all(path)]
  assert sorted(entries) == sorted(public)
  modules = {p.stem for p in (ROOT / "adafactor_jax").iterdir()
             if not p.name.startswith("_") and (p.suffix == ".py" or p.is_dir())}
  assert modules == set(SUBMODULES)


@pytest.mark.unit
def test_every_page_is_in_the_navigation():
  config = (ROOT / "mkdocs.yml").read_text()
  nav = config[config.index("\nnav:"):config.index("\nvalidation:")]
  listed = re.findall(r"(?:^\s*- |: )([\w/.-]+\.md)\s*$", nav, re.M)
  assert sorted(listed) == PAGES


@pytest.mark.unit
def test_only_blocks_of_uninstallable_libraries_are_not_run():
  shown = {page: len(python_blocks(page)[1]) for page in PAGES}
  assert {k: v for k, v in shown.items() if v} == NOT_RUN


@pytest.mark.unit
def test_readme_links_exist():
  readme = (ROOT / "README.md").read_text()
  links = [m for m in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme) if "://" not in m]
  assert links
  for link in links:
    assert (ROOT / link).exists(), link


def _params():
  for page in PAGES:
    run, _ = python_blocks(page)
    if not run:
      continue
    marks = [pytest.mark.references] if any(REFERENCES.search(b) for b in run) else []
    yield pytest.param(page, marks=marks, id=page)


@pytest.mark.parametrize("page", list(_params()))
def test_page_code_runs(page, tmp_path):
  """The page's blocks in order, in one fresh process with 8 simulated CPU devices."""
  run, _ = python_blocks(page)
  script = "\n\n".join(f"# --- block {i} of {page}\n{b}" for i, b in enumerate(run))
  env = dict(os.environ, KERAS_BACKEND="jax",
             XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, f"{page}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
