"""Step time, memory and compile time of Adafactor implementations, side by side.

    python benchmarks/run.py                      # BERT-base and ViT-B/16 (about 2 minutes)
    python benchmarks/run.py --trees bert vit small --json out.json --plot out.png
    python benchmarks/run.py --from-json docs/benchmark.json --plot docs/performance.png

For each parameter tree (BERT-base, ViT-B/16, 2,000 small leaves) and optimizer (this library's
presets, optax.adafactor, optax.adam, keras.optimizers.Adafactor and torch.optim.Adafactor where
installed) it compiles one jitted train step (update + optax.apply_updates, params and state
donated; Keras: its jitted ``stateless_apply``, with donation) and reports: step time (median,
min, max over interleaved repetitions: every optimizer runs once per round), ratios to
optax.adafactor and optax.adam, optimizer-state MB, compiled temporary MB
(``memory_analysis().temp_size_in_bytes``), compile seconds (trace, lower and compile with JAX's
caches cleared; with ``--compile-reps N`` the median of N compiles, interleaved across the
optimizers), and a streaming bound: two passes
of sum-of-squares over the gradients plus one axpy over params and gradients, timed with plain
jitted functions of the same size, and the fraction of that bound the step achieves. PyTorch
runs eagerly on the same CPU threads (no compile time or temporaries to report).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports keras

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import adafactor_jax  # noqa: E402
from adafactor_jax._src.factoring import FactorRules  # noqa: E402
from adafactor_jax._src.tree import path_str  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bounds as physical  # noqa: E402


def _example(name):
  """examples/<name>.py, loaded by path: putting examples/ on sys.path would let its haiku.py
  and equinox.py shadow the real packages for the rest of the process."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"adafactor_jax_example_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


bert_base_shapes = _example("state_memory").bert_base_shapes


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


def stacked(shapes: dict, group: tuple[str, ...], name: str = "layers") -> tuple[dict, dict]:
  """`shapes` with the layers under `group` (a dict of equal subtrees) stacked into one subtree
  `name` with a leading layer dim, as models that scan over their layers hold them (t5x,
  MaxText, big_vision), and the `factor_rule` that gives each stacked leaf the statistics of
  each of its layers under optax's rule ("largest", 128): the layer dim a batch dim, then the
  unstacked leaf's row and column dims. With it, the numbers equal the unstacked tree's."""
  parent = shapes
  for key in group[:-1]:
    parent = parent[key]
  layers = list(parent[group[-1]].values())
  plan = FactorRules("largest").plan
  parent[group[-1]] = {name: jax.tree.map(
      lambda *xs: jax.ShapeDtypeStruct((len(xs),) + xs[0].shape, xs[0].dtype), *layers)}
  rule = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(layers[0]):
    p = plan("", leaf.shape)
    labels = ["row" if d in p.row_dims else "col" if d in p.col_dims else "none"
              for d in range(len(leaf.shape))]
    rule["^" + re.escape("/".join(group + (name, path_str(path)))) + "$"] = ("batch", *labels)
  return shapes, rule


# The stacked trees: the unstacked tree and the group of its layers. This library's adafactor
# takes their factor rules (per-layer statistics, clipping and parameter scale); optax.adafactor
# has no such rule: its statistics keep the layer dim (each reduces one dim), but its update
# clipping and parameter scale take the RMS of the whole stacked leaf, so its numbers are not the
# unstacked tree's.
SCANNED = {"bert_scan": (bert_base_shapes, ("encoder",)), "vit_scan": (vit_b16_shapes, ("layers",))}
SCAN_RULES = {tree: lambda shapes=shapes, group=group: stacked(shapes(), group)[1]
              for tree, (shapes, group) in SCANNED.items()}
TREES = {"bert": bert_base_shapes, "vit": vit_b16_shapes, "small": small_leaves_shapes} | {
    tree: lambda shapes=shapes, group=group: stacked(shapes(), group)[0]
    for tree, (shapes, group) in SCANNED.items()}
