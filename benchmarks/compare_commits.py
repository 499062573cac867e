"""A refactor changes nothing: the package at a base commit and the working tree, side by side.

    python benchmarks/compare_commits.py BASE                  # numbers, kernels, temporaries
    python benchmarks/compare_commits.py BASE --bench bert vit # and interleaved step times

The base commit's ``adafactor_jax`` is extracted with ``git archive`` into a temporary folder as
a package named ``adafactor_jax_base`` (its imports renamed), so that both run in this one
process, on the same inputs. For every preset and option of the contract suite
(``tests/presets.py``: ``OPTIONS``) and every building block alone, in float32, bfloat16 and
float16, it runs three jitted steps (update + ``optax.apply_updates``, params and state donated)
and one eager step, and compares the raw bytes of every update, param and state leaf; and it
compares the compiled steps: kernels (instructions of the compiled entry computation, not
counting parameters, tuples, constants and bitcasts) and temporary bytes
(``memory_analysis().temp_size_in_bytes``). With ``--bench``, benchmarks/run.py's trees are timed
for both packages' presets in interleaved rounds, and the ratios printed.

Exits with 1 when any byte, kernel count or temporary differs for the worse.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
STEPS = 3


def extract_base(rev: str, where: str) -> str:
  """The package at `rev` as ``adafactor_jax_base`` under `where`; returns the commit."""
  commit = subprocess.run(["git", "-C", ROOT, "rev-parse", rev], check=True, capture_output=True,
                          text=True).stdout.strip()
  archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "adafactor_jax"], check=True,
                           capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", where], input=archive, check=True)
  os.rename(os.path.join(where, "adafactor_jax"), os.path.join(where, "adafactor_jax_base"))
  for folder, _, files in os.walk(os.path.join(where, "adafactor_jax_base")):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(folder, f)
        with open(path) as fh:
          src = fh.read()
        with open(path, "w") as fh:
          fh.write(re.sub(r"\badafactor_jax\b", "adafactor_jax_base", src))
  return commit


def presets_of(af) -> dict:
  """tests/presets.py's OPTIONS, built from the package `af`."""
  with open(os.path.join(ROOT, "tests", "presets.py")) as fh:
    src = fh.read().replace("import adafactor_jax as af", "")
  namespace = {"af": af}
  exec(compile(src, "tests/presets.py", "exec"), namespace)  # noqa: S102 - our own test file
  return namespace["OPTIONS"]


