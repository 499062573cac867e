"""A griffe extension for the docs build: the docstrings' reST math, rendered as MathML.

The package's docstrings write formulas as optax's do, in reST (``.. math::`` blocks and
``:math:`x``` roles), which Markdown does not render. This extension rewrites them, at build
time, into MathML (``latex2mathml``), which browsers render natively: no script, nothing fetched
from a CDN. A formula latex2mathml cannot convert fails the build.
"""

from __future__ import annotations

import re
import textwrap

import griffe
from latex2mathml.converter import convert

_ROLE = re.compile(r":math:`([^`]+)`")
_TEXT = re.compile(r"\\text\{[^}]*\}")


def _convert(latex: str, display: str) -> str:
  # latex2mathml keeps the backslash of an escaped underscore inside \text{}
  latex = _TEXT.sub(lambda m: m.group(0).replace(r"\_", "_"), latex)
  # Markdown takes a line that starts with <math> for a block of raw HTML: a span keeps an
  # inline formula inside its paragraph
  tag = "div" if display == "block" else "span"
  return f'<{tag} class="math">{convert(latex, display=display)}</{tag}>'



def _block(latex: str) -> str:
  body = latex.strip()
  if "&" in body or r"\\" in body:  # rows and alignment points: an align* table
    body = r"\begin{align*}" + body + r"\end{align*}"
  return _convert(body, "block")


def render(doc: str) -> str:
  """Returns `doc` with its ``.. math::`` blocks and ``:math:`` roles as MathML."""
  lines, out, i = doc.splitlines(), [], 0
  while i < len(lines):
    line = lines[i]
    if line.strip().startswith(".. math::"):
      indent = len(line) - len(line.lstrip())
      i += 1
      block = [line.strip()[len(".. math::"):]]
      while i < len(lines) and (not lines[i].strip() or
                                len(lines[i]) - len(lines[i].lstrip()) > indent):
        block.append(lines[i])
        i += 1
      while block and not block[-1].strip():
        block.pop()
      latex = block[0] + "\n" + textwrap.dedent("\n".join(block[1:]))
      out += ["", " " * indent + _block(latex), ""]
      continue
    out.append(line)
    i += 1
  # a role may run over a line break inside a paragraph
  return _ROLE.sub(lambda m: _convert(" ".join(m.group(1).split()), "inline"), "\n".join(out))


class MathML(griffe.Extension):
  """Rewrites every docstring's reST math into MathML."""

  def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
    if obj.docstring is not None and "math:" in obj.docstring.value:
      obj.docstring.value = render(obj.docstring.value)
