"""Step time, memory and compile time of Adafactor implementations, side by side.

    python benchmarks/run.py                      # BERT-base and ViT-B/16 (about 2 minutes)
    python benchmarks/run.py --trees bert vit small --json out.json   # + 2,000 leaves (~10 min)

For each parameter tree (BERT-base, ViT-B/16, 2,000 small leaves) and optimizer (this library's
presets, optax.adafactor, optax.adam) it compiles one jitted train step (update +
optax.apply_updates, params and state donated) and reports: step time (median, min, max over
interleaved repetitions: every optimizer runs once per round), ratios to optax.adafactor and
optax.adam, optimizer-state MB, compiled temporary MB
(``memory_analysis().temp_size_in_bytes``), compile seconds, and a streaming bound: two passes
of sum-of-squares over the gradients plus one axpy over params and gradients, timed with plain
jitted functions of the same size, and the fraction of that bound the step achieves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from state_memory import bert_base_shapes  # noqa: E402

import adafactor_jax  # noqa: E402


def vit_b16_shapes() -> dict:
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  d, ff, heads = 768, 3072, 12
  layer = lambda: {
      "ln1": {"scale": s(d), "bias": s(d)}, "ln2": {"scale": s(d), "bias": s(d)},
      "qkv": {"kernel": s(d, 3, heads, 64), "bias": s(3, heads, 64)},
      "out": {"kernel": s(heads, 64, d), "bias": s(d)},
      "mlp1": {"kernel": s(d, ff), "bias": s(ff)}, "mlp2": {"kernel": s(ff, d), "bias": s(d)}}
  return {"patch": {"kernel": s(16, 16, 3, d), "bias": s(d)}, "cls": s(1, 1, d),
          "pos": s(1, 197, d), "layers": {f"layer_{i}": layer() for i in range(12)},
          "ln": {"scale": s(d), "bias": s(d)}, "head": {"kernel": s(d, 1000), "bias": s(1000)}}


def small_leaves_shapes() -> dict:
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  return {f"m{i:04d}": s(64, 64) for i in range(1000)} | {f"v{i:04d}": s(64) for i in range(1000)}


TREES = {"bert": bert_base_shapes, "vit": vit_b16_shapes, "small": small_leaves_shapes}
OPTIMIZERS = {
    "adafactor_jax.adafactor": lambda: adafactor_jax.adafactor(1e-3),
    "adafactor_jax.keras_adafactor": lambda: adafactor_jax.keras_adafactor(1e-3),
    "adafactor_jax.torch_adafactor": lambda: adafactor_jax.torch_adafactor(1e-2),
    "optax.adafactor": lambda: optax.adafactor(1e-3),
    "optax.adam": lambda: optax.adam(1e-3),
}


def materialise(shapes, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32) * 0.02),
                      shapes)


def timed(fn, *args):
  t0 = time.perf_counter()
  out = fn(*args)
  jax.block_until_ready(out)
  return time.perf_counter() - t0, out


def bench_tree(name, shapes, names, reps):
  params = materialise(shapes, 0)
  grads = materialise(shapes, 1)
  n_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  rows, steps, states = {}, {}, {}
  for opt in names:
    tx = OPTIMIZERS[opt]()

    def step(p, s, g, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    state = tx.init(params)
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    rows[opt] = {"compile_s": compile_s,
                 "temp_mb": (mem.temp_size_in_bytes if mem is not None else float("nan")) / 1e6,
                 "state_mb": sum(x.nbytes for x in jax.tree.leaves(state)) / 1e6, "times": []}
    steps[opt] = compiled
    states[opt] = (jax.tree.map(jnp.copy, params), state)
  # the streaming bound, timed like the steps
  sumsq = jax.jit(lambda g: sum(jnp.sum(x * x) for x in jax.tree.leaves(g)))
  axpy = jax.jit(lambda p, g: jax.tree.map(lambda a, b: a - 1e-3 * b, p, g), donate_argnums=0)
  bound_p = jax.tree.map(jnp.copy, params)
  sumsq(grads).block_until_ready()
  bound_p = axpy(bound_p, grads)
  bounds = []
  for _ in range(reps):  # interleaved rounds: every optimizer once per round
    for opt in names:
      p, s = states[opt]
      dt, (p, s) = timed(steps[opt], p, s, grads)
      states[opt] = (p, s)
      rows[opt]["times"].append(dt)
    t1, _ = timed(sumsq, grads)
    t2, bound_p = timed(axpy, bound_p, grads)
    bounds.append(2 * t1 + t2)
  bound = statistics.median(bounds)
  for opt, r in rows.items():
    r["median_ms"] = 1e3 * statistics.median(r["times"])
    r["min_ms"], r["max_ms"] = 1e3 * min(r["times"]), 1e3 * max(r["times"])
    r["bound_ms"] = 1e3 * bound
    r["bound_fraction"] = r["bound_ms"] / r["median_ms"]
  for opt, r in rows.items():
    for ref in ("optax.adafactor", "optax.adam"):
      r[f"vs_{ref}"] = r["median_ms"] / rows[ref]["median_ms"] if ref in rows else float("nan")
    del r["times"]
  return {"tree": name, "param_mb": n_bytes / 1e6, "rows": rows}


def markdown(results) -> str:
  out = ["| tree | optimizer | step ms (median) | min | max | / optax.adafactor | / optax.adam "
         "| state MB | temp MB | compile s | bound ms | of bound |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for res in results:
    for opt, r in res["rows"].items():
      out.append(
          f"| {res['tree']} ({res['param_mb']:.0f} MB) | {opt} | {r['median_ms']:.1f} | "
          f"{r['min_ms']:.1f} | {r['max_ms']:.1f} | {r['vs_optax.adafactor']:.2f} | "
          f"{r['vs_optax.adam']:.2f} | {r['state_mb']:.2f} | {r['temp_mb']:.1f} | "
          f"{r['compile_s']:.1f} | {r['bound_ms']:.1f} | {r['bound_fraction']:.2f} |")
  return "\n".join(out)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  # The 2,000-leaf tree is opt-in: compiling optax.adafactor's step for it alone takes about
  # 2 minutes on 2 cores (the whole run about 10), over this command's 5-minute budget.
  ap.add_argument("--trees", nargs="*", default=["bert", "vit"], choices=list(TREES))
  ap.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--json", default="")
  args = ap.parse_args(argv)
  print(f"jax {jax.__version__}, optax {optax.__version__}, {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}", flush=True)
  results = []
  for tree in args.trees:
    t0 = time.perf_counter()
    results.append(bench_tree(tree, TREES[tree](), args.optimizers, args.reps))
    print(f"{tree}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
  print(markdown(results))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
