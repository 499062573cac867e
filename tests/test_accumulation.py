"""adafactor_jax._src.accumulation: Keras's gradient accumulation against its math."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close
from helpers import leaf_by_leaf
from helpers import run_block
from helpers import small_tree

import adafactor_jax as af
from adafactor_jax._src import accumulation

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("inner", ["optax.sgd", "chain"])
def test_accumulate_gradients(inner):
  k = 3
  gs = [small_tree(i) for i in range(2 * k)]
  params = small_tree(9)
  inner_tx = (optax.sgd(0.5) if inner == "optax.sgd" else
              af.chain(af.clip_by_value(0.5), af.scale_by_learning_rate(0.5)))
  us, state = run_block(af.accumulate_gradients(inner_tx, k), gs, params)
  zero = jax.tree.map(jnp.zeros_like, gs[0])
  acc = zero
  for i, (g, u) in enumerate(zip(gs, us)):
    if (i + 1) % k:
      assert_trees_close(u, zero, 0, 0)
      acc = jax.tree.map(jnp.add, acc, g)
      continue
    mean = leaf_by_leaf(lambda x, a: accumulation.mean_gradient(x, a, k), g, acc)
    if inner == "chain":
      mean = jax.tree.map(lambda x: jnp.clip(x, -0.5, 0.5), mean)
    assert_trees_close(u, jax.tree.map(lambda x: -0.5 * x, mean), 1e-6, 1e-7)
    acc = zero
  assert_trees_close(state.acc, zero, 0, 0)
  assert int(state.count) == 2 * k


def test_accumulate_gradients_inner_state_moves_on_update_steps_only():
  tx = af.accumulate_gradients(af.scale_by_momentum(0.5), 2)
  params = {"w": jnp.zeros(2)}
  _, state = run_block(tx, [{"w": jnp.ones(2)}] * 3, params)
  np.testing.assert_allclose(state.inner_state.mu["w"], [0.5, 0.5])  # one update of the mean 1
  np.testing.assert_allclose(state.acc["w"], [1.0, 1.0])
