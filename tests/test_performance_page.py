"""docs/performance.md is what docs/gen_performance.py makes of the committed benchmark JSON, every
JSON in docs/ has its table there, and ``benchmarks/run.py --from-json`` renders one."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import sys

import pytest

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def load(path: pathlib.Path, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def gen():
  return load(DOCS / "gen_performance.py", "docs_gen_performance")


def test_page_is_generated_from_the_json(gen):
  page = (DOCS / "performance.md").read_text()
  assert page == gen.render(page), "docs/performance.md is stale: python docs/gen_performance.py"
  assert gen.main(["--check"]) == 0


def test_every_json_has_one_table(gen):
  names = gen.used((DOCS / "performance.md").read_text())
  assert len(names) == len(set(names)), "a JSON has two tables"
  assert sorted(names) == sorted(p.name for p in DOCS.glob("*.json"))


def test_a_changed_json_makes_the_page_stale(gen, tmp_path):
  """The check has teeth: a changed figure or machine shows in the generated page."""
  page = (DOCS / "performance.md").read_text()
  for p in DOCS.glob("*.json"):
    (tmp_path / p.name).write_text(p.read_text())
  results = json.loads((tmp_path / "benchmark.json").read_text())
  results[0]["rows"]["optax.adam"]["median_ms"] = 12345.0
  results[0]["machine"] = "a different machine"
  (tmp_path / "benchmark.json").write_text(json.dumps(results))
  new = gen.render(page, tmp_path)
  assert new != page and "12,345.0" in new and "Machine: a different machine" in new


def test_table_format(gen):
  results = [{"tree": "t", "param_mb": 1.0, "machine": "m", "rows": {
      "optax.adam": {"median_ms": 2.0, "min_ms": 1.0, "max_ms": 3.0,
                     "vs_optax.adafactor": float("nan"), "vs_optax.adam": 1.0, "state_mb": 2.0,
                     "temp_mb": 0.0, "compile_s": 1.5,
                     "compile_times_s": [1.0, 1.5, 2.0], "bound_ms": 1.0, "bound_fraction": 0.5},
      "torch.optim.Adafactor": {"median_ms": 4.0, "min_ms": 3.0, "max_ms": 5.0,
                                "vs_optax.adafactor": float("nan"), "vs_optax.adam": 2.0,
                                "state_mb": 0.01, "temp_mb": float("nan"), "compile_s": 0.0,
                                "compile_times_s": [], "bound_ms": 1.0, "bound_fraction": 0.25}}}]
  lines = gen.table(results).splitlines()
  assert "/ optax.adafactor" not in lines[0]  # no figure in any row: left out
  assert lines[2] == ("| t (1 MB) | `optax.adam` | 2.0 | 1.0 | 3.0 | 1.00 | 2.00 | 0.0 | "
                      "1.5 (1.0-2.0) | 1.0 | 0.50 |")
  assert "| 0.01 | n/a | n/a |" in lines[3]
  assert gen.machine(results) == "Machine: m."
  assert gen.machine([{"rows": {}}]).startswith("Machine: not recorded in the JSON")


def test_table_with_device_time_and_physical_bound(gen):
  """``run.py --device-time``'s columns, and the copy bandwidth on the machine line."""
  row = {"median_ms": 5.0, "min_ms": 4.0, "max_ms": 6.0, "vs_optax.adafactor": float("nan"),
         "vs_optax.adam": 1.0, "state_mb": 2.0, "temp_mb": 0.0, "compile_s": 1.0,
         "compile_times_s": [1.0], "bound_ms": 1.0, "bound_fraction": 0.2, "device_ms": 4.25,
         "kernels": 849.0, "phys_bound_ms": 1.02, "phys_bound_fraction": 0.24}
  results = [{"tree": "t", "param_mb": 1.0, "machine": "m", "rows": {"optax.adam": row},
              "copy_gb_s": {"xla": 3000.0, "bandwidth": 3000.0}},
             {"tree": "u", "param_mb": 1.0, "machine": "m", "rows": {"optax.adam": row},
              "copy_gb_s": {"xla": 2900.0, "bandwidth": 2900.0}}]
  lines = gen.table(results).splitlines()
  assert lines[0].endswith("| device ms | kernels | phys bound ms | of phys bound |")
  assert lines[2].endswith("| 4.25 | 849 | 1.0 | 0.24 |")
  assert gen.machine(results) == ("Machine: m. Copy bandwidth (read + write) over the trees' "
                                  "runs: xla 2900.0-3000.0 GB/s.")


def test_images_and_links_resolve():
  """The pages' images exist, both plots are shown, and relative links name existing pages."""
  pages = [DOCS / "performance.md", DOCS / "design" / "performance-history.md"]
  shown = set()
  for page in pages:
    text = page.read_text()
    assert "```python" not in text  # commands are ```bash (python blocks are executed)
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
      if not target.startswith(("http://", "https://")):
        assert (page.parent / target).exists(), f"{page.name}: {target}"
        shown.add((page.parent / target).resolve())
  assert {p.resolve() for p in DOCS.glob("*.png")} <= shown


def test_run_renders_a_json_without_running(tmp_path, capsys):
  run = load(ROOT / "benchmarks" / "run.py", "benchmarks_run_from_json")
  results = run.main(["--from-json", str(DOCS / "benchmark_gpu_h100_small.json")])
  out = capsys.readouterr().out
  assert out.splitlines()[0] == results[0]["machine"]
  assert "| small (17 MB) | adafactor_jax.adafactor | 60.4 |" in out


@pytest.mark.references  # matplotlib: not in the core (a runtime-only environment)
def test_run_plots_a_json_without_running(tmp_path):
  run = load(ROOT / "benchmarks" / "run.py", "benchmarks_run_plot_from_json")
  png = tmp_path / "p.png"
  run.main(["--from-json", str(DOCS / "benchmark.json"), "--plot", str(png)])
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
