"""Flax (nnx and linen), Haiku and Equinox training loops, the sharded-training and multi-host
examples: each trains for a few steps and lowers the loss. Multi-device parts run in
subprocesses (XLA_FLAGS must be set before jax is imported)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import xla_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load(name):
  spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses (flax.linen modules) look their module up
  spec.loader.exec_module(module)
  return module


def run_script(args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + xla_env.patient_collectives())
  proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc.stdout


def test_flax_nnx_sharded_kernels(tmp_path):
  code = ("import sys, os; os.environ['XLA_FLAGS'] += ' --xla_force_host_platform_device_count=4';"
          f"sys.path.insert(0, {str(EXAMPLES)!r});"
          "import importlib.util as u;"
          f"s = u.spec_from_file_location('ex', {str(EXAMPLES / 'flax_nnx.py')!r});"
          "m = u.module_from_spec(s); s.loader.exec_module(m);"
          "r = m.main(15);"
          "print('RESULT', r['losses'][0], r['losses'][-1], r['optax_error'] is not None)")
  out = run_script(["-c", code])
  line = [ln for ln in out.splitlines() if ln.startswith("RESULT")][-1].split()
  first, last, optax_fails = float(line[1]), float(line[2]), line[3] == "True"
  assert last < 0.5 * first
  # optax.adafactor fails on these kernels (see
  # docs/reference-behaviours.md#sharded-flax-nnx-kernels); when it stops failing, a fix
  # landed upstream: update docs/how-to/sharding.md and this test.
  assert optax_fails


def test_flax_linen_train_state():
  losses = load("flax_linen").main(20)
  assert losses[-1] < 0.5 * losses[0]


def test_haiku():
  losses = load("haiku").main(20)
  assert losses[-1] < 0.5 * losses[0]


def test_equinox():
  losses = load("equinox").main(20)
  assert losses[-1] < 0.5 * losses[0]


def test_sharded_training_example():
  out = run_script([str(EXAMPLES / "sharded_training.py"), "--devices", "8", "--steps", "8",
                    "--d", "64", "--layers", "1"])
  assert "sharded vs" in out


def test_multihost_two_processes_equal_single_process():
  # 2 processes x 4 CPU devices joined over 127.0.0.1 (gloo), a global (2, 4) mesh, 20 steps;
  # the launcher kills its processes on timeout.
  out = run_script([str(EXAMPLES / "multihost.py"), "--steps", "20", "--hidden", "64",
                    "--timeout", "240"], timeout=400)
  assert "(equal)" in out, out


def test_docs_scaling_table_is_computed():
  out = run_script([str(EXAMPLES / "scaling_table.py")])
  readme = (ROOT / "docs" / "how-to" / "sharding.md").read_text()
  rows = [ln for ln in out.splitlines() if ln.startswith("| ") and ln.split("|")[2].strip()[:1]
          .isdigit()]
  assert len(rows) == 5
  for row in rows:
    assert row in readme, row
  ours = int(rows[1].split("|")[2].replace(",", ""))
  t5x = int(rows[2].split("|")[2].replace(",", ""))
  assert ours * 10 < t5x
