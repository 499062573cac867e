"""The shared contract that every optimizer of the package passes, all under jax.jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close
from helpers import contract_tree
from helpers import grads_like
from presets import INJECTABLE
from presets import OPTIONS
from presets import PRESETS

import adafactor_jax as af

NAMES = sorted(PRESETS)
OPTION_NAMES = sorted(OPTIONS)


def spec(tree):
  return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


def types(tree):
  """The tree's structure and the `jax.typeof` of each leaf with its key path: shape, dtype,
  weak type and (on a mesh of Explicit axes) sharding."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return treedef, [(jax.tree_util.keystr(path), jax.typeof(x)) for path, x in flat]


@pytest.mark.parametrize("name", OPTION_NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_state_types_stable_updates_finite(name, dtype):
  """The contract: the `jax.typeof` of every state leaf (shape, dtype, weak type and, on a mesh
  of Explicit axes, sharding) is the same after `init` (eager and jitted) and after `update`
  (eager and jitted), so that a step compiles once and the state is a `lax.cond`/`lax.scan`
  operand (on meshes of Explicit and Auto axes: state_types_check.py); updates have the params'
  shapes and dtypes and are finite, and so is the state."""
  tx = OPTIONS[name](0.01)
  params = contract_tree(dtype)
  state = tx.init(params)
  expected = types(state)
  assert types(jax.jit(tx.init)(params)) == expected
  _, eager = tx.update(grads_like(params, 7), state, params)
  assert types(eager) == expected
  update = jax.jit(tx.update)
  for i in range(3):  # (accumulation: calls that update and calls that do not)
    updates, new_state = update(grads_like(params, i), state, params)
    assert types(new_state) == expected
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
      assert u.shape == p.shape and u.dtype == p.dtype
      assert bool(jnp.all(jnp.isfinite(u)))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new_state)
               if jnp.issubdtype(x.dtype, jnp.inexact))
    params = optax.apply_updates(params, updates)
    state = new_state
  # the second call hit the compilation cache
  assert update._cache_size() == 1


