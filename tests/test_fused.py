"""The fast path: presets run their building blocks through `engine.chain`, which defers each
leaf's update to one final pass. It must change no numbers (against the same blocks run one by
one, as ``optax.chain`` does) and must leave no full-size temporaries in the compiled step."""

from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close
from helpers import max_rel_diff
from helpers import mixed_tree
from helpers import trajectory
from presets import PRESETS
from test_optax_parity import CASES

import adafactor_jax as af
from adafactor_jax._src import engine
from adafactor_jax._src import factored
from adafactor_jax._src import weight_decay
from adafactor_jax._src.engine import chunked


@pytest.fixture(params=[1 << 14, chunked.BLOCK_ELEMENTS], ids=["several_blocks", "one_block"])
def block_elements(request, monkeypatch):
  """`chunked.BLOCK_ELEMENTS` for the test: a large half-precision leaf in several blocks of rows,
  or (the default) in one."""
  monkeypatch.setattr(chunked, "BLOCK_ELEMENTS", request.param)
  return request.param


STEPS = 8
RTOL, ATOL = 1e-6, 1e-6  # the rtol; atol of the leaf's scale for elements near zero


def compact_tree(seed=0, dtype=jnp.float32):
  """Fewer leaves than helpers.mixed_tree (compiling dominates these tests), with each kind:
  a scalar, small unfactored leaves, factored 2-D and 4-D leaves, a 3-D leaf for explicit rules,
  and a leaf above `engine.MIN_SIZE_APART` (its own opaque zero)."""
  rng = np.random.default_rng(seed)
  shapes = {"scalar": (), "bias": (7,), "kernel": (130, 140), "t3": (4, 3, 2),
            "t4": (2, 130, 3, 129), "nested": {"b": [(129, 2)]}}
  assert 2 * 130 * 3 * 129 >= engine.MIN_SIZE_APART > 130 * 140
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), dtype), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def _temp_fraction(tx, params):
  """Compiled temporaries of the jitted step (params and state donated) / parameter bytes."""
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), params).compile()
  n_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  return compiled.memory_analysis().temp_size_in_bytes / n_bytes


def block_by_block(tx, params, steps, seed=1):
  with engine.disabled():
    return trajectory(tx, params, steps, seed)


@pytest.mark.hlo
def test_disabled_runs_blocks_one_by_one():
  """The reference is really the unfused chain: the compiled step materialises the update (a
  full-size temporary) only when fusion is off."""
  params = {"w": jnp.zeros((512, 256))}
  tx = af.adafactor(1e-3)

  fused_temp = _temp_fraction(tx, params)
  with engine.disabled():
    chain_temp = _temp_fraction(tx, params)
  assert chain_temp >= 1.0 > 10 * fused_temp, (chain_temp, fused_temp)


@pytest.mark.parametrize("name", [n for n in PRESETS if "adadelta" not in n])
def test_preset_equals_its_blocks_one_by_one(name):
  # (the Adadelta presets have no factored statistics: their blocks are the same either way)
  params = compact_tree(0)
  tx = PRESETS[name](0.01)
  fast, fast_state = trajectory(tx, params, STEPS)
  ref, ref_state = block_by_block(tx, params, STEPS)
  for i, (x, y) in enumerate(zip(fast, ref)):
    assert_trees_close(x, y, RTOL, ATOL, f"{name}, step {i + 1}")
  assert_trees_close(fast_state, ref_state, RTOL, ATOL, f"{name}, state")


