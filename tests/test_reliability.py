"""Reliability: atomic skipping of non-finite steps, finite in -> finite out in every dtype,
checkpoints (save_state/load_state, orbax) and bitwise-exact resume in a fresh process."""

from __future__ import annotations

import inspect
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close
from helpers import contract_tree
from helpers import grads_like
from presets import PRESETS

import adafactor_jax as af
from adafactor_jax._src import config as config_lib

HERE = pathlib.Path(__file__).resolve().parent
NAMES = sorted(PRESETS)


def bitwise_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
      for x, y in zip(la, lb))


@pytest.mark.unit
def test_every_preset_takes_skip_nonfinite():
  assert len(config_lib._REGISTRY) >= 7
  for name, fn in config_lib._REGISTRY.items():
    param = inspect.signature(fn).parameters["skip_nonfinite"]
    assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is False, name
  with pytest.raises(ValueError, match="skip_nonfinite"):
    af.adafactor(skip_nonfinite="yes")


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_step_changes_nothing(name):
  tx = af.skip_nonfinite(PRESETS[name](0.01))
  params = contract_tree(one=False)
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
      *tx.update(g, s, p)))
  for i in range(3):
    params, state = step(params, state, grads_like(params, i))
  for bad in (jnp.nan, jnp.inf, -jnp.inf):
    g = grads_like(params, 10)
    g["w"] = g["w"].at[3, 4].set(bad)
    before = (params, state.inner_state)
    params, state = step(params, state, g)
    assert bitwise_equal((params, state.inner_state), before), bad
  assert int(af.skipped_steps(state)) == 3
  # and the run continues exactly as if the bad steps never happened
  ref_tx = PRESETS[name](0.01)
  ref_p = contract_tree(one=False)
  ref_s = ref_tx.init(ref_p)
  ref_step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
      *ref_tx.update(g, s, p)))
  for i in range(3):
    ref_p, ref_s = ref_step(ref_p, ref_s, grads_like(ref_p, i))
  # (the wrapped update runs inside lax.cond, compiled differently: equal to f32 rounding)
  assert_trees_close(state.inner_state, ref_s, 1e-6, 1e-6)
  params, state = step(params, state, grads_like(params, 4))
  ref_p, ref_s = ref_step(ref_p, ref_s, grads_like(ref_p, 4))
  assert_trees_close(params, ref_p, 1e-6, 1e-6)


@pytest.mark.unit
def test_skip_nonfinite_of_an_inner_that_changes_dtypes():
  """An inner transformation whose updates (or state) come out in other dtypes than it got
  (optax.adafactor's float32 momentum for bfloat16 gradients): a skipped step gives zeros and
  the old state in those dtypes (was: lax.cond's TypeError on unequal branch types)."""
  params = {"w": jnp.ones((3, 4), jnp.bfloat16)}
  tx = af.skip_nonfinite(optax.adafactor(0.01, momentum=0.9))
  inner = optax.adafactor(0.01, momentum=0.9)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(params, state, params)
  expected, _ = jax.jit(inner.update)(params, inner.init(params), params)
  assert updates["w"].dtype == expected["w"].dtype == jnp.float32
  np.testing.assert_array_equal(updates["w"], expected["w"])
  bad = {"w": jnp.full((3, 4), jnp.nan, jnp.bfloat16)}
  skipped, after = jax.jit(tx.update)(bad, state, params)
  assert int(af.skipped_steps(after)) == 1
  assert skipped["w"].dtype == jnp.float32 and not bool(jnp.any(skipped["w"]))
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                   after.inner_state, state.inner_state))


def test_skipped_steps_through_preset_keyword_and_wrappers():
  tx = optax.chain(af.adafactor(0.1, skip_nonfinite=True), optax.identity())
  params = {"w": jnp.ones((4, 4))}
  state = tx.init(params)
  _, state = jax.jit(tx.update)({"w": jnp.full((4, 4), jnp.nan)}, state, params)
  assert int(af.skipped_steps(state)) == 1
  assert int(af.skipped_steps(af.adafactor(0.1).init(params))) == 0


