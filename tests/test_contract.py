"""The shared contract that every optimizer of the package passes, all under jax.jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close
from presets import INJECTABLE
from presets import PRESETS

NAMES = sorted(PRESETS)


def params_of(dtype):
  rng = np.random.default_rng(0)
  shapes = {"w": (16, 12), "t3": (3, 16, 10), "b": (12,), "s": (), "one": (1, 9)}
  return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}


def grads_like(params, seed=1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def spec(tree):
  return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_shapes_dtypes_finite_and_stable_structure(name, dtype):
  tx = PRESETS[name](0.01)
  params = params_of(dtype)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for i in range(3):
    updates, new_state = update(grads_like(params, i), state, params)
    assert spec(new_state) == spec(state)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
      assert u.shape == p.shape and u.dtype == p.dtype
      assert bool(jnp.all(jnp.isfinite(u)))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new_state)
               if jnp.issubdtype(x.dtype, jnp.inexact))
    params = optax.apply_updates(params, updates)
    state = new_state
  # the second call hit the compilation cache
  assert update._cache_size() == 1


@pytest.mark.parametrize("name", NAMES)
def test_state_stable_across_lax_cond(name):
  tx = PRESETS[name](0.01)
  params = params_of(jnp.float32)
  state = tx.init(params)

  @jax.jit
  def step(pred, state):
    return jax.lax.cond(pred, lambda s: tx.update(grads_like(params), s, params)[1],
                        lambda s: s, state)

  new = step(True, state)
  assert spec(new) == spec(state)
  assert spec(step(False, new)) == spec(state)


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_zeros_on_non_boundary_steps(name):
  tx = optax.MultiSteps(PRESETS[name](0.01), every_k_schedule=3)
  params = params_of(jnp.float32)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for i in range(6):
    updates, state = update(grads_like(params, i), state, params)
    zero = all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
    assert zero == (i % 3 != 2), i
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("name", sorted(INJECTABLE))
def test_inject_hyperparams_same_numbers(name):
  factory, injected, static = INJECTABLE[name]
  plain = factory(**injected, **static)
  inj = optax.inject_hyperparams(factory, static_args=tuple(static))(**injected, **static)
  params = params_of(jnp.float32)
  s1, s2 = plain.init(params), inj.init(params)
  for i in range(4):
    g = grads_like(params, i)
    u1, s1 = jax.jit(plain.update)(g, s1, params)
    u2, s2 = jax.jit(inj.update)(g, s2, params)
    assert_trees_close(u1, u2, 1e-6, 1e-7, name)
  assert set(injected) <= set(s2.hyperparams)
  # change the injected learning rate: the update scales with it
  lr_key = "learning_rate"
  s3 = s2._replace(hyperparams={**s2.hyperparams, lr_key: jnp.asarray(0.0)})
  u3, _ = inj.update(grads_like(params), s3, params)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(u3))


@pytest.mark.parametrize("name", NAMES)
def test_masked_leaves_pass_through(name):
  params = params_of(jnp.float32)
  mask = {k: k != "b" for k in params}
  tx = optax.masked(PRESETS[name](0.01), mask)
  g = grads_like(params)
  updates, _ = jax.jit(tx.update)(g, tx.init(params), params)
  np.testing.assert_array_equal(updates["b"], g["b"])
  assert not np.array_equal(updates["w"], g["w"])


@pytest.mark.parametrize("name", NAMES)
def test_unknown_extra_args_accepted(name):
  tx = PRESETS[name](0.01)
  params = params_of(jnp.float32)
  g = grads_like(params)
  u1, _ = tx.update(g, tx.init(params), params, value=jnp.asarray(1.0), unknown_kw="x")
  u2, _ = tx.update(g, tx.init(params), params)
  assert_trees_close(u1, u2, 0, 0)


@pytest.mark.parametrize("name", NAMES)
def test_init_on_shape_dtype_struct(name):
  tx = PRESETS[name](0.01)
  params = params_of(jnp.float32)
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  assert spec(tx.init(shapes)) == spec(tx.init(params))
  assert spec(jax.eval_shape(tx.init, shapes)) == spec(tx.init(params))


@pytest.mark.parametrize("name", NAMES)
def test_apply_if_finite(name):
  tx = optax.apply_if_finite(PRESETS[name](0.01), max_consecutive_errors=3)
  params = params_of(jnp.float32)
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