@pytest.mark.parametrize("name,kwargs", CASES, ids=[c[0] for c in CASES])
def test_adafactor_argument_combinations_equal_blocks(name, kwargs):
  """Every argument combination of the optax parity suite."""
  params = compact_tree(0)
  tx = af.adafactor(**kwargs)
  fast, _ = trajectory(tx, params, STEPS)
  ref, _ = block_by_block(tx, params, STEPS)
  for i, (x, y) in enumerate(zip(fast, ref)):
    assert_trees_close(x, y, RTOL, ATOL, f"{name}, step {i + 1}")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_equals_blocks(dtype, block_elements):
  """Every block rounds to the update's dtype; the deferred formula does the same roundings.

  A reduction may sum in another order (one f32 ulp of an RMS), which can round an update to
  the neighbouring half-precision value: held to one ulp (eps) of each leaf's scale. The
  largest leaf (100K elements) is reduced in two blocks of rows, or in one."""
  params = compact_tree(0, dtype=dtype)
  for name in ("adafactor_full", "hf_adafactor_full", "torch_adafactor_full"):
    tx = PRESETS[name](0.01)
    fast, _ = trajectory(tx, params, 4)
    ref, _ = block_by_block(tx, params, 4)
    for i, (x, y) in enumerate(zip(fast, ref)):
      diff = max_rel_diff(x, y)
      assert diff <= float(jnp.finfo(dtype).eps), f"{name} {jnp.dtype(dtype).name} step {i + 1}"


def _rsqrt_inputs_of_reductions(jaxpr) -> list[str]:
  """For each rsqrt that a ``reduce_sum`` of an array in `jaxpr` depends on, the primitive that
  computes the rsqrt's input (a jitted function by its name)."""
  producers = {v: e for e in jaxpr.eqns for v in e.outvars}
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name != "reduce_sum" or eqn.invars[0].aval.size == 1:
      continue
    stack, seen = list(eqn.invars), set()
    while stack:
      v = stack.pop()
      if isinstance(v, jax.extend.core.Literal) or v in seen or v not in producers:
        continue
      seen.add(v)
      e = producers[v]
      if e.primitive.name == "rsqrt":
        p = producers[e.invars[0]]
        found.append(p.params["name"] if p.primitive.name in ("jit", "pjit") else p.primitive.name)
      else:
        stack.extend(e.invars)
  return found


@pytest.mark.hlo
def test_unfactored_update_rms_reduces_without_a_max():
  """An unfactored statistic is stored at least the smallest normal number (the floor that the
  update applies anyway), so the update RMS reduces ``g * rsqrt(v)`` without the max of the
  final pass: each elementwise operation inside XLA:CPU's reductions costs time (ViT-B/16's
  step took 3-8% less). Float16 statistics keep the max: their floor (6e-5) is too high."""
  params = {"bias": jnp.ones(256), "qkv": jnp.ones((64, 3, 4, 64))}  # unfactored: 64 < 128

  def rsqrt_inputs(tx):
    jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params).jaxpr
    return _rsqrt_inputs_of_reductions(jaxpr)

  assert rsqrt_inputs(af.adafactor(1e-3)) == ["_where"] * 2  # the stored statistic
  assert rsqrt_inputs(af.adafactor(1e-3, stats_dtype=jnp.float16)) == ["max"] * 2
  assert rsqrt_inputs(af.keras_adafactor(1e-3)) == ["_where"]  # (Keras factors qkv)
  # PyTorch's clamp floors the statistic at eps**2 for the update only: its state stays as
  # PyTorch's, and its reduction keeps the clamp.
  torch_inputs = rsqrt_inputs(af.torch_adafactor(1e-2))
  assert "max" in torch_inputs and "_where" not in torch_inputs, torch_inputs


@pytest.mark.parametrize("stats_dtype", [None, jnp.bfloat16, jnp.float16])
def test_stored_floor_of_unfactored_statistics_changes_no_update(stats_dtype, monkeypatch):
  """With epsilon=0, zero and tiny gradients give statistics under the smallest normal number:
  stored at that floor instead (float32, bfloat16), while the updates stay those of the
  unfloored statistics bit for bit, over steps that decay the floor and add to it."""
  params = {"b": jnp.ones(6), "qkv": jnp.ones((16, 3, 4, 64))}
  rng = np.random.default_rng(0)
  grads = [{"b": jnp.array([0.0, 1e-30, 1e-20, 1e-19, 1e-3, 1.0]) * scale,
            "qkv": jnp.asarray(rng.normal(size=(16, 3, 4, 64)), jnp.float32)}
           for scale in (1.0, 0.0, 1.0, 1e3)]
  tx = af.adafactor(1e-3, eps=0.0, stats_dtype=stats_dtype)

  def run():
    state, out = tx.init(params), []
    for g in grads:
      u, state = jax.jit(tx.update)(g, state, params)
      out.append((u, state[0].v["b"]))
    return out

  floored = run()
  monkeypatch.setattr(factored, "FLOORED_DTYPES", ())
  unfloored = run()
  tiny = float(jnp.finfo(floored[0][1].dtype).tiny)
  for (u, v), (u_ref, v_ref) in zip(floored, unfloored):
    assert_trees_close(u, u_ref, 0, 0, "updates")
    v, v_ref = np.asarray(v, np.float64), np.asarray(v_ref, np.float64)
    if stats_dtype == jnp.float16:  # not floored
      np.testing.assert_array_equal(v, v_ref)
    else:
      np.testing.assert_array_equal(v, np.where(v_ref < tiny, tiny, v_ref))
  assert float(np.asarray(floored[0][1], np.float64)[0]) == (
      0.0 if stats_dtype == jnp.float16 else tiny)