EDGE_GRADS = {
    "zero": lambda p: jnp.zeros(p.shape, p.dtype),
    "1e-30": lambda p: jnp.full(p.shape, 1e-30, p.dtype),
    "subnormal": lambda p: jnp.full(p.shape, jnp.finfo(p.dtype).smallest_normal / 4, p.dtype),
    "near_max": lambda p: jnp.full(p.shape, jnp.finfo(p.dtype).max / 2, p.dtype),
    "mixed_huge_tiny": lambda p: jnp.where(jnp.arange(p.size).reshape(p.shape) % 2 == 0,
                                           jnp.finfo(p.dtype).max / 2,
                                           jnp.finfo(p.dtype).tiny).astype(p.dtype),
}


def edge_params(dtype, zero=False):
  shapes = {"w": (16, 12), "t3": (3, 16, 10), "b": (12,), "s": (), "empty": (0,),
            "empty2": (4, 0), "one": (1, 9), "col": (9, 1)}
  rng = np.random.default_rng(0)
  make = (lambda s: jnp.zeros(s, dtype)) if zero else (
      lambda s: jnp.asarray(rng.normal(size=s), dtype))
  return {k: make(s) for k, s in shapes.items()}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_finite_in_finite_out(name, dtype):
  tx = PRESETS[name](0.01)
  update = jax.jit(tx.update)
  for zero_params in (False, True):
    params = edge_params(dtype, zero_params)
    for kind, make in EDGE_GRADS.items():
      state = tx.init(params)
      for _ in range(3):
        grads = jax.tree.map(make, params)
        updates, state = update(grads, state, params)
        bad = [jax.tree_util.keystr(p) for p, x in
               jax.tree_util.tree_flatten_with_path((updates, state))[0]
               if jnp.issubdtype(x.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(x)))]
        assert not bad, f"{kind} zero_params={zero_params}: non-finite {bad}"


@pytest.mark.parametrize("scale", [2.0, 3e-2])
def test_float16_statistics_of_ordinary_gradients_equal_optax(scale):
  """Float16 statistics (stats_dtype=None with float16 params, as optax) saturate only near
  float16's maximum, and are floored only at its smallest subnormal number: gradients of order
  1, and of order 1e-2 (whose squares are mostly subnormal in float16), on a 512x512 leaf
  (factored) and a 64x64 one (unfactored) give optax's first update and store g**2. Before, the
  cap was max / (2 * leaf size) (0.125 for 512x512: the first update of a gradient of 0.5 was
  1.415 where optax's is 1), and the floor float16's smallest normal number (6e-5, the square of
  8e-3: the update of a gradient of 1e-3 was damped 8-fold)."""
  rng = np.random.default_rng(0)
  params = {"big": jnp.asarray(rng.normal(size=(512, 512)), jnp.float16),
            "small": jnp.asarray(rng.normal(size=(64, 64)), jnp.float16)}
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * scale, jnp.float16),
                       params)
  # (A square that underflows float16 to zero gives optax an infinite update, docs/concepts.md
  # "Differences from optax" 2: those elements are left out; they make optax.adafactor's update
  # clipping NaN, so it is compared without it.)
  pairs = [(af.adafactor(0.01, stats_dtype=None, clipping_threshold=None),
            optax.adafactor(0.01, clipping_threshold=None)),
           (af.adadelta(1.0, stats_dtype=None), optax.adadelta(1.0)),
           (af.scale_by_factored_rms(stats_dtype=None), optax.scale_by_factored_rms())]
  for ours, ref in pairs:
    u_ours, s_ours = ours.update(grads, ours.init(params), params)
    u_ref, _ = ref.update(grads, ref.init(params), params)
    for k in params:
      a, b = np.asarray(u_ours[k], np.float32), np.asarray(u_ref[k], np.float32)
      finite = np.isfinite(b)
      assert np.isfinite(a).all() and finite.mean() > 0.99, k
      a, b = a[finite], b[finite]
      # float16 updates: a few ulps (2**-10 relative) of rounding apart; a subnormal square
      # has fewer significant bits, and its update's ulps are larger
      np.testing.assert_allclose(a, b, rtol=4e-3 if scale > 1 else 3e-2,
                                 atol=4e-3 * np.abs(b).max(), err_msg=k)
  v = s_ours.v["small"]  # scale_by_factored_rms's, the last pair
  assert v.dtype == jnp.float16
  np.testing.assert_array_equal(v, grads["small"] * grads["small"])


