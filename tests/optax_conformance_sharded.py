"""Run in a subprocess with 8 fake CPU devices (see test_optax_conformance.py): optax's shipped
``sharding_test`` and ``transform_test`` cases of our optimizers. Both modules bind the
optimizers when they are imported, so optax's functions are replaced by ours first
(`optax_conformance.PATCHES`). Prints one JSON line: case -> "ok", or what went wrong."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import xla_env  # noqa: E402

xla_env.simulate_cpu_devices(8)

import json  # noqa: E402
import types  # noqa: E402
import unittest  # noqa: E402

import jax  # noqa: E402
import optax_conformance as conf  # noqa: E402

conf.patch_all(setattr)

from optax._src import sharding_test  # noqa: E402
from optax._src import transform_test  # noqa: E402


def _release(version: str) -> tuple[int, ...]:
  return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


# optax 0.2.8 skips its sharding-in-types tests when ``jax.__version__ < '0.7.2'``, a comparison
# of strings that is true for jax 0.10 (and 0.8.10, ...). For a jax that is really 0.7.2 or newer
# the test module sees a jax whose version string compares as such; for an older one the tests
# skip, as optax means them to.
if _release(jax.__version__) >= (0, 7, 2):

  class _Jax(types.ModuleType):
    __version__ = "0.99.0"

    def __getattr__(self, name):
      return getattr(jax, name)

  sharding_test.jax = _Jax("jax")

CASES = [(sharding_test.ShardingTest, name) for name in dir(sharding_test.ShardingTest)
         if name.startswith("test") and name.rsplit("_", 1)[-1] in ("adadelta", "adafactor",
                                                                  "adafactor2")]
CASES += [(transform_test.TransformTest, name) for name in
          ("test_scalers_adadelta", "test_scalers_param_block_rms")]


def main() -> None:
  results = {}
  for cls, name in CASES:
    result = unittest.TestResult()
    cls(name).run(result)
    problems = ([f"FAIL {tb[-1500:]}" for _, tb in result.failures + result.errors]
                + [f"skipped: {why}" for _, why in result.skipped])
    results[f"{cls.__name__}.{name}"] = problems[0] if problems else "ok"
    if problems:
      print(f"{cls.__name__}.{name}: {problems[0]}", file=sys.stderr)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