def test_fused_chain_runs_other_transformations_in_between():
  """A transformation without a kernel (any optax one) sees the updates computed so far."""
  params = mixed_tree(0, big=False)
  blocks = [af.scale_by_factored_rms(min_dim_size_to_factor=8), optax.clip(0.5),
            af.clip_by_block_rms(1.0), af.scale_by_learning_rate(0.01)]
  a, sa = trajectory(engine.chain(*blocks), params, 5)
  b, sb = trajectory(optax.chain(*blocks), params, 5)
  for x, y in zip(a, b):
    assert_trees_close(x, y, RTOL, ATOL, "engine.chain with optax.clip")
  assert_trees_close(sa, sb, 0, 0, "state")


def test_global_norm_clipping_equals_optax():
  params = mixed_tree(0, big=False)
  grads = [jax.tree.map(lambda p: 3.0 * p, params), jax.tree.map(lambda p: 1e-3 * p, params)]
  for g in grads:
    ours, _ = af.clip_by_global_norm(1.0).update(g, optax.EmptyState())
    ref, _ = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())
    assert_trees_close(ours, ref, 0, 0, "clip_by_global_norm")


@pytest.mark.parametrize("scale", [1.0, 1e30])  # 1e30: the squared norm overflows float32
def test_two_global_norm_clippings_in_one_chain(scale):
  """Keras's global clipping reduces again inside a lax.cond branch when the squared norm
  overflows: what that branch traces must not be cached for a later block (a second global
  clipping failed with an UnexpectedTracerError)."""
  params = mixed_tree(0, big=False)
  grads = jax.tree.map(lambda p: scale * p, params)
  keras_clip = af.clip_by_global_norm_nan_on_nonfinite
  chains = [[keras_clip(1.0), keras_clip(0.5)],
            [keras_clip(1.0), af.keras_adafactor(0.1, global_clipnorm=0.5)]]
  for parts in chains:
    ours, theirs = engine.chain(*parts), optax.chain(*parts)
    for update in (lambda tx: tx.update, lambda tx: jax.jit(tx.update)):
      a, _ = update(ours)(grads, ours.init(params), params)
      b, _ = update(theirs)(grads, theirs.init(params), params)
      assert_trees_close(a, b, RTOL, ATOL, "two global clippings")
      assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(a))


def test_chain_passes_integer_leaves_that_no_block_touches():
  """optax.masked in a chain may leave integer leaves alone, as in optax.chain; a block that
  would update one names it."""
  params = {"w": jnp.ones((3, 4)), "step": jnp.arange(3)}
  for inner in (optax.scale(-0.1), af.scale_by_learning_rate(0.1)):
    blocks = [optax.masked(inner, {"w": True, "step": False})]
    ours, theirs = engine.chain(*blocks), optax.chain(*blocks)
    a, _ = ours.update(params, ours.init(params), params)
    b, _ = theirs.update(params, theirs.init(params), params)
    assert a["step"].dtype == jnp.int32 and bool(jnp.array_equal(a["step"], b["step"]))
    np.testing.assert_array_equal(a["w"], b["w"])
  for tx in (engine.chain(optax.identity(), af.scale_by_learning_rate(0.1)),
             af.scale_by_learning_rate(0.1)):
    with pytest.raises(ValueError, match="'step' has dtype int32: gradients must be floating"):
      tx.update(params, tx.init(params), params)