# Each preset with its epsilon at 0, or at a value that underflows to 0 in a float16 statistic:
# a leaf of zero gradients then has all-zero statistics. The references divide 0 by 0 there
# (optax, Keras, PyTorch and transformers: the factored estimate's row mean; Keras and optax's
# Adadelta: E[g**2] + eps).
EPSILON_ZERO = {
    "adafactor": lambda: af.adafactor(0.01, eps=0.0, min_dim_size_to_factor=8),
    "adafactor_param_dtype_stats": lambda: af.adafactor(0.01, min_dim_size_to_factor=8,
                                                        stats_dtype=None),
    "keras_adafactor": lambda: af.keras_adafactor(0.01, epsilon_1=0.0),
    "torch_adafactor": lambda: af.torch_adafactor(0.01, eps=(0.0, 1e-3)),
    "hf_adafactor": lambda: af.hf_adafactor(eps=(0.0, 1e-3)),
    "big_vision_adafactor": lambda: af.big_vision_adafactor(0.01, eps=0.0,
                                                            min_dim_size_to_factor=8),
    "adadelta": lambda: af.adadelta(1.0, eps=0.0),
    "adadelta_param_dtype_stats": lambda: af.adadelta(1.0, eps=1e-10, stats_dtype=None),
    "keras_adadelta": lambda: af.keras_adadelta(1.0, epsilon=0.0),
}


@pytest.mark.parametrize("name", sorted(EPSILON_ZERO))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_zero_epsilon_and_zero_gradients_stay_finite(name, dtype):
  tx = EPSILON_ZERO[name]()
  params = edge_params(dtype)
  update = jax.jit(tx.update)
  for kind in ("zero", "1e-30", "subnormal"):
    state = tx.init(params)
    for _ in range(3):
      updates, state = update(jax.tree.map(EDGE_GRADS[kind], params), state, params)
      bad = [jax.tree_util.keystr(p) for p, x in
             jax.tree_util.tree_flatten_with_path((updates, state))[0]
             if jnp.issubdtype(x.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(x)))]
      assert not bad, f"{kind}: non-finite {bad}"


def test_bf16_long_run_second_moment_tracks_float64():
  # 20,000 steps with bf16 params: the f32 second moment stays within 1% of a float64
  # reference computed on the same gradients.
  steps = 20_000
  rng = np.random.default_rng(0)
  scales = np.exp(np.linspace(-4, 2, steps)).astype(np.float32)  # gradients grow 400x
  base = rng.normal(size=(steps, 6)).astype(np.float32)
  g_all = jnp.asarray(base * scales[:, None], jnp.bfloat16)
  tx = af.scale_by_factored_rms()
  params = {"b": jnp.zeros((6,), jnp.bfloat16)}

  def body(state, g):
    _, state = tx.update({"b": g}, state)
    return state, None

  state = jax.jit(lambda s, g: jax.lax.scan(body, s, g)[0])(tx.init(params), g_all)
  g64 = np.asarray(g_all.astype(jnp.float32), np.float64)
  v = np.zeros(6)
  for t in range(1, steps + 1):
    beta = 1.0 - t ** -0.8
    v = beta * v + (1 - beta) * (g64[t - 1] ** 2 + 1e-30)
  np.testing.assert_allclose(np.asarray(state.v["b"], np.float64), v, rtol=1e-2)


# ---- checkpoints ----

@pytest.mark.unit
@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_every_preset(tmp_path, name):
  tx = PRESETS[name](0.01)
  params = contract_tree(one=False)
  state = tx.init(params)
  for i in range(2):
    _, state = jax.jit(tx.update)(grads_like(params, i), state, params)
  path = tmp_path / "state.npz"
  af.save_state(path, state)
  like = jax.eval_shape(tx.init, params)
  assert bitwise_equal(af.load_state(path, like=like), state)


@pytest.mark.unit
def test_load_mismatch_errors_name_the_key(tmp_path):
  params = contract_tree(one=False)
  path = tmp_path / "s.npz"
  tx = af.adafactor(0.01, min_dim_size_to_factor=8)
  af.save_state(path, tx.init(params), tx=tx)
  with pytest.raises(ValueError, match="first mismatching key"):
    af.load_state(path, like=af.adadelta(0.1).init(params))
  other = dict(params, w=jnp.zeros((16, 13)))
  with pytest.raises(ValueError, match=r"'0/v_row/w'|'0/v_col/w'"):
    af.load_state(path, like=tx.init(other))
  with pytest.raises(ValueError, match="written for adafactor"):
    af.load_state(path, like=tx.init(params), tx=af.adafactor(0.02, min_dim_size_to_factor=8))
  with pytest.raises(ValueError, match="bfloat16.*float32|float32.*bfloat16"):
    af.load_state(path, like=af.adafactor(0.01, min_dim_size_to_factor=8,
                                          stats_dtype=jnp.bfloat16).init(params))


