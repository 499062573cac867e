"""The benchmark's scanned trees, physical bounds and device time (benchmarks/bounds.py, run.py).

No timing assertions: the bytes are checked against hand arithmetic, the stacked trees' numbers
against the unstacked tree's, and the trace for what it finds, not how long it took.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adafactor_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)


def load(name):
  spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def layer():
  # names that prefix one another ("w", "w_scale"): a rule that matched "layers/w" unanchored
  # would also take "layers/w_scale", of another rank
  return {"w": f32(256, 160), "w_scale": f32(256), "up": f32(160, 512), "conv": f32(3, 3, 8, 160),
          "conv_big": f32(3, 3, 128, 160)}


def tiny_tree():
  return {"embed": f32(300, 160),
          "encoder": {f"layer_{i}": layer() for i in range(3)},
          "head": f32(160, 10)}


def materialise(shapes, seed):
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, s.shape, s.dtype)
                                      for k, s in zip(keys, leaves)])


def stack_layers(tree):
  """The unstacked tree's values in the stacked tree's layout (the layer dim first)."""
  layers = [tree["encoder"][f"layer_{i}"] for i in range(3)]
  return {**tree, "encoder": {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}}


def test_a_stacked_tree_with_its_factor_rule_steps_as_the_unstacked_tree():
  bench = load("run")
  stacked_shapes, rule = bench.stacked(tiny_tree(), ("encoder",))
  assert jax.tree.map(lambda s: s.shape, stacked_shapes["encoder"]["layers"]) == {
      "w": (3, 256, 160), "w_scale": (3, 256), "up": (3, 160, 512), "conv": (3, 3, 3, 8, 160),
      "conv_big": (3, 3, 3, 128, 160)}
  # the rules are anchored, one per stacked leaf: the layer dim a batch dim, then optax's rule
  # for one layer (its largest dim "col", the second largest "row", if that is >= 128)
  assert rule == {r"^encoder/layers/w$": ("batch", "col", "row"),
                  r"^encoder/layers/w_scale$": ("batch", "none"),
                  r"^encoder/layers/up$": ("batch", "row", "col"),
                  r"^encoder/layers/conv$": ("batch", "none", "none", "none", "none"),
                  r"^encoder/layers/conv_big$": ("batch", "none", "none", "row", "col")}
  params, grads = materialise(tiny_tree(), 0), materialise(tiny_tree(), 1)
  flat, scanned = adafactor_jax.adafactor(1e-2), adafactor_jax.adafactor(1e-2, factor_rule=rule)
  p_flat, p_scan = params, stack_layers(params)
  s_flat, s_scan = flat.init(p_flat), scanned.init(p_scan)
  for step in range(3):
    g = jax.tree.map(lambda x, step=step: x * (1 + step), grads)
    u_flat, s_flat = jax.jit(flat.update)(g, s_flat, p_flat)
    u_scan, s_scan = jax.jit(scanned.update)(stack_layers(g), s_scan, p_scan)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
                 stack_layers(u_flat), u_scan)
    p_flat = jax.tree.map(jnp.add, p_flat, u_flat)
    p_scan = jax.tree.map(jnp.add, p_scan, u_scan)
  # and the state is as small: row and column statistics per layer
  nbytes = lambda s: sum(x.nbytes for x in jax.tree.leaves(s))
  assert nbytes(s_scan) == nbytes(s_flat)


def test_step_bytes_by_hand():
  bounds = load("bounds")
  tree = {"kernel": f32(256, 512), "bias": f32(512), "small": f32(64, 64)}
  n = 256 * 512 + 512 + 64 * 64
  # Adam: gradient read; both moments and the params read and written: 7 arrays
  assert bounds.step_bytes(tree, "adam") == 7 * 4 * n
  # Adafactor: 6 arrays per leaf; an unfactored leaf (the bias, and a 64x64 below the 128 of
  # min_dim_size_to_factor) reads and writes its float32 second moment too
  unfactored = 512 + 64 * 64
  assert bounds.step_bytes(tree, "adafactor") == 6 * 4 * n + 2 * 4 * unfactored
  bf16 = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.bfloat16), tree)
  assert bounds.step_bytes(bf16, "adam") == 7 * 2 * n
  assert bounds.step_bytes(bf16, "adafactor") == 6 * 2 * n + 2 * 4 * unfactored
  # optax keeps its statistics in the param dtype
  assert bounds.step_bytes(bf16, "adafactor", stats_itemsize=None) == 6 * 2 * n + 2 * 2 * unfactored
  with pytest.raises(ValueError, match="kind must be 'adam' or 'adafactor', got 'sgd'"):
    bounds.step_bytes(tree, "sgd")


def test_copy_bandwidth_measures_the_device_and_memcpy():
  bandwidth = load("bounds").copy_bandwidth(nbytes=16 << 20, reps=3)
  assert set(bandwidth) == {"xla", "memcpy", "bandwidth"}  # the CPU: memcpy too
  assert all(math.isfinite(v) and v > 0 for v in bandwidth.values())
  assert bandwidth["bandwidth"] == max(bandwidth["xla"], bandwidth["memcpy"])


def test_device_time_on_the_cpu_is_the_wall_time():
  """XLA:CPU's trace neither times nor lists all of its kernels: no device time, no count."""
  x = jnp.ones((256, 256))
  step = jax.jit(lambda a: jnp.sin(a) @ a)
  ms, kernels = load("bounds").device_time(lambda: step(x).block_until_ready(), steps=2)
  assert math.isnan(ms) and math.isnan(kernels)