TEMP_PRESETS = {
    "adafactor": lambda: af.adafactor(1e-3),
    "adafactor_momentum_wd": lambda: af.adafactor(1e-3, momentum=0.9, weight_decay_rate=1e-4),
    "adafactor_t5x": lambda: PRESETS["adafactor_t5x"](1e-3),
    "keras_adafactor": lambda: af.keras_adafactor(1e-3),
    "torch_adafactor": lambda: af.torch_adafactor(1e-2, weight_decay=1e-2),
    "hf_adafactor": lambda: af.hf_adafactor(1e-3, relative_step=False, beta1=0.9,
                                            weight_decay=1e-2),
    # f32 momentum: a bf16 buffer (big_vision's default) is read after the step overwrites it,
    # and XLA copies it first (a temporary of the buffer's size; see docs/design/performance-history.md)
    "big_vision_adafactor": lambda: af.big_vision_adafactor(1e-3, weight_decay=1e-4,
                                                            dtype_momentum=jnp.float32),
    # the clipping divide before an unfactored leaf's second moment (qkv)
    "adafactor_global_norm": lambda: af.adafactor(1e-3, global_norm_clip_threshold=1.0),
    # Keras's base-optimizer features extend the formula too (they stored their output)
    "keras_adafactor_clipnorm_wd_loss_scale_ema": lambda: af.keras_adafactor(
        1e-3, weight_decay=1e-2, clipnorm=1.0, loss_scale_factor=8.0, use_ema=True,
        exclude_from_weight_decay=["bias"]),
    # the EMA reads the update apart (before: stored, shared by the EMA and the overwrite)
    "keras_adafactor_ema_overwrite": lambda: af.keras_adafactor(
        1e-3, weight_decay=1e-2, clipnorm=1.0, loss_scale_factor=8.0, use_ema=True,
        ema_overwrite_frequency=2),
    "keras_adafactor_global_clipnorm": lambda: af.keras_adafactor(
        1e-3, global_clipnorm=1.0, loss_scale_factor=8.0),
    "keras_adafactor_clipvalue": lambda: af.keras_adafactor(1e-3, clipvalue=1.0,
                                                            weight_decay=1e-2),
}


@pytest.mark.hlo
@pytest.mark.parametrize("name", list(TEMP_PRESETS))
def test_no_full_size_temporaries(name):
  """The compiled step (donated params and state) needs at most 10% of the parameter bytes as
  temporaries, on a tree of factored and unfactored leaves above and below the offset size."""
  params = {
      "embed": jnp.zeros((2048, 256)),
      "kernel": jnp.zeros((256, 1024)),
      "qkv": jnp.zeros((256, 3, 4, 64)),  # unfactored under "largest" (64 < 128)
      "t3": jnp.zeros((4, 64, 64)),
      "bias": jnp.zeros(1024),
      "small": jnp.zeros((64, 64)),
  }
  tx = TEMP_PRESETS[name]()
  fraction = _temp_fraction(tx, params)
  assert fraction <= 0.10, f"{name}: temporaries are {fraction:.1%} of the parameter bytes"


@pytest.mark.parametrize("factory", [
    lambda: af.adadelta(1.0, weight_decay=1e-3),
    lambda: af.keras_adadelta(1.0, weight_decay=1e-3),
    # 252% before the EMA read the update apart
    lambda: af.keras_adadelta(1.0, use_ema=True, ema_overwrite_frequency=3)],
    ids=["adadelta", "keras_adadelta", "keras_adadelta_ema_overwrite"])
@pytest.mark.hlo
def test_adadelta_stores_no_update(factory):
  """Adadelta has no reduction; its update (a division) is computed for the new E[delta**2]
  and again in the final pass instead of stored (200% before). What remains is XLA's copy of
  E[delta**2]: the final pass reads the old one, which the state output overwrites."""
  params = {"kernel": jnp.zeros((256, 1024)), "bias": jnp.zeros(1024)}
  fraction = _temp_fraction(factory(), params)
  assert fraction <= 1.02, f"temporaries are {fraction:.1%} of the parameter bytes"