# Which bound each optimizer has (bounds.step_bytes): its algorithm, factoring rule and the
# itemsize of its statistics (None: the param dtype). Only these exact configurations: one
# without the update clipping or the parameter scale (torch's, the "+no_..." ones) moves fewer
# bytes than bounds.step_bytes counts, and Keras's base features (and Keras's own Adafactor, with
# its full-size velocity) more.
BOUND_KINDS = {
    "adafactor_jax.adafactor": ("adafactor", "largest", 4),
    "adafactor_jax.keras_adafactor": ("adafactor", "last", 4),
    "optax.adafactor": ("adafactor", "largest", None),
    "optax.adam": ("adam", "largest", None),
}
OPTIMIZERS = {
    "adafactor_jax.adafactor": lambda: adafactor_jax.adafactor(1e-3),
    "adafactor_jax.keras_adafactor": lambda: adafactor_jax.keras_adafactor(1e-3),
    "adafactor_jax.torch_adafactor": lambda: adafactor_jax.torch_adafactor(1e-2),
    "optax.adafactor": lambda: optax.adafactor(1e-3),
    "optax.adam": lambda: optax.adam(1e-3),
}
# Keras's base-optimizer features (opt-in, not in the default run): each suffix runs our
# keras_adafactor and, where Keras is installed, keras.optimizers.Adafactor with these arguments.
KERAS_FEATURES = {
    "+wd+clipnorm": dict(weight_decay=0.004, clipnorm=1.0),
    "+global_clipnorm+loss_scale": dict(global_clipnorm=1.0, loss_scale_factor=128.0),
    "+accumulation": dict(gradient_accumulation_steps=4),
    "+wd+clipnorm+ema_overwrite": dict(weight_decay=0.004, clipnorm=1.0, use_ema=True,
                                       ema_overwrite_frequency=100),
}
FEATURE_OPTIMIZERS = {
    f"adafactor_jax.keras_adafactor{suffix}":
        (lambda kw=kw: adafactor_jax.keras_adafactor(1e-3, **kw))
    for suffix, kw in KERAS_FEATURES.items()} | {
    "adafactor_jax.keras_adadelta": lambda: adafactor_jax.keras_adadelta(1e-3),
    # What the default's two whole-leaf reductions cost: the update RMS (clipping) and the
    # parameter RMS (the relative step size), each a pass over the leaf that these skip.
    "adafactor_jax.adafactor+no_clipping": lambda: adafactor_jax.adafactor(
        1e-3, clipping_threshold=None),
    "adafactor_jax.adafactor+no_clipping+no_param_scale": lambda: adafactor_jax.adafactor(
        1e-3, clipping_threshold=None, multiply_by_parameter_scale=False),
}


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def materialise(shapes, seed, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32) * 0.02, dtype), shapes)


def timed(fn, *args, steps=1, carry=None):
  """Seconds per call of `fn` over `steps` calls dispatched back to back (waiting only for the
  last), and the last output; `carry(args, out)` gives the next call's args (donated buffers)."""
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
    if carry is not None:
      args = carry(args, out)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps, out


class JaxStep:
  """A jitted train step ``step(params, state, grads) -> (params, state)``, params and state
  donated."""

  def __init__(self, step, params, state, grads):
    self.step, self.compile_times = step, []
    self.avals = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=jax.typeof(x).weak_type),
        (params, state, grads))
    self.compiled = self.compile()
    mem = self.compiled.memory_analysis()
    self.temp_mb = (mem.temp_size_in_bytes if mem is not None else float("nan")) / 1e6
    self.state_mb = sum(x.nbytes for x in jax.tree.leaves(state)) / 1e6
    self.args = (jax.tree.map(jnp.copy, params), state, grads)

  def compile(self):
    """Traces, lowers and compiles the step afresh (JAX's caches cleared first)."""
    jax.clear_caches()
    t0 = time.perf_counter()
    compiled = jax.jit(self.step, donate_argnums=(0, 1)).lower(*self.avals).compile()
    self.compile_times.append(time.perf_counter() - t0)
    return compiled

  def __call__(self, steps=1):
    dt, (p, s) = timed(self.compiled, *self.args, steps=steps,
                       carry=lambda args, out: (*out, args[2]))
    self.args = (p, s, self.args[2])
    return dt


def optax_step(tx, params, grads) -> JaxStep:
  """An optax-style optimizer: update + optax.apply_updates."""
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  return JaxStep(step, params, tx.init(params), grads)


def keras_step(params, grads, cls="Adafactor", module=None, **kwargs) -> JaxStep:
  """keras.optimizers.Adafactor (or `cls` of `module`, such as adafactor_jax.keras) on the JAX
  backend: its stateless_apply."""
  import keras
  leaves = jax.tree.leaves(params)
  kvars = [keras.Variable(np.asarray(x), name=f"v{i}") for i, x in enumerate(leaves)]
  opt = getattr(module or keras.optimizers, cls)(learning_rate=1e-3, **kwargs)
  opt.build(kvars)

  def step(p, s, g):
    return opt.stateless_apply(s, g, p)

  return JaxStep(step, leaves, [v.value for v in opt.variables], jax.tree.leaves(grads))


