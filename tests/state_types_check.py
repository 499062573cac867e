"""Run in a subprocess with 8 fake CPU devices (see test_sharding.py): the state-type contract on
meshes. For every option of the contract (presets.OPTIONS), params sharded on a (2, 4) mesh of
Explicit axes (`jax.make_mesh`'s default) and of Auto axes, under `jax.set_mesh`: the
`jax.typeof` of every state leaf (shape, dtype, weak type, sharding) is the same after an eager
`init`, a jitted `init`, an eager `update` (Explicit axes: on Auto axes the types carry no
sharding, and test_contract.py checks eager updates on one device) and a jitted `update`. Prints one JSON line: the
options checked and the differences found."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import xla_env  # noqa: E402

xla_env.simulate_cpu_devices(8)

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from presets import OPTIONS  # noqa: E402

# w and t3 are factored (min_dim_size_to_factor=8), with a sharded dim averaged away in one
# statistic and kept in the other; "one" and "b" are unfactored.
SPECS = {"w": ((16, 12), P("data", "model")), "t3": ((4, 16, 8), P(None, "data", "model")),
         "b": ((12,), P("model")), "one": ((2, 8), P("data", "model")), "s": ((), P())}


def types(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return jax.tree.structure(tree), [(jax.tree_util.keystr(p), jax.typeof(x)) for p, x in flat]


def differences(name, kind, got, expected):
  if got[0] != expected[0]:
    return [f"{name}/{kind}: tree {got[0]} vs {expected[0]}"]
  return [f"{name}/{kind}: {path}: {a} vs {b}"
          for (path, a), (_, b) in zip(got[1], expected[1]) if a != b]


def main():
  rng = np.random.default_rng(0)
  values = {k: rng.normal(size=shape) for k, (shape, _) in SPECS.items()}
  grads = {k: rng.normal(size=shape) for k, (shape, _) in SPECS.items()}
  failures, checked = [], []
  for axis_type in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
    shardings = {k: NamedSharding(mesh, spec) for k, (_, spec) in SPECS.items()}
    with jax.set_mesh(mesh):
      params = jax.device_put({k: jnp.asarray(v, jnp.float32) for k, v in values.items()},
                              shardings)
      g = jax.device_put({k: jnp.asarray(v, jnp.float32) for k, v in grads.items()}, shardings)
      for name in sorted(OPTIONS):
        tx = OPTIONS[name](0.01)
        try:
          state = tx.init(params)
          expected = types(state)
          failures += differences(name, f"{axis_type.name}/jit init",
                                  types(jax.jit(tx.init)(params)), expected)
          if axis_type == jax.sharding.AxisType.Explicit:  # (Auto: no sharding in the types)
            failures += differences(name, f"{axis_type.name}/update",
                                    types(tx.update(g, state, params)[1]), expected)
          failures += differences(name, f"{axis_type.name}/jit update",
                                  types(jax.jit(tx.update)(g, state, params)[1]), expected)
        except Exception as e:  # noqa: BLE001 - reported, the run goes on
          failures.append(f"{name}/{axis_type.name}: {type(e).__name__}: {str(e)[:300]}")
        checked.append(f"{name}/{axis_type.name}")
  print(json.dumps({"checked": checked, "failures": failures}))


if __name__ == "__main__":
  main()