@pytest.mark.hlo
def test_gradient_accumulation_stores_only_the_update():
  """With Keras's gradient accumulation the update comes out of a `lax.cond` (the inner step
  runs on update steps only), and a cond's output is a buffer of its own: that one update is
  all that is stored. The mean gradient is the inner step's formula, and the sums are written
  in place after the cond (300% before)."""
  params = {"kernel": jnp.zeros((256, 1024)), "bias": jnp.zeros(1024)}
  tx = af.keras_adafactor(1e-3, gradient_accumulation_steps=3, weight_decay=1e-2, clipnorm=1.0)
  fraction = _temp_fraction(tx, params)
  assert fraction <= 1.02, f"temporaries are {fraction:.1%} of the parameter bytes"


def test_nan_statistics_still_give_nan_updates():
  """The offsets read the first element of each statistic: a NaN there must not turn into a
  finite update (it stays NaN, as the statistic itself makes the update)."""
  params = {"w": jnp.ones((512, 256)), "v": jnp.ones((300, 300))}
  tx = af.adafactor(1e-3, factored=True, min_dim_size_to_factor=128)
  state = tx.init(params)
  bad = state[0]._replace(v_col=jax.tree.map(lambda c: c.at[0].set(jnp.nan), state[0].v_col))
  updates, _ = jax.jit(tx.update)(params, (bad,) + tuple(state[1:]), params)
  assert all(bool(np.isnan(np.asarray(u)).any()) for u in jax.tree.leaves(updates))


HALF_TREES = {
    # unfactored qkv (64 < 128), momentum and weight decay
    "momentum_wd": (lambda dt: {"embed": jnp.zeros((2048, 256), dt),
                                "kernel": jnp.zeros((256, 1024), dt),
                                "qkv": jnp.zeros((256, 3, 4, 64), dt), "bias": jnp.zeros(1024, dt)},
                    lambda: af.adafactor(1e-3, momentum=0.9, weight_decay_rate=1e-3)),
    # t5x's global-norm clipping: one more reduction of every leaf
    "global_norm": (lambda dt: {"embed": jnp.zeros((2048, 256), dt),
                                "kernel": jnp.zeros((256, 1024), dt), "bias": jnp.zeros(1024, dt)},
                    lambda: af.adafactor(1e-3, global_norm_clip_threshold=1.0)),
    # Keras's global norm, with its branch for an overflowing norm (a maximum and a sum)
    "keras_global_clipnorm": (lambda dt: {"embed": jnp.zeros((2048, 256), dt),
                                          "kernel": jnp.zeros((256, 1024), dt),
                                          "bias": jnp.zeros(1024, dt)},
                              lambda: af.keras_adafactor(1e-3, global_clipnorm=1.0)),
    # Keras's decoupled weight decay: the parameter RMS reads the decayed weights, computed in
    # its blocks from slices of the params (before: stored, 109% here)
    "keras_weight_decay": (lambda dt: {"embed": jnp.zeros((2048, 256), dt),
                                       "kernel": jnp.zeros((256, 1024), dt),
                                       "bias": jnp.zeros(1024, dt)},
                           lambda: af.keras_adafactor(1e-3, weight_decay=1e-2,
                                                      exclude_from_weight_decay=["bias"])),
}


# (the Keras features in bfloat16 only: their float16 programs are the same but for the dtype,
# and these compiles are among the suite's slowest)
@pytest.mark.parametrize("dtype,name", [
    (dtype, name) for name in HALF_TREES for dtype in (jnp.bfloat16, jnp.float16)
    if not (name.startswith("keras_") and dtype == jnp.float16)])