def blocks_of(af) -> dict:
  """Every building block alone, and blocks in optax.chain (each block computes its own
  output) and in the package's chain."""
  # Renamed in issue 26: the public clip_by_global_norm was Keras's (now
  # clip_by_global_norm_nan_on_nonfinite); optax's was the private clip_by_global_norm_fused.
  renamed = not hasattr(af, "clip_by_global_norm_nan_on_nonfinite")
  keras_clip = af.clip_by_global_norm if renamed else af.clip_by_global_norm_nan_on_nonfinite
  optax_clip = (importlib.import_module(af.__name__ + "._src.blocks").clip_by_global_norm_fused
                if renamed else af.clip_by_global_norm)
  core = lambda: [af.scale_by_factored_rms(min_dim_size_to_factor=8), af.clip_by_block_rms(1.0),
                  af.scale_by_param_block_rms(), af.scale_by_learning_rate(0.1)]
  return {
      "block:scale_by_factored_rms": lambda lr: af.scale_by_factored_rms(min_dim_size_to_factor=8),
      "block:scale_by_factored_rms_clamp_last": lambda lr: af.scale_by_factored_rms(
          min_dim_size_to_factor=8, epsilon=None, epsilon_mode="clamp", factor_rule="last"),
      "block:clip_by_block_rms": lambda lr: af.clip_by_block_rms(0.5),
      "block:scale_by_param_block_rms": lambda lr: af.scale_by_param_block_rms(max_scale=1.0),
      "block:scale_by_learning_rate": lambda lr: af.scale_by_learning_rate(lr),
      "block:scale_by_momentum": lambda lr: af.scale_by_momentum(0.9),
      "block:add_decayed_weights": lambda lr: af.add_decayed_weights(
          1e-3, af.mask_by_path(exclude="bias"), param_scale_min=1e-3),
      "block:scale_by_adadelta": lambda lr: af.scale_by_adadelta(),
      "block:clip_by_leaf_norm": lambda lr: af.clip_by_leaf_norm(1.0),
      "block:clip_by_value": lambda lr: af.clip_by_value(0.5),
      "block:clip_by_global_norm": lambda lr: optax_clip(1.0),
      "block:clip_by_global_norm_nan_on_nonfinite": lambda lr: keras_clip(1.0),
      "block:static_loss_scale": lambda lr: af.static_loss_scale(8.0),
      "block:with_decoupled_weight_decay": lambda lr: af.with_decoupled_weight_decay(
          af.chain(*core()), 1e-3, lr),
      "block:accumulate_gradients": lambda lr: af.accumulate_gradients(af.chain(*core()), 2),
      "block:ema_params": lambda lr: optax.chain(af.scale_by_learning_rate(lr),
                                                 af.ema_params(0.9, 2)),
      "optax.chain(blocks)": lambda lr: optax.chain(*core()),
      "chain(blocks)": lambda lr: af.chain(*core()),
      "chain(keras features)": lambda lr: af.chain(
          af.static_loss_scale(4.0), af.clip_by_value(2.0), af.clip_by_leaf_norm(1.0),
          keras_clip(1.0), *core()),
      "chain(optax global norm)": lambda lr: af.chain(optax_clip(1.0), *core()),
  }


def tree(dtype) -> dict:
  """The contract suite's mixed tree and one leaf large enough to be reduced in two chunks in
  half precision (over 2**21 elements)."""
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import helpers  # noqa: PLC0415
  params = helpers.mixed_tree(0, dtype)
  params["huge"] = jnp.asarray(np.random.default_rng(3).normal(size=(520, 4100)), dtype)
  return params


def grads_for(params, step: int, name: str, scale: float):
  rng = np.random.default_rng(100 + step)
  g = jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), p.dtype), params)
  if "skip" in name and step == 1:  # a bad step, skipped
    g["bias"] = g["bias"].at[0].set(jnp.inf)
  return g


def kernels(compiled) -> int:
  text = compiled.as_text()
  entry = text[text.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  trivial = ("parameter", "tuple", "get-tuple-element", "constant", "bitcast")
  count = 0
  for line in entry.splitlines()[1:]:
    m = re.search(r"=\s*\S+(?:\[[^\]]*\])?(?:\{[^}]*\})?\s+([a-z\-]+)\(", line)
    if m and m.group(1) not in trivial:
      count += 1
  return count


def run_case(make, params, name: str, scale: float) -> dict:
  tx = make(0.01)
  out = {}

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, u

  state = tx.init(params)
  g0 = grads_for(params, 0, name, scale)
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, g0).compile()
  mem = compiled.memory_analysis()
  out["kernels"] = kernels(compiled)
  out["temp_bytes"] = mem.temp_size_in_bytes if mem is not None else -1
  p, s = jax.tree.map(jnp.copy, params), state
  raw = lambda tree: [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]
  out["bytes"] = []
  for i in range(STEPS):  # (read before the next step: it takes the params and state donated)
    p, s, u = compiled(p, s, grads_for(params, i, name, scale))
    out["bytes"] += raw((p, s, u))
  if params["bias"].dtype == jnp.float32:  # one eager step
    out["bytes"] += raw(step(params, tx.init(params), g0))
  return out


