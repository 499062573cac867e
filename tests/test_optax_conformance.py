"""optax's own tests of Adafactor, Adadelta and the factored RMS, run against this package.

What runs and how it is patched: `optax_conformance.py`. The cases of ``factorized_test`` and
``alias_test`` run here, each a pytest item, with optax's functions replaced by ours for the
duration of the case only (the parity tests compare against the real optax in the same
process); the sharding and transform cases run in a subprocess (`optax_conformance_sharded.py`).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import optax_conformance as conf
import pytest
from optax._src import alias_test
from optax._src import factorized_test

HERE = pathlib.Path(__file__).resolve().parent


class _Patched:
  """Replaces optax's functions by ours around each test (`optax_conformance.PATCHES`)."""

  def setUp(self):
    super().setUp()
    originals = []

    def patch(module, attr, value):
      originals.append((module, attr, getattr(module, attr)))
      setattr(module, attr, value)

    conf.patch_all(patch)
    self.addCleanup(lambda: [setattr(m, a, v) for m, a, v in reversed(originals)])


def _only_our_cases(cls: type) -> dict:
  """Class attributes hiding every parameterized test of `cls` that is not about our subjects
  (a None attribute is not a test), and every deselected one."""
  hidden = {}
  for name in dir(cls):
    if not name.startswith("test"):
      continue
    params = getattr(getattr(cls, name), "__x_params_repr__", "")
    if not conf.selects(params) or f"{cls.__name__}.{name}" in conf.DESELECTED:
      hidden[name] = None
  return hidden


class TestFactorized(_Patched, factorized_test.FactorizedTest):
  pass


TestAlias = type("TestAlias", (_Patched, alias_test.AliasTest),
                 _only_our_cases(alias_test.AliasTest))


def test_the_alias_cases_are_the_ones_naming_our_optimizers():
  """The selection runs what optax 0.2.8 has for adafactor and adadelta (64 cases), and nothing
  about another optimizer."""
  names = [n for n in dir(TestAlias) if n.startswith("test") and callable(getattr(TestAlias, n))]
  assert len(names) == 64, len(names)
  for name in names:
    params = getattr(TestAlias, name).__x_params_repr__
    assert "'adafactor'" in params or "'adadelta'" in params, params


def test_optax_sharding_and_transform_cases_on_eight_devices():
  """optax's ``sharding_test`` (8 simulated devices) and ``transform_test`` cases of our
  optimizers, in a subprocess that patches optax before importing them."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(HERE / "optax_conformance_sharded.py")], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  print("\n[optax conformance, subprocess]")
  for case, outcome in sorted(results.items()):
    print(f"  {outcome:<5} {case}")
  expected = {f"ShardingTest.{test}_{opt}"
              for test in ("test_init_with_abstract_input", "test_state_sharding_type_init_match_update",
                           "test_state_sharding_type_preserved_with_jit")
              for opt in ("adadelta", "adafactor", "adafactor2")}
  expected |= {"TransformTest.test_scalers_adadelta", "TransformTest.test_scalers_param_block_rms"}
  assert set(results) == expected
  failed = {case: outcome for case, outcome in results.items() if outcome != "ok"}
  assert not failed, failed


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q"]))