@pytest.mark.hlo
def test_half_precision_reductions_leave_no_full_size_temporaries(dtype, name, monkeypatch):
  """XLA:CPU reduces float32 only: each reduction of a half-precision leaf reads a stored
  float32 copy of it. In blocks chained one after the other (`engine.Link`), the copies of a few
  blocks exist at a time. Blocks of 2**14 elements here, so that this small tree has many."""
  monkeypatch.setattr(chunked, "BLOCK_ELEMENTS", 1 << 14)
  tree, tx = HALF_TREES[name]
  params = tree(dtype)
  fraction = _temp_fraction(tx(), params)
  assert fraction <= 0.10, f"temporaries are {fraction:.1%} of the parameter bytes"
  # Without the blocks, the float32 copies are all there (the check above can fail).
  monkeypatch.setattr(chunked, "blocked", lambda inputs, shape: False)
  assert _temp_fraction(tx(), params) >= 1.0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("factory", [
    lambda: af.adafactor(1e-3, momentum=0.9, weight_decay_rate=1e-3),
    lambda: af.keras_adafactor(1e-3, weight_decay=1e-2),
    lambda: af.keras_adafactor(1e-3, global_clipnorm=1.0)],
    ids=["momentum_wd", "keras_weight_decay", "keras_global_clipnorm"])
@pytest.mark.hlo
def test_half_precision_leaves_of_one_block_are_chained_too(dtype, factory, monkeypatch):
  """A half-precision leaf of at most `chunked.BLOCK_ELEMENTS` is reduced in one block (no
  slices), linked to the block before by an integer add of the link's zero to its bits: the
  float32 copies of a few blocks exist at a time, at most ``12 * BLOCK_ELEMENTS`` bytes. Without
  a link (a slice of the whole axis is the array itself) XLA:CPU computes the copies all at
  once; with a floating offset too, for bfloat16 (whose arithmetic it does in float32)."""
  monkeypatch.setattr(chunked, "BLOCK_ELEMENTS", 1 << 16)
  params = {**{f"w{i}": jnp.zeros((256, 256), dtype) for i in range(6)},  # factored
            **{f"q{i}": jnp.zeros((256, 4, 64), dtype) for i in range(6)}}  # unfactored
  assert all(engine.MIN_SIZE_APART <= x.size <= chunked.BLOCK_ELEMENTS
             for x in jax.tree.leaves(params))
  n_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  bound = 12 * chunked.BLOCK_ELEMENTS

  def temp():
    tx = factory()
    jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params)
    assert "dynamic_slice" not in str(jaxpr)  # one block per leaf
    return _temp_fraction(tx, params) * n_bytes

  got = temp()
  assert got <= bound, f"{got / 1e6:.2f} MB of temporaries"
  # The check can fail: without the link, and (bfloat16) with a floating offset.
  rows = chunked._rows
  others = {"unlinked": lambda x, zero: x}
  if dtype == jnp.bfloat16:
    others["floating offset"] = lambda x, zero: engine.offset(x, zero.astype(jnp.float32))
  for name, whole in others.items():
    monkeypatch.setattr(chunked, "_rows", lambda x, first, size, zero, whole=whole: (
        rows(x, first, size, zero) if size < x.shape[0] else whole(x, zero)))
    assert temp() > 2 * bound, name