def test_kernel_events_of_an_accelerator_trace():
  """The reading of a GPU trace, on a trace of the same shape as jax.profiler.ProfileData's:
  the streams' events are the kernels, the derived lines and the host are not; two streams
  running at once count once."""
  event = lambda name, start, duration: SimpleNamespace(name=name, start_ns=start,
                                                        duration_ns=duration)
  line = lambda name, *events: SimpleNamespace(name=name, events=list(events))
  plane = lambda name, *lines: SimpleNamespace(name=name, lines=list(lines))
  profile = SimpleNamespace(planes=[
      plane("/host:CPU", line("python", event("PjitFunction(step)", 0, 500))),
      plane("/device:GPU:0",
            line("Stream #13(Compute)", event("loop_fusion", 100, 10), event("reduce", 120, 30)),
            line("Stream #14(Compute)", event("input_fusion", 130, 40)),  # overlaps "reduce"
            line("XLA Ops", event("loop_fusion", 100, 10), event("reduce", 120, 30)),
            line("XLA Modules", event("jit_step", 100, 70)))])
  names, busy = load("bounds").kernel_events(profile)
  assert names == ["loop_fusion", "reduce", "input_fusion"]
  assert busy == 10 + (170 - 120)  # [100, 110) and [120, 170)
  cpu_only = SimpleNamespace(planes=[profile.planes[0]])
  names, busy = load("bounds").kernel_events(cpu_only)
  assert names == [] and math.isnan(busy)


def test_the_benchmark_on_a_tiny_stacked_tree():
  bench = load("run")
  bench.TREES["tiny_scan"] = lambda: bench.stacked(tiny_tree(), ("encoder",))[0]
  bench.SCAN_RULES["tiny_scan"] = lambda: bench.stacked(tiny_tree(), ("encoder",))[1]
  results = bench.main(["--trees", "tiny_scan", "--reps", "1", "--device-time"])
  res = results[0]
  assert res["stacked"] and res["copy_gb_s"]["bandwidth"] > 0
  # the optimizers that can give stacked layers per-layer numbers (or treat them whole)
  assert list(res["rows"]) == ["adafactor_jax.adafactor", "optax.adafactor", "optax.adam"]
  typed = bench.TREES["tiny_scan"]()
  bounds = load("bounds")
  for opt, kind in (("optax.adam", "adam"), ("adafactor_jax.adafactor", "adafactor")):
    r = res["rows"][opt]
    rule = bench.SCAN_RULES["tiny_scan"]() if kind == "adafactor" else "largest"
    expected_ms = 1e3 * bounds.step_bytes(typed, kind, rule) / (1e9 * res["copy_gb_s"]["bandwidth"])
    assert r["phys_bound_ms"] == pytest.approx(expected_ms, rel=1e-9)
    assert r["phys_bound_fraction"] == pytest.approx(r["phys_bound_ms"] / r["median_ms"])
    # the CPU: the wall time stands for the device time
    assert math.isnan(r["device_ms"]) and math.isnan(r["kernels"])
  table = bench.markdown(results)
  assert "| phys bound ms | of phys bound |" in table and "| device ms | kernels |" in table