def compare(base, new, dtypes) -> tuple[list, bool]:
  rows, ok = [], True
  cases = {**presets_of(new), **blocks_of(new)}
  base_cases = {**presets_of(base), **blocks_of(base)}
  extra = {"keras_adadelta_full+overflowing_norm": 1e20}  # the global norm's rescaled branch
  for dname in dtypes:
    params = tree(DTYPES[dname])
    names = list(cases) + list(extra)
    for name in names:
      scale = extra.get(name, 1.0)
      key = name.split("+overflowing")[0]
      if (dname != "float32" and name in extra) or key not in cases:
        continue
      a = run_case(base_cases[key], params, name, scale)
      b = run_case(cases[key], params, name, scale)
      same = len(a["bytes"]) == len(b["bytes"]) and all(
          x == y for x, y in zip(a["bytes"], b["bytes"]))
      worse = b["kernels"] > a["kernels"] or b["temp_bytes"] > a["temp_bytes"]
      ok = ok and same and not worse
      rows.append((name, dname, len(a["bytes"]), same, a["kernels"], b["kernels"],
                   a["temp_bytes"], b["temp_bytes"]))
      print(f"{name:48s} {dname:9s} leaves {len(a['bytes']):4d} "
            f"{'equal' if same else 'DIFFERENT'}  kernels {a['kernels']:4d} -> {b['kernels']:4d}"
            f"  temp {a['temp_bytes']:>10,d} -> {b['temp_bytes']:>10,d}", flush=True)
  return rows, ok


def bench(trees, reps) -> None:
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import run  # noqa: PLC0415
  base = importlib.import_module("adafactor_jax_base")
  added = {}
  for opt, make in list(run.OPTIMIZERS.items()):
    if opt.startswith("adafactor_jax."):
      fn = opt.removeprefix("adafactor_jax.")
      lr = 1e-2 if "torch" in fn else 1e-3
      added["adafactor_jax_base." + fn] = lambda fn=fn, lr=lr: getattr(base, fn)(lr)
  run.OPTIMIZERS.update(added)
  names = [n for n in run.OPTIMIZERS if n.startswith("adafactor_jax")]
  for t in trees:
    res = run.bench_tree(t, run.TREES[t](), names, reps)
    for n in names:
      if n.startswith("adafactor_jax."):
        b = "adafactor_jax_base." + n.removeprefix("adafactor_jax.")
        new, old = res["rows"][n], res["rows"][b]
        print(f"{t:6s} {n:34s} {new['median_ms']:8.2f} ms  base {old['median_ms']:8.2f} ms  "
              f"ratio {new['median_ms'] / old['median_ms']:.3f}  (min ratio "
              f"{new['min_ms'] / old['min_ms']:.3f})", flush=True)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("base", help="the commit to compare against (e.g. HEAD~3)")
  ap.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=list(DTYPES))
  ap.add_argument("--bench", nargs="*", default=None, help="trees of benchmarks/run.py to time")
  ap.add_argument("--reps", type=int, default=15)
  ap.add_argument("--only", default="", help="a regular expression on the case names")
  args = ap.parse_args(argv)
  with tempfile.TemporaryDirectory() as where:
    commit = extract_base(args.base, where)
    sys.path.insert(0, where)
    sys.path.insert(0, ROOT)
    base = importlib.import_module("adafactor_jax_base")
    new = importlib.import_module("adafactor_jax")
    print(f"base {commit[:10]} ({base.__file__}) against the working tree ({new.__file__}); "
          f"jax {jax.__version__}")
    if args.only:
      global presets_of, blocks_of  # noqa: PLW0603
      pattern = re.compile(args.only)
      keep = lambda f: lambda af: {k: v for k, v in f(af).items() if pattern.search(k)}
      presets_of, blocks_of = keep(presets_of), keep(blocks_of)
    rows, ok = compare(base, new, args.dtypes)
    n_same = sum(r[3] for r in rows)
    print(f"\n{n_same} of {len(rows)} cases equal bit for bit "
          f"({sum(r[2] for r in rows)} arrays); kernels {sum(r[4] for r in rows)} -> "
          f"{sum(r[5] for r in rows)}; temporaries {sum(r[6] for r in rows):,d} -> "
          f"{sum(r[7] for r in rows):,d} bytes")
    if args.bench is not None:
      bench(args.bench or ["bert", "vit"], args.reps)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