class TorchStep:
  """torch.optim.Adafactor (eager, CPU) on the same tree, lr 1e-2 (its default)."""

  def __init__(self, params, grads):
    import torch
    self.torch = torch
    self.params = [torch.nn.Parameter(torch.from_numpy(np.array(x)))
                   for x in jax.tree.leaves(params)]
    for p, g in zip(self.params, jax.tree.leaves(grads)):
      p.grad = torch.from_numpy(np.array(g))
    self.opt = torch.optim.Adafactor(self.params, lr=1e-2)
    self()  # creates the state
    self.temp_mb, self.compile_times = float("nan"), []  # eager: nothing compiled
    self.state_mb = sum(t.numel() * t.element_size() for st in self.opt.state.values()
                        for t in st.values() if isinstance(t, torch.Tensor)) / 1e6

  def __call__(self, steps=1):
    t0 = time.perf_counter()
    with self.torch.no_grad():
      for _ in range(steps):
        self.opt.step()
    return (time.perf_counter() - t0) / steps


def make_step(opt, params, grads, factor_rule=None):
  if opt.startswith("keras.optimizers."):
    cls, _, suffix = opt.removeprefix("keras.optimizers.").partition("+")
    return keras_step(params, grads, cls, **KERAS_FEATURES.get("+" + suffix, {}))
  if opt.startswith("adafactor_jax.keras."):  # the Keras optimizer classes
    import adafactor_jax.keras as afk
    return keras_step(params, grads, opt.removeprefix("adafactor_jax.keras."), module=afk)
  if opt == "torch.optim.Adafactor":
    return TorchStep(params, grads)
  if factor_rule is not None and opt == "adafactor_jax.adafactor":  # a stacked tree
    return optax_step(adafactor_jax.adafactor(1e-3, factor_rule=factor_rule), params, grads)
  return optax_step((OPTIMIZERS | FEATURE_OPTIMIZERS)[opt](), params, grads)


def bench_tree(name, shapes, names, reps, compile_reps=1, dtype="float32",
               steps_per_rep=1, device_time=False):
  params = materialise(shapes, 0, DTYPES[dtype])
  grads = materialise(shapes, 1, DTYPES[dtype])
  rule = SCAN_RULES[name]() if name in SCAN_RULES else None
  if dtype != "float32":
    name = f"{name} {dtype}"
  n_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  rows, steps = {}, {}
  for opt in names:
    steps[opt] = make_step(opt, params, grads, rule)
  for _ in range(compile_reps - 1):  # interleaved recompiles: every optimizer once per round
    for opt in names:
      if steps[opt].compile_times:
        steps[opt].compile()
  for opt in names:
    times = steps[opt].compile_times
    rows[opt] = {"compile_s": statistics.median(times) if times else 0.0,
                 "compile_times_s": times, "temp_mb": steps[opt].temp_mb,
                 "state_mb": steps[opt].state_mb, "times": []}
  # the streaming bound, timed like the steps
  sumsq = jax.jit(lambda g: sum(jnp.sum(x * x) for x in jax.tree.leaves(g)))
  axpy = jax.jit(lambda p, g: jax.tree.map(lambda a, b: a - 1e-3 * b, p, g), donate_argnums=0)
  bound_p = jax.tree.map(jnp.copy, params)
  sumsq(grads).block_until_ready()
  bound_p = axpy(bound_p, grads)
  bounds = []
  for _ in range(reps):  # interleaved rounds: every optimizer once per round
    for opt in names:
      rows[opt]["times"].append(steps[opt](steps_per_rep))
    t1, _ = timed(sumsq, grads, steps=steps_per_rep)
    t2, bound_p = timed(axpy, bound_p, grads, steps=steps_per_rep,
                        carry=lambda args, out: (out, args[1]))
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
  # the physical bound: the bytes each optimizer must move, at the measured copy bandwidth
  copy = physical.copy_bandwidth()
  bandwidth = copy["bandwidth"]
  typed = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  for opt, r in rows.items():
    if device_time and opt != "torch.optim.Adafactor":  # torch: eager, not a traced program
      r["device_ms"], r["kernels"] = physical.device_time(lambda o=opt: steps[o](1))
    kind = BOUND_KINDS.get(opt)
    if kind is None:
      continue
    algo, factoring, stats = kind
    if rule is not None and opt == "adafactor_jax.adafactor":
      factoring = rule
    r["phys_bound_ms"] = 1e3 * physical.step_bytes(typed, algo, factoring, stats) / bandwidth
    # on the CPU the trace gives no device time: the wall time stands for it
    measured = r.get("device_ms", float("nan"))
    if math.isnan(measured):
      measured = r["median_ms"]
    r["phys_bound_fraction"] = r["phys_bound_ms"] / measured
  return {"tree": name, "param_mb": n_bytes / 1e6, "rows": rows,
          "copy_gb_s": {k: v / 1e9 for k, v in copy.items()}, "stacked": rule is not None}


