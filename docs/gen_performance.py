"""Regenerates the tables of docs/performance.md from the benchmark JSON files in docs/.

    python docs/gen_performance.py           # rewrites docs/performance.md in place
    python docs/gen_performance.py --check   # exits 1 if the page is not what the JSON gives

The page marks each generated section:

    <!-- table: benchmark.json -->
    ...  (the machine line and the table, generated)
    <!-- end table -->

Everything outside the markers is written by hand. Standard library only:
tests/test_performance_page.py runs this with the runtime dependencies and pytest alone. The
plots come from the same JSON:

    python benchmarks/run.py --from-json docs/<name>.json --plot docs/<name>.png
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys

DOCS = pathlib.Path(__file__).resolve().parent
PAGE = DOCS / "performance.md"
SECTION = re.compile(
    r"(<!-- table: (?P<name>[\w.-]+\.json) -->\n)(?P<body>.*?)(<!-- end table -->)", flags=re.S)

# The runs before benchmarks/run.py recorded the machine in its JSON: "this project's 2-core CPU
# machine" of the earlier sessions, 2026-11-23 (the README of those commits), not the AMD EPYC.
UNRECORDED_MACHINE = ("not recorded in the JSON (an earlier run): the 2-core CPU machine of the "
                      "earlier sessions, model unknown, jax 0.10.2, optax 0.2.8, keras 3.15.1, "
                      "2026-11-23")

COLUMNS = [  # header, how a row gives it
    ("step ms (median)", lambda r: _num(r["median_ms"], 1)),
    ("min", lambda r: _num(r["min_ms"], 1)),
    ("max", lambda r: _num(r["max_ms"], 1)),
    ("/ optax.adafactor", lambda r: _num(r["vs_optax.adafactor"], 2)),
    ("/ optax.adam", lambda r: _num(r["vs_optax.adam"], 2)),
    ("state MB", lambda r: _num(r["state_mb"], 2)),
    ("temp MB", lambda r: _num(r["temp_mb"], 1)),
    ("compile s", lambda r: _compile(r)),
    ("bound ms", lambda r: _num(r["bound_ms"], 1)),
    ("of bound", lambda r: _num(r["bound_fraction"], 2)),
    # benchmarks/run.py --device-time and the physical bound (runs before them lack these)
    ("device ms", lambda r: _num(r.get("device_ms"), 2)),
    ("kernels", lambda r: _num(r.get("kernels"), 0)),
    ("phys bound ms", lambda r: _num(r.get("phys_bound_ms"), 1)),
    ("of phys bound", lambda r: _num(r.get("phys_bound_fraction"), 2)),
]


def _num(x: float, digits: int) -> str:
  return "n/a" if x is None or math.isnan(x) else f"{x:,.{digits}f}"


def _compile(r: dict) -> str:
  """The compile seconds; with several compiles (``--compile-reps``), the median and the range."""
  times = r.get("compile_times_s") or []
  if not times and not r["compile_s"]:
    return "n/a"  # eager (PyTorch): nothing compiled
  if len(times) > 1:
    return f"{r['compile_s']:.1f} ({min(times):.1f}-{max(times):.1f})"
  return f"{r['compile_s']:.1f}"


def table(results: list) -> str:
  """A markdown table of one JSON's trees and optimizers; a column with no figure in any row (no
  optax.adafactor in the run) is left out."""
  rows = [(res, name, r) for res in results for name, r in res["rows"].items()]
  cells = [[fmt(r) for _, fmt in COLUMNS] for _, _, r in rows]
  keep = [j for j in range(len(COLUMNS)) if any(c[j] != "n/a" for c in cells)]
  out = ["| tree | optimizer | " + " | ".join(COLUMNS[j][0] for j in keep) + " |",
         "|---|---|" + "---:|" * len(keep)]
  for (res, name, _), c in zip(rows, cells):
    tree = f"{res['tree']} ({res['param_mb']:.0f} MB)"
    out.append(f"| {tree} | `{name}` | " + " | ".join(c[j] for j in keep) + " |")
  return "\n".join(out)


def machine(results: list) -> str:
  where = list(dict.fromkeys(res.get("machine") or UNRECORDED_MACHINE for res in results))
  line = "Machine: " + "; ".join(where) + "."
  copy = [res["copy_gb_s"] for res in results if "copy_gb_s" in res]
  if copy:  # the physical bound's bandwidth, measured once per tree
    kinds = ", ".join(f"{k} {min(c[k] for c in copy):.1f}-{max(c[k] for c in copy):.1f} GB/s"
                      for k in copy[0] if k != "bandwidth")
    line += f" Copy bandwidth (read + write) over the trees' runs: {kinds}."
  return line


def keras_fit_table(result: dict) -> str:
  """The table of ``benchmarks/keras_fit.py``'s JSON: ``model.fit`` step time and optimizer
  bytes, with ratios to keras.optimizers.Adafactor."""
  rows = result["rows"]
  ref = rows.get("keras.optimizers.Adafactor")
  out = ["| optimizer | step ms (median) | min | max | / Keras Adafactor | optimizer bytes | "
         "state of the matrices, bytes | / Keras Adafactor |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for name, r in rows.items():
    ratio = r["step_ms"] / ref["step_ms"] if ref else float("nan")
    mratio = r["matrix_state_bytes"] / ref["matrix_state_bytes"] if ref else float("nan")
    out.append(f"| `{name}` | {_num(r['step_ms'], 1)} | {_num(r['min_ms'], 1)} | "
               f"{_num(r['max_ms'], 1)} | {_num(ratio, 2)} | {r['optimizer_bytes']:,} | "
               f"{r['matrix_state_bytes']:,} | {_num(mratio, 4)} |")
  return "\n".join(out)


def section(name: str, docs: pathlib.Path = DOCS) -> str:
  """What the page holds between ``<!-- table: name -->`` and ``<!-- end table -->``."""
  results = json.loads((docs / name).read_text())
  if isinstance(results, dict) and results.get("kind") == "keras_fit":
    return (f"Machine: {results['machine']}; {results['params']:,} parameters, "
            f"{results['rounds']} rounds of {results['steps']} steps.\n\n"
            f"{keras_fit_table(results)}\n\n")
  return f"{machine(results)}\n\n{table(results)}\n\n"


def render(page: str, docs: pathlib.Path = DOCS) -> str:
  """The page with every marked section regenerated from its JSON."""
  return SECTION.sub(lambda m: m.group(1) + section(m.group("name"), docs) + m.group(4), page)


def used(page: str) -> list[str]:
  """The JSON files the page's markers name."""
  return [m.group("name") for m in SECTION.finditer(page)]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--check", action="store_true",
                  help="change nothing; exit 1 if the page differs from what the JSON gives")
  args = ap.parse_args(argv)
  page = PAGE.read_text()
  new = render(page)
  if args.check:
    if new != page:
      print(f"{PAGE} is stale: run python docs/gen_performance.py", file=sys.stderr)
      return 1
    return 0
  if new != page:
    PAGE.write_text(new)
    print(f"rewrote {PAGE}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
