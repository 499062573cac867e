"""The examples run (with tiny sizes) and the docs' numbers are what the package computes."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adafactor_jax._src.engine import chunked

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name, folder="examples"):
  # a prefixed module name: a bare one ("run", "haiku") would shadow a real package
  spec = importlib.util.spec_from_file_location(f"{folder}_{name}", ROOT / folder / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses (flax.linen modules) look their module up
  spec.loader.exec_module(module)
  return module


def test_train_lm_tiny(tmp_path):
  """The example's sweep and comparison on a tiny model: each optimizer keeps the grid's rate with
  the lowest validation loss, both learn, and the state bytes are what the optimizers store."""
  lm = load("train_lm")
  out = tmp_path / "lm.png"
  results = lm.main(["--tiny", "--steps", "30", "--out", str(out)])
  assert out.exists() and out.stat().st_size > 1000
  assert set(results) == {"adafactor", "adam"}
  for name, r in results.items():
    assert set(r["sweep"]) == set(lm.GRID[name])
    assert r["val_loss"] == min(r["sweep"].values()) == r["sweep"][r["learning_rate"]]
    assert len(r["losses"]) == 30 and sum(r["losses"][-5:]) / 5 < r["losses"][0] - 0.3, name
    assert np.isfinite(r["test_loss"]) and r["test_loss"] < r["losses"][0] - 0.3, name
    assert r["step_ms"] > 0
  # the tiny model's matrices are all under optax's 128 for factoring: a full second moment and
  # no momentum, half of Adam's two moments
  ada, adam = results["adafactor"]["state_bytes"], results["adam"]["state_bytes"]
  assert ada < 0.6 * adam
  # at the default size the factored statistics are far smaller
  params = lm.init_params(jax.random.PRNGKey(0), 95, 128, 2, 64)
  nbytes = lambda name: sum(x.nbytes for x in jax.tree.leaves(lm.OPTIMIZERS[name](1e-2).init(
      params)))
  assert nbytes("adafactor") < nbytes("adam") / 20


def test_docs_memory_table_is_computed():
  mem = load("state_memory")
  shapes = mem.bert_base_shapes()
  n = sum(x.size for x in jax.tree.leaves(shapes))
  readme = (ROOT / "docs" / "index.md").read_text()
  assert f"{n:,} parameters" in readme
  for name, nbytes in mem.table(shapes):
    assert re.search(rf"\| {re.escape(name)} \| {nbytes:,} \|", readme), name


def test_benchmark_runs_on_a_tiny_tree(tmp_path):
  """`benchmarks/run.py` end to end on a small tree, every optimizer (no timing assertions)."""
  bench = load("run", "benchmarks")
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jax.numpy.float32)
  bench.TREES["tiny"] = lambda: {"embed": s(512, 256), "kernel": s(256, 256), "bias": s(256)}
  out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
  results = bench.main(["--trees", "tiny", "--reps", "2", "--compile-reps", "2",
                        "--json", str(out_json), "--plot", str(out_png)])
  rows = results[0]["rows"]
  # the machine the figures come from, in the JSON too (only ratios compare across machines)
  assert results[0]["machine"].startswith(bench.machine()) and "CPUs" in results[0]["machine"]
  assert json.loads(out_json.read_text())[0]["machine"] == results[0]["machine"]
  # two compiles of each jitted step, none of the eager torch one
  assert len(rows["adafactor_jax.adafactor"]["compile_times_s"]) == 2
  assert len(rows["keras.optimizers.Adafactor"]["compile_times_s"]) == 2
  assert rows["torch.optim.Adafactor"]["compile_times_s"] == []
  assert {"adafactor_jax.adafactor", "optax.adafactor", "optax.adam",
          "keras.optimizers.Adafactor", "torch.optim.Adafactor"} <= set(rows)
  assert out_json.exists() and out_png.stat().st_size > 1000
  ours, adam = rows["adafactor_jax.adafactor"], rows["optax.adam"]
  assert ours["state_mb"] < adam["state_mb"] / 50
  assert rows["keras.optimizers.Adafactor"]["state_mb"] > 10 * ours["state_mb"]
  # no full-size temporaries: under 10% of the 0.79 MB of params
  assert ours["temp_mb"] < 0.1 * results[0]["param_mb"]


def test_benchmark_in_bfloat16(monkeypatch):
  """``--dtype bfloat16``: params and gradients in bf16, the tree labelled with its dtype. The
  half-precision reductions run in blocks (of 2**14 elements here, so that this small tree has
  several): no full-size float32 copies in the compiled step."""
  bench = load("run", "benchmarks")
  monkeypatch.setattr(chunked, "BLOCK_ELEMENTS", 1 << 14)
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jax.numpy.float32)
  bench.TREES["tiny"] = lambda: {"embed": s(2048, 256), "kernel": s(256, 1024), "bias": s(256)}
  results = bench.main(["--trees", "tiny", "--reps", "1", "--dtype", "bfloat16", "--optimizers",
                        "adafactor_jax.adafactor", "optax.adam"])
  assert results[0]["tree"] == "tiny bfloat16"
  assert results[0]["param_mb"] == pytest.approx((2048 * 256 + 256 * 1024 + 256) * 2 / 1e6)
  assert results[0]["rows"]["adafactor_jax.adafactor"]["temp_mb"] < 0.1 * results[0]["param_mb"]


def test_benchmark_keras_features():
  """The opt-in Keras-feature configurations: ours and Keras's with the same arguments. Ours
  stores no clipped gradients or decayed weights (Keras: a full-size buffer of each)."""
  bench = load("run", "benchmarks")
  s = lambda *shape: jax.ShapeDtypeStruct(shape, jax.numpy.float32)
  bench.TREES["tiny"] = lambda: {"embed": s(512, 256), "kernel": s(256, 256), "bias": s(256)}
  names = ["adafactor_jax.keras_adafactor+wd+clipnorm", "keras.optimizers.Adafactor+wd+clipnorm",
           "adafactor_jax.keras_adadelta", "keras.optimizers.Adadelta", "optax.adam"]
  results = bench.main(["--trees", "tiny", "--reps", "1", "--optimizers", *names])
  rows, param_mb = results[0]["rows"], results[0]["param_mb"]
  assert list(rows) == names
  assert rows["adafactor_jax.keras_adafactor+wd+clipnorm"]["temp_mb"] < 0.1 * param_mb
  assert rows["keras.optimizers.Adafactor+wd+clipnorm"]["temp_mb"] > 0.9 * param_mb
  # Adadelta: two moments of the params' size as state, like Keras's (plus its counters)
  assert rows["adafactor_jax.keras_adadelta"]["state_mb"] == pytest.approx(2 * param_mb)
  assert rows["keras.optimizers.Adadelta"]["state_mb"] == pytest.approx(2 * param_mb, abs=1e-4)


def test_benchmark_without_the_rms_reductions():
  """The opt-in configurations without the update RMS and the parameter RMS: each reduction
  left out leaves fewer kernels in the compiled step, and the updates are unclipped, then also
  unscaled by the parameter RMS."""
  bench = load("run", "benchmarks")
  names = ["adafactor_jax.adafactor", "adafactor_jax.adafactor+no_clipping",
           "adafactor_jax.adafactor+no_clipping+no_param_scale"]
  assert set(names[1:]) <= set(bench.available_opt_in())
  params = {"kernel": jnp.full((256, 256), 0.5), "bias": jnp.full((256,), 0.5)}
  small, large = (jax.tree.map(lambda p, g=g: jnp.full_like(p, g), params) for g in (1e-3, 1.0))
  kernels, second = [], []
  for name in names:
    tx = (bench.OPTIMIZERS | bench.FEATURE_OPTIMIZERS)[name]()
    state = tx.init(params)
    hlo = jax.jit(tx.update).lower(small, state, params).compile().as_text()
    kernels.append(hlo[hlo.index("ENTRY"):].count("fusion("))
    _, state = tx.update(small, state, params)
    second.append(tx.update(large, state, params)[0])
  assert kernels[0] > kernels[1] > kernels[2]
  # the second step's statistic: beta2 = 1 - 2**-0.8 of the first squared gradient, the rest the
  # second's; constant gradients, so the factored estimate is exact and both leaves step alike
  beta2 = 1 - 2.0 ** -0.8
  u = 1 / np.sqrt(beta2 * (1e-3 ** 2 + 1e-30) + (1 - beta2) * (1.0 + 1e-30))
  assert u > 1.3  # above the clipping threshold 1
  for leaf in ("kernel", "bias"):
    np.testing.assert_allclose(second[0][leaf], -1e-3 * 0.5 * 1.0, rtol=1e-6)
    np.testing.assert_allclose(second[1][leaf], -1e-3 * 0.5 * u, rtol=1e-6)
    np.testing.assert_allclose(second[2][leaf], -1e-3 * u, rtol=1e-6)


@pytest.mark.parametrize("flag", ["--reps", "--compile-reps"])
def test_benchmark_rejects_fewer_than_one_repetition(flag, capsys):
  with pytest.raises(SystemExit):
    load("run", "benchmarks").main([flag, "0"])
  assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err