@pytest.mark.parametrize("name", OPTION_NAMES)
def test_state_is_a_scan_carry_and_a_cond_operand(name):
  """Three steps under `lax.scan` (the state in the carry, each step inside a `lax.cond`) equal
  three jitted steps, and the state's types are those of `init`."""
  tx = OPTIONS[name](0.01)
  params = contract_tree(jnp.float32)
  grads = [grads_like(params, i) for i in range(3)]

  def step(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  def guarded(carry, g):  # the step, or nothing on a non-finite gradient (never here)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(g)]))
    return jax.lax.cond(finite, lambda c: step(c, g)[0], lambda c: c, carry), None

  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
  start = (params, tx.init(params))
  (p_scan, s_scan), _ = jax.jit(lambda c, gs: jax.lax.scan(guarded, c, gs))(start, stacked)
  carry, jstep = start, jax.jit(step)
  for g in grads:
    carry, _ = jstep(carry, g)
  assert types(s_scan) == types(start[1])
  # Another compilation of the same arithmetic (inside a while loop): XLA may fuse and reduce
  # in another order, a few float32 ulps per step.
  assert_trees_close(p_scan, carry[0], 1e-6, 1e-6, name)


@pytest.mark.parametrize("name", OPTION_NAMES)
def test_optax_tree_map_params(name):
  """``optax.tree.map_params`` (how sharded or offloaded states are built from the params'
  layout) works on every state: the identity changes nothing, and a function reaches exactly the
  subtrees shaped like the params (optax's rule), never the counters."""
  tx = OPTIONS[name](0.01)
  params = contract_tree(jnp.float32)
  state = tx.init(params)
  same = optax.tree.map_params(tx, lambda v: v, state)
  assert types(same) == types(state)
  marked = optax.tree.map_params(tx, lambda v: "param", state,
                                 transform_non_params=lambda v: "other")
  assert jax.tree.structure(marked) == jax.tree.structure(jax.tree.map(lambda _: 0, state))
  labels = dict(zip(types(state)[1], jax.tree.leaves(marked)))
  for (path, aval), label in labels.items():
    if path.endswith(".count") or path.endswith(".skipped"):
      assert label == "other", path


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_zeros_on_non_boundary_steps(name):
  tx = optax.MultiSteps(PRESETS[name](0.01), every_k_schedule=3)
  params = contract_tree(jnp.float32)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for i in range(6):
    updates, state = update(grads_like(params, i), state, params)
    zero = all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
    assert zero == (i % 3 != 2), i
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("name", sorted(INJECTABLE))
def test_inject_hyperparams_same_state_and_numbers(name):
  """``optax.inject_hyperparams(preset)`` has the plain preset's inner state (structure and
  types, after init and after each update) and its numbers."""
  factory, injected, static = INJECTABLE[name]
  plain = factory(**injected, **static)
  inj = optax.inject_hyperparams(factory, static_args=tuple(static))(**injected, **static)
  params = contract_tree(jnp.float32)
  s1, s2 = plain.init(params), inj.init(params)
  assert types(s2.inner_state) == types(s1)
  assert types(jax.jit(inj.init)(params).inner_state) == types(s1)
  for i in range(4):
    g = grads_like(params, i)
    u1, s1 = jax.jit(plain.update)(g, s1, params)
    u2, s2 = jax.jit(inj.update)(g, s2, params)
    assert_trees_close(u1, u2, 1e-6, 1e-7, name)
    assert types(s2.inner_state) == types(s1)
    assert_trees_close(s2.inner_state, s1, 1e-6, 1e-7, name)
  assert set(injected) <= set(s2.hyperparams)
  # an injected learning rate changed between steps is the one the update uses
  lr_key = "lr" if "lr" in injected else "learning_rate"
  s3 = s2._replace(hyperparams={**s2.hyperparams, lr_key: jnp.asarray(0.002)})
  u3, _ = jax.jit(inj.update)(grads_like(params, 9), s3, params)
  other = factory(**{**injected, lr_key: 0.002}, **static)
  u4, _ = jax.jit(other.update)(grads_like(params, 9), s1, params)
  assert_trees_close(u3, u4, 1e-6, 1e-7, name)


@pytest.mark.parametrize("rate", [None, 1e-3])
@pytest.mark.parametrize("exponent", [0.0, 1.0])
def test_injected_t5x_weight_decay_exponent(rate, exponent):
  """t5x's ``weight_decay_rate_lr_exponent`` injected (an array): 0 is off, as a concrete 0 is
  (the decay is the rate, or none; not ``lr ** 0 = 1``, which would zero the params)."""
  kw = dict(learning_rate=0.01, weight_decay_rate=rate, weight_decay_rate_lr_exponent=exponent,
            min_dim_size_to_factor=8)
  plain = af.adafactor(**kw)
  inj = optax.inject_hyperparams(af.adafactor, static_args=("min_dim_size_to_factor",))(**kw)
  params = contract_tree(jnp.float32)
  s1, s2 = plain.init(params), inj.init(params)
  for i in range(2):
    u1, s1 = jax.jit(plain.update)(grads_like(params, i), s1, params)
    u2, s2 = jax.jit(inj.update)(grads_like(params, i), s2, params)
    assert_trees_close(u2, u1, 1e-6, 1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_masked_leaves_pass_through(name):
  params = contract_tree(jnp.float32)
  mask = {k: k != "b" for k in params}
  tx = optax.masked(PRESETS[name](0.01), mask)
  g = grads_like(params)
  updates, _ = jax.jit(tx.update)(g, tx.init(params), params)
  np.testing.assert_array_equal(updates["b"], g["b"])
  assert not np.array_equal(updates["w"], g["w"])


@pytest.mark.parametrize("name", NAMES)
def test_unknown_extra_args_accepted(name):
  tx = PRESETS[name](0.01)
  params = contract_tree(jnp.float32)
  g = grads_like(params)
  u1, _ = tx.update(g, tx.init(params), params, value=jnp.asarray(1.0), unknown_kw="x")
  u2, _ = tx.update(g, tx.init(params), params)
  assert_trees_close(u1, u2, 0, 0)


@pytest.mark.parametrize("name", NAMES)
def test_init_on_shape_dtype_struct(name):
  tx = PRESETS[name](0.01)
  params = contract_tree(jnp.float32)
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  assert spec(tx.init(shapes)) == spec(tx.init(params))
  assert spec(jax.eval_shape(tx.init, shapes)) == spec(tx.init(params))


@pytest.mark.parametrize("name", NAMES)
def test_apply_if_finite(name):
  tx = optax.apply_if_finite(PRESETS[name](0.01), max_consecutive_errors=3)
  params = contract_tree(jnp.float32)
  state = tx.init(params)
  update = jax.jit(tx.update)
  bad = dict(grads_like(params), w=jnp.full((16, 12), jnp.nan))
  updates, state = update(bad, state, params)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
  assert int(state.notfinite_count) == 1
  updates, state = update(grads_like(params), state, params)
  assert int(state.notfinite_count) == 0
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  assert not all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
