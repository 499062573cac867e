"""Every optax wrapper that takes a transformation, with every preset (presets.INJECTABLE: each
preset with its hyperparameters; inject_hyperparams itself is in test_contract.py).

Each wrapper runs jitted, keeps its state's types from step to step, and gives the numbers that
its definition implies, computed from the preset alone: a wrapper that passes the preset's update
through equals it; masked and partitioned leaves equal the preset run on those leaves alone;
MultiSteps applies the preset to the mean gradient; reduce_on_plateau scales it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close
from helpers import contract_tree
from jax.flatten_util import ravel_pytree
from presets import INJECTABLE

NAMES = sorted(INJECTABLE)
RTOL, ATOL = 1e-6, 1e-7  # another compilation of the same float32 arithmetic


def preset(name):
  factory, injected, static = INJECTABLE[name]
  return factory(**injected, **static)


def types(tree):
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return treedef, [(jax.tree_util.keystr(p), jax.typeof(x)) for p, x in flat]


def run(tx, params, grads, **extra):
  """Updates of each jitted step (params fixed) and the final state; the state's types must
  not change."""
  state = tx.init(params)
  expected = types(state)
  update = jax.jit(tx.update)
  out = []
  for g in grads:
    u, state = update(g, state, params, **extra)
    assert types(state) == expected
    out.append(u)
  return out, state


def grads_for(params, n=3):
  """`n` random gradient trees like `params`."""
  rng = np.random.default_rng(10)
  return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
          for _ in range(n)]


@pytest.mark.parametrize("name", NAMES)
def test_chain_with_optax_transformations(name):
  params = contract_tree()
  grads = grads_for(params)
  ours, _ = run(preset(name), params, grads)
  chained, _ = run(optax.chain(optax.identity(), preset(name), optax.scale(2.0)), params, grads)
  for a, b in zip(chained, ours):
    assert_trees_close(a, jax.tree.map(lambda x: 2.0 * x, b), RTOL, ATOL, name)


def _sub(tree, keys):
  return {k: tree[k] for k in keys}


@pytest.mark.parametrize("name", NAMES)
def test_masked(name):
  params = contract_tree()
  grads = grads_for(params)
  mask = {"w": True, "t3": True, "b": False, "s": False, "one": True}
  masked, _ = run(optax.masked(preset(name), mask), params, grads)
  keys = [k for k, m in mask.items() if m]
  alone, _ = run(preset(name), _sub(params, keys), [_sub(g, keys) for g in grads])
  for u, a, g in zip(masked, alone, grads):
    assert_trees_close(_sub(u, keys), a, RTOL, ATOL, name)
    for k in mask.keys() - set(keys):
      np.testing.assert_array_equal(u[k], g[k])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("wrapper", ["partition", "multi_transform"])
def test_partition(name, wrapper):
  params = contract_tree()
  grads = grads_for(params)
  labels = {"w": "ours", "t3": "sgd", "b": "ours", "s": "sgd", "one": "ours"}
  tx = getattr(optax, wrapper)({"ours": preset(name), "sgd": optax.sgd(0.1)}, labels)
  both, _ = run(tx, params, grads)
  keys = [k for k, v in labels.items() if v == "ours"]
  alone, _ = run(preset(name), _sub(params, keys), [_sub(g, keys) for g in grads])
  for u, a, g in zip(both, alone, grads):
    assert_trees_close(_sub(u, keys), a, RTOL, ATOL, name)
    for k in labels.keys() - set(keys):
      np.testing.assert_allclose(u[k], -0.1 * g[k], rtol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_multi_steps(name):
  params = contract_tree()
  grads = grads_for(params, 2)
  stepped, _ = run(optax.MultiSteps(preset(name), every_k_schedule=2), params, grads)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(stepped[0]))
  mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  alone, _ = run(preset(name), params, [mean])
  assert_trees_close(stepped[1], alone[0], RTOL, ATOL, name)


@pytest.mark.parametrize("name", NAMES)
def test_apply_if_finite(name):
  params = contract_tree()
  grads = grads_for(params)
  bad = dict(grads[0], w=jnp.full((16, 12), jnp.inf))
  guarded, state = run(optax.apply_if_finite(preset(name), max_consecutive_errors=5), params,
                       [bad] + grads)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(guarded[0]))
  alone, plain_state = run(preset(name), params, grads)
  for a, b in zip(guarded[1:], alone):
    assert_trees_close(a, b, RTOL, ATOL, name)
  assert int(state.total_notfinite) == 1
  assert_trees_close(state.inner_state, plain_state, RTOL, ATOL, name)


@pytest.mark.parametrize("name", NAMES)
def test_lookahead(name):
  """The fast optimizer is the preset, on the fast params; every second step the slow params
  move half way to the fast ones."""
  fast = contract_tree()
  grads = grads_for(fast, 2)
  tx = optax.lookahead(preset(name), sync_period=2, slow_step_size=0.5)
  params = optax.LookaheadParams.init_synced(fast)
  state = tx.init(params)
  expected = types(state)
  step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
      *tx.update(g, s, p)))
  ref_state, ref_step = preset(name).init(fast), jax.jit(preset(name).update)
  ref = fast
  for i, g in enumerate(grads):
    params, state = step(params, state, g)
    assert types(state) == expected
    u, ref_state = ref_step(g, ref_state, ref)
    ref = optax.apply_updates(ref, u)
    if i == 0:
      assert_trees_close(params.fast, ref, RTOL, ATOL, name)
  synced = jax.tree.map(lambda s, f: s + 0.5 * (f - s), fast, ref)
  assert_trees_close(params.slow, synced, RTOL, ATOL, name)
  assert_trees_close(params.fast, synced, RTOL, ATOL, name)


@pytest.mark.parametrize("name", NAMES)
def test_flatten(name):
  """optax.flatten runs the preset on one vector of all the params (which factors nothing)."""
  params = contract_tree()
  grads = grads_for(params)
  flat, _ = run(optax.flatten(preset(name)), params, grads)
  ravel = lambda t: ravel_pytree(t)[0]
  unravel = ravel_pytree(params)[1]
  alone, state = run(preset(name), ravel(params), [ravel(g) for g in grads])
  for a, b in zip(flat, alone):
    assert_trees_close(a, unravel(b), RTOL, ATOL, name)
  assert all(x.ndim <= 1 for x in jax.tree.leaves(state))


@pytest.mark.parametrize("name", ["adafactor", "adadelta"])
def test_flatten_equals_optax(name):
  """The same wrapper around optax's own optimizer: the live reference."""
  factory, injected, static = INJECTABLE[name]
  reference = getattr(optax, name)(**injected, **static)
  params = contract_tree()
  grads = grads_for(params)
  ours, _ = run(optax.flatten(preset(name)), params, grads)
  theirs, _ = run(optax.flatten(reference), params, grads)
  for a, b in zip(ours, theirs):
    assert_trees_close(a, b, 1e-5, 1e-6, name)


@pytest.mark.parametrize("name", NAMES)
def test_reduce_on_plateau_after(name):
  """optax.contrib.reduce_on_plateau chained after the preset, fed a loss that does not improve:
  the update is the preset's times the plateau's scale, which halves after `patience` steps."""
  params = contract_tree()
  grads = grads_for(params, 4)
  tx = optax.chain(preset(name), optax.contrib.reduce_on_plateau(factor=0.5, patience=1))
  updates, state = run(tx, params, grads, value=jnp.asarray(1.0))
  alone, _ = run(preset(name), params, grads)
  scales = []
  chained_state = tx.init(params)
  for g in grads:
    _, chained_state = jax.jit(tx.update)(g, chained_state, params, value=jnp.asarray(1.0))
    scales.append(float(chained_state[1].scale))
  assert scales[0] == 1.0 and scales[-1] < 1.0
  for u, a, s in zip(updates, alone, scales):
    assert_trees_close(u, jax.tree.map(lambda x, s=s: s * x, a), RTOL, ATOL, name)
