"""Run in a subprocess with 8 fake CPU devices (see test_sharding.py): sharded training of every
preset on a (2, 4) mesh equals the single-device run, state shardings are kept from step to step,
and the compiled step gathers no whole parameter. Prints one JSON line of results."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import xla_env  # noqa: E402

xla_env.simulate_cpu_devices(8)

import contextlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from presets import PRESETS  # noqa: E402

import adafactor_jax as af  # noqa: E402

STEPS = int(os.environ.get("SHARDED_STEPS", "20"))
# "big" is above engine.MIN_SIZE_APART: its opaque zero is read from its own (sharded) gradient
SHAPES = {"kernel": (64, 128), "wide": (32, 256), "t3": (8, 16, 32), "bias": (128,), "s": (),
          "big": (256, 512)}
LAYOUTS = {
    "both": {"kernel": P("data", "model"), "wide": P("data", "model"),
             "t3": P("data", None, "model"), "bias": P("model"), "s": P(),
             "big": P("data", "model")},
    "one": {"kernel": P(None, "model"), "wide": P("model", None), "t3": P(None, "model", None),
            "bias": P(), "s": P(), "big": P(None, "model")},
    "replicated": {k: P() for k in SHAPES},
}
# every preset runs on the (2, 4) mesh sharded over both axes; these also over one axis and
# replicated (the suite's time budget)
FULL_LAYOUTS = ("adafactor", "keras_adafactor")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")


def make_params():
  rng = np.random.default_rng(0)
  return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}


def grads_at(i):
  rng = np.random.default_rng(100 + i)
  return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}


def collective_stats(hlo: str, param_sizes: set[int]):
  """(bytes moved by collectives per step, list of all-gathers as big as a parameter)."""
  total, bad = 0, []
  for line in hlo.splitlines():
    m = re.search(r"=\s*(\(?[^=]*?\)?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
    if not m:
      continue
    shapes = re.findall(r"(f32|bf16|f16|s32|u32|pred|f64)\[([\d,]*)\]", m.group(1))
    nbytes = 0
    for dt, dims in shapes:
      n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
      nbytes += n * {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "f64": 8}[dt]
      if m.group(2) == "all-gather" and n in param_sizes:
        bad.append(line.strip()[:200])
    total += nbytes
  return total, bad


def spec_of(s, ndim):
  return tuple(s.spec) + (None,) * (ndim - len(s.spec))


def run_layout(name, tx, ref, mesh, layout, specs, sizes, results):
  """Trains `tx` sharded by `specs` on `mesh` and checks it against `ref` (one device)."""
  pshard = {k: NamedSharding(mesh, specs[k]) for k in SHAPES}
  p = jax.device_put(make_params(), pshard)
  sshard = af.state_shardings(tx, p)
  state = jax.jit(tx.init, out_shardings=sshard)(p)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  jstep = jax.jit(step, in_shardings=(pshard, sshard, pshard),
                  out_shardings=(pshard, sshard), donate_argnums=(0, 1))
  hlo = jstep.lower(p, state, jax.device_put(grads_at(0), pshard)).compile().as_text()
  nbytes, bad = collective_stats(hlo, sizes)
  for i in range(STEPS):
    p, state = jstep(p, state, jax.device_put(grads_at(i), pshard))
    if i == 2:  # shardings kept from step to step
      got = jax.tree.map(lambda x: x.sharding, state)
      ok = jax.tree.all(jax.tree.map(
          lambda a, b: spec_of(a, len(getattr(a, "spec", ()))) == spec_of(b, len(a.spec)),
          got, sshard))
      if not ok or jax.tree.structure(got) != jax.tree.structure(sshard):
        results["failures"].append(f"{name}/{layout}: state shardings changed")
  # a statistic is never replicated where its parameter dim is sharded
  for leaf in jax.tree.leaves(state):
    if (leaf.ndim and layout in ("both", "explicit") and leaf.sharding.spec == P()
        and leaf.size > 8):
      results["failures"].append(f"{name}/{layout}: replicated state leaf {leaf.shape}")
  # scale-aware difference: max|a-b| / max|b| per leaf
  err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) /
                  max(float(np.max(np.abs(np.asarray(b)))), 1e-30))
            for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(ref)))
  # bf16 state (momentum): a one-ulp f32 difference from another reduction order or fusion
  # can round a bf16 entry the other way (2**-8 relative); over 20 steps that moves a param
  # by up to ~20 * 2**-8 * lr * scale, so those presets get 1e-3 of a leaf's scale (measured:
  # 2.3e-4, the same on one device with another compilation). f32 presets: rtol 1e-6.
  bf16_state = any(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state))
  close = (lambda a, b: bool(np.allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                                         atol=1e-6 * max(1.0, float(np.max(np.abs(b)))))))
  if bf16_state:
    ok = err < 1e-3
  else:
    ok = jax.tree.all(jax.tree.map(close, p, ref))
  if not ok:
    results["failures"].append(f"{name}/{layout}: params differ from one device ({err:.2e})")
  if bad:
    results["failures"].append(f"{name}/{layout}: all-gather of a whole parameter: {bad[0]}")
  results["presets"][f"{name}/{layout}"] = {"collective_bytes": nbytes, "max_rel_err": err}


def main():
  mesh = jax.make_mesh((2, 4), ("data", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  explicit_mesh = jax.make_mesh((2, 4), ("data", "model"),
                                axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  params = make_params()
  sizes = {int(np.prod(s)) for s in SHAPES.values() if len(s) >= 1 and np.prod(s) > 8}
  results = {"presets": {}, "failures": []}
  names = sorted(PRESETS) if len(sys.argv) < 2 else sys.argv[1:]
  for name in names:
    tx = PRESETS[name](1e-2)

    # the single-device reference
    ref, state = params, tx.init(params)
    step1 = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
        *tx.update(g, s, p)))
    for i in range(STEPS):
      ref, state = step1(ref, state, grads_at(i))

    # "explicit": the "both" layout on a mesh of Explicit axes (jax.make_mesh's default), the
    # step traced under jax.set_mesh
    layouts = (LAYOUTS if name in FULL_LAYOUTS else {"both": LAYOUTS["both"]}) | {
        "explicit": LAYOUTS["both"]}
    for layout, specs in layouts.items():
      explicit = layout == "explicit"
      with jax.set_mesh(explicit_mesh) if explicit else contextlib.nullcontext():
        run_layout(name, tx, ref, explicit_mesh if explicit else mesh, layout, specs,
                   sizes, results)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