def markdown(results) -> str:
  nan = float("nan")
  extra = [("device ms", "device_ms", 2), ("kernels", "kernels", 0),
           ("phys bound ms", "phys_bound_ms", 2), ("of phys bound", "phys_bound_fraction", 2)]
  extra = [c for c in extra if any(c[1] in r for res in results for r in res["rows"].values())]
  out = ["| tree | optimizer | step ms (median) | min | max | / optax.adafactor | / optax.adam "
         "| state MB | temp MB | compile s | bound ms | of bound |"
         + "".join(f" {h} |" for h, _, _ in extra),
         "|---|---|" + "---:|" * (10 + len(extra))]
  for res in results:
    for opt, r in res["rows"].items():
      out.append(
          f"| {res['tree']} ({res['param_mb']:.0f} MB) | {opt} | {r['median_ms']:.1f} | "
          f"{r['min_ms']:.1f} | {r['max_ms']:.1f} | {r['vs_optax.adafactor']:.2f} | "
          f"{r['vs_optax.adam']:.2f} | {r['state_mb']:.2f} | {r['temp_mb']:.1f} | "
          f"{r['compile_s']:.1f} | {r['bound_ms']:.1f} | {r['bound_fraction']:.2f} |"
          + "".join(f" {r.get(k, nan):.{d}f} |" for _, k, d in extra))
  return "\n".join(out)


def _importable(module: str) -> bool:
  try:
    __import__(module)
    return True
  except ImportError:
    return False


def available_extras() -> list[str]:
  out = ["keras.optimizers.Adafactor"] if _importable("keras") else []
  if _importable("torch"):
    import torch
    if hasattr(torch.optim, "Adafactor"):
      out.append("torch.optim.Adafactor")
  return out


def available_opt_in() -> list[str]:
  """The configurations that run only when named (`FEATURE_OPTIMIZERS`, `KERAS_FEATURES`)."""
  out = list(FEATURE_OPTIMIZERS)
  if _importable("keras"):
    out += ["adafactor_jax.keras.Adafactor", "adafactor_jax.keras.Adadelta"]
    out += [f"keras.optimizers.Adafactor{suffix}" for suffix in KERAS_FEATURES]
    out.append("keras.optimizers.Adadelta")
  return out


def _short(name: str) -> str:
  return (name.replace("adafactor_jax.", "ours: ").replace("keras.optimizers.", "keras ")
          .replace("torch.optim.", "torch "))