@pytest.mark.unit
def test_saved_state_file_mode_follows_the_umask(tmp_path):
  """A checkpoint is readable as any file np.savez writes (0o666 less the umask), not 0o600."""
  tx = af.adafactor(0.01)
  old = os.umask(0o022)
  try:
    af.save_state(tmp_path / "s.npz", tx.init(contract_tree(one=False)))
  finally:
    os.umask(old)
  assert (tmp_path / "s.npz").stat().st_mode & 0o777 == 0o644


def test_truncated_or_interrupted_write_never_loads(tmp_path):
  tx = af.adafactor(0.01, momentum=0.9)
  params = contract_tree(one=False)
  state = tx.init(params)
  path = tmp_path / "s.npz"
  af.save_state(path, state)
  data = path.read_bytes()
  for cut in (10, len(data) // 2, len(data) - 5):
    bad = tmp_path / f"cut{cut}.npz"
    bad.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="truncated or not an optimizer-state file"):
      af.load_state(bad, like=state)
  # a corrupt compression method in the central directory (zipfile: NotImplementedError)
  at = data.index(b"PK\x01\x02") + 10
  bad = tmp_path / "method.npz"
  bad.write_bytes(data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:])
  with pytest.raises(ValueError, match="truncated or not an optimizer-state file"):
    af.load_state(bad, like=state)
  # a writer killed mid-write leaves only a temporary file; the old checkpoint still loads
  code = (f"import os, sys; sys.path.insert(0, {str(HERE.parent)!r});"
          "import numpy as np; import adafactor_jax._src.persistence as m;"
          "orig = np.savez\n"
          "def dying(f, **kw):\n"
          "  f.write(b'PK partial'); f.flush(); os._exit(9)\n"
          "np.savez = dying\n"
          "import jax.numpy as jnp; import adafactor_jax as af\n"
          f"af.save_state({str(path)!r}, af.adafactor(0.5).init({{'w': jnp.ones(3)}}))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
  assert proc.returncode == 9
  assert bitwise_equal(af.load_state(path, like=state), state)
  leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
  assert leftovers  # the temporary file of the killed writer, never the real name


@pytest.mark.references
def test_orbax_standard_checkpointer_and_sharded_restore(tmp_path):
  import orbax.checkpoint as ocp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  mesh = jax.make_mesh((1, 1), ("data", "model"))
  shard = {"w": NamedSharding(mesh, P("data", "model")), "t3": NamedSharding(mesh, P()),
           "b": NamedSharding(mesh, P("model")), "s": NamedSharding(mesh, P())}
  params = jax.device_put(contract_tree(one=False), shard)
  for name in ("adafactor_full", "keras_adafactor_full", "big_vision_adafactor"):
    tx = PRESETS[name](0.01)
    state = tx.init(params)
    _, state = jax.jit(tx.update)(grads_like(contract_tree(one=False), 0), state, params)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / name, state)
    ckpt.wait_until_finished()
    shardings = af.state_shardings(tx, params)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          jax.eval_shape(tx.init, params), shardings)
    restored = ckpt.restore(tmp_path / name, target)
    assert bitwise_equal(restored, state), name
    assert jax.tree.all(jax.tree.map(lambda x, s: x.sharding == s, restored, shardings))


def test_resume_in_fresh_process_is_bitwise_exact(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for mode in ("run", "resume"):
    proc = subprocess.run([sys.executable, str(HERE / "resume_check.py"), mode, str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
  names = sorted(p.name[:-len(".full.npz")] for p in tmp_path.glob("*.full.npz"))
  assert len(names) >= len(PRESETS)
  results = {}
  for name in names:
    with np.load(tmp_path / f"{name}.full.npz") as a, \
         np.load(tmp_path / f"{name}.resumed.npz") as b:
      results[name] = a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
  print("\n[resume] bitwise equal after restore at step 13 of 30:",
        ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in results.items()))
  assert all(results.values()), results