def test_largest_in_blocks_equals_max(block_elements):
  """`engine.largest` of a large half-precision array (the overflow branch of Keras's global
  norm), in 5 blocks or one, is ``jnp.max(..., initial=0)`` exactly, with a NaN in the array
  too (which XLA:CPU's maximum reduction skips here, in both)."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(300, 17, 16)), jnp.bfloat16)
  bad = x.at[299, 3, 2].set(jnp.nan)
  f = lambda u: jnp.abs(u.astype(jnp.float32))
  largest = jax.jit(lambda a: engine.largest(f, [a], a.shape, engine.Link()))
  assert float(largest(x)) == float(jnp.max(f(x), initial=0.0)) > 0
  for at in [(0, 0, 0), (150, 8, 8), (299, 16, 15)]:  # in the first, a middle, the last block
    assert float(largest(x.at[at].set(-64.0))) == 64.0
  np.testing.assert_array_equal(np.asarray(largest(bad)),
                                np.asarray(jax.jit(lambda a: jnp.max(f(a), initial=0.0))(bad)))


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1), (1, 2)])
def test_mean_in_blocks_equals_mean(axes, block_elements):
  """`engine.mean` (and `engine.total`) of a large half-precision array (in blocks of rows,
  float32 sums; here in 5 blocks, or in one of the whole array) equals jnp.mean (jnp.sum) of
  its float32 values; a NaN in one array's block makes only that array's mean NaN (the link
  between blocks stays an exact zero)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(300, 17, 16)), jnp.bfloat16)
  assert x.size >= engine.MIN_SIZE_APART
  bad = x.at[299, 3, 2].set(jnp.nan)

  def means(a, b):
    link = engine.Link()
    sq = lambda u: jnp.square(u.astype(jnp.float32))
    return (engine.mean(sq, [a], a.shape, axes, link), engine.mean(sq, [b], b.shape, axes, link,
                                                                 keepdims=True))

  got_bad, got = jax.jit(means)(bad, x)
  if axes == (0, 1):  # `engine.total`: the same blocks, summed over all axes
    sq = lambda u: jnp.square(u.astype(jnp.float32))
    got_total = jax.jit(lambda a: engine.total(sq, [a], a.shape, engine.Link()))(x)
    np.testing.assert_allclose(float(got_total), float(jnp.sum(sq(x))), rtol=2e-6)
  want = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=axes, keepdims=True)
  want_bad = jnp.mean(jnp.square(bad.astype(jnp.float32)), axis=axes)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6)
  np.testing.assert_allclose(np.asarray(got_bad), np.asarray(want_bad), rtol=2e-6,
                             equal_nan=True)
  assert bool(jnp.isnan(got_bad).any()) and bool(jnp.isfinite(got).all())


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_blocks_of_a_recipe_equal_blocks_of_the_array(dtype, block_elements):
  """A reduction in blocks of an array with a `Link.recipe` computes its blocks from slices of
  the recipe's inputs (in one block, from the inputs offset by the link's zero): the same
  numbers as the blocks of the stored array, Keras's decayed weights rounded op by op (XLA
  would otherwise keep half-precision products in float32 inside the reduction, which moves
  this mean by about 1e-3)."""
  rng = np.random.default_rng(0)
  p = jnp.asarray(rng.normal(size=(2048, 256)), dtype)
  wd, lr = jnp.asarray(0.05, dtype), jnp.asarray(0.1, dtype)
  sq = lambda u: jnp.square(u.astype(jnp.float32))

  def mean_of(p, wd, lr, fn):
    x = weight_decay._decayed(p, True, wd, lr)
    link = engine.Link()
    if fn is not None:
      link.recipe(x, fn, [p, True, wd, lr])
    return engine.mean(sq, [x], x.shape, (0, 1), link)

  stored = jax.jit(lambda *a: mean_of(*a, None))(p, wd, lr)
  recipe = jax.jit(lambda *a: mean_of(*a, weight_decay._decayed_rounded))(p, wd, lr)
  unrounded = jax.jit(lambda *a: mean_of(*a, weight_decay._decayed))(p, wd, lr)
  # The reference: the decayed weights as XLA computes them in a program of their own (a stored
  # array), their mean in float64. Like with like: XLA:CPU contracts ``p - (p * wd) * lr`` into
  # a fused multiply-add, which rounds once where two operations round twice, and in float16 it
  # does so only on CPUs with native float16 arithmetic (AVX512-FP16: Intel Sapphire Rapids and
  # later; elsewhere float16 is computed in float32 and rounded after each operation). So the
  # op-by-op eager values differ from any compiled ones by an ulp on 0.5% of the elements there
  # (the mean by 3.6e-6), and agree elsewhere.
  decayed = jax.jit(weight_decay._decayed, static_argnums=1)(p, True, wd, lr)
  reference = np.mean(np.square(np.asarray(decayed, np.float64)))
  assert float(recipe) == float(stored)
  np.testing.assert_allclose(float(recipe), reference, rtol=1e-6)
  if dtype == jnp.bfloat16:  # 7 bits of mantissa: here the rounding matters
    assert abs(float(unrounded) - reference) > 1e-5 * reference