def plot(results, path):
  """Step time and memory (state + compiled temporaries) per optimizer, one panel pair per tree,
  each bar labelled with its value (and the step time with its ratio to optax.adam): the memory
  axis is logarithmic, labelled at its powers of ten only."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import ticker

  n_opts = max(len(res["rows"]) for res in results)
  fig, axes = plt.subplots(len(results), 2, squeeze=False,
                           figsize=(13, 0.9 + (0.45 * n_opts + 1.1) * len(results)))
  for res, (ax_t, ax_m) in zip(results, axes):
    names = list(res["rows"])
    rows = [res["rows"][n] for n in names]
    short = [_short(n) for n in names]
    colors = ["tab:green" if n.startswith("adafactor_jax") else "tab:gray" for n in names]
    ms = [r["median_ms"] for r in rows]
    ax_t.barh(short, ms, color=colors)
    for y, (r, v) in enumerate(zip(rows, ms)):
      ratio = r.get("vs_optax.adam", float("nan"))
      label = f" {v:.1f}" + ("" if ratio != ratio else f"  ({ratio:.2f}x adam)")
      ax_t.text(v, y, label, va="center", fontsize=9)
    ax_t.set_xlim(0, 1.45 * max(ms))
    ax_t.set_xlabel("step ms (median), and its ratio to optax.adam's")
    ax_t.set_title(f"{res['tree']} ({res['param_mb']:.0f} MB of params): step time")
    # PyTorch has no compiled step: its temporaries are nan, its bar is its state alone
    mem = [max(r["state_mb"] + float(np.nan_to_num(r["temp_mb"])), 1e-3) for r in rows]
    ax_m.barh(short, mem, color=colors)
    for y, v in enumerate(mem):
      ax_m.text(v, y, f" {v:,.1f}" if v >= 1 else f" {v:.2g}", va="center", fontsize=9)
    ax_m.set_xscale("log")
    lo = 10.0 ** (np.floor(np.log10(min(mem))) - 1)  # the shortest bar a decade long
    hi = 10.0 ** np.ceil(np.log10(max(mem) * 6))  # room for the last bar's label
    ax_m.set_xlim(lo, hi)
    ax_m.xaxis.set_major_locator(ticker.LogLocator(base=10, numticks=12))
    ax_m.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,g}"))
    ax_m.xaxis.set_minor_formatter(ticker.NullFormatter())  # no labels at 2x, 3x, ... 9x
    ax_m.set_xlabel("optimizer state + compiled temporaries, MB (log scale)")
    ax_m.set_title(f"{res['tree']}: memory")
    for ax in (ax_t, ax_m):
      ax.invert_yaxis()
      ax.tick_params(axis="y", length=0)
  machines = sorted({res["machine"] for res in results if res.get("machine")})
  if machines:
    fig.suptitle("; ".join(machines), fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def from_json(path: str) -> list:
  """The results that ``--json`` wrote to `path`."""
  with open(path) as f:
    return json.load(f)


def machine() -> str:
  """The CPU model (from /proc/cpuinfo where there is one), the CPU count, the JAX platform and
  the versions: figures from different machines are not comparable, only their ratios."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), model)
  except OSError:
    pass
  device = jax.devices()[0]
  kind = "" if device.platform == "cpu" else f" ({device.device_kind})"
  return (f"{model}, {os.cpu_count()} CPUs, {device.platform}{kind}, jax {jax.__version__}, "
          f"optax {optax.__version__}")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  # The 2,000-leaf tree is opt-in: compiling optax.adafactor's step for it alone takes about
  # 2 minutes on 2 cores (the whole run about 10), over this command's 5-minute budget.
  ap.add_argument("--trees", nargs="*", default=["bert", "vit"], choices=list(TREES))
  extras = available_extras()
  ap.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS) + extras,
                  choices=list(OPTIMIZERS) + extras + available_opt_in(),
                  help="the default run, or any of the choices: the Keras-feature ones (with a "
                       "'+') run ours and Keras's with the same arguments")
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--compile-reps", type=int, default=1,
                  help="compile each step this many times, interleaved, and report the median "
                       "(one compile swings by a quarter on a loaded machine)")
  ap.add_argument("--steps-per-rep", type=int, default=1,
                  help="steps dispatched back to back per timed sample, waiting only for the "
                       "last (on an accelerator, where one step is shorter than its dispatch)")
  ap.add_argument("--dtype", default="float32", choices=list(DTYPES),
                  help="dtype of the params and gradients")
  ap.add_argument("--device-time", action="store_true",
                  help="also trace each step with jax.profiler: kernel time per step and kernel "
                       "count, against which the physical bound's fraction is taken")
  ap.add_argument("--json", default="")
  ap.add_argument("--plot", default="", help="write a PNG of step time and memory")
  ap.add_argument("--from-json", default="", metavar="PATH",
                  help="run nothing: print the table of a JSON that --json wrote (and with "
                       "--plot, draw its PNG), e.g. --from-json docs/benchmark_gpu_h100.json "
                       "--plot docs/performance_gpu_h100.png")
  args = ap.parse_args(argv)
  if args.from_json:
    results = from_json(args.from_json)
    for where in dict.fromkeys(res.get("machine", "machine not recorded") for res in results):
      print(where)
    print(markdown(results))
    if args.plot:
      plot(results, args.plot)
    return results
  for name in ("reps", "compile_reps", "steps_per_rep"):
    if getattr(args, name) < 1:
      ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
  where = f"{machine()}, {time.strftime('%Y-%m-%d')}"
  print(where, flush=True)
  results = []
  for tree in args.trees:
    t0 = time.perf_counter()
    names = args.optimizers
    if tree in SCAN_RULES:  # stacked layers: the optimizers that can give them per-layer numbers
      names = [n for n in names if n in ("adafactor_jax.adafactor", "optax.adafactor",
                                         "optax.adam")]
    results.append(bench_tree(tree, TREES[tree](), names, args.reps, args.compile_reps,
                              args.dtype, args.steps_per_rep, args.device_time)
                   | {"machine": where})
    print(f"{tree}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
  print(markdown(results))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  if args.plot:
    plot(results, args.plot)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
