"""adafactor_jax._src.ema: the moving average of the weights against its math."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close
from helpers import small_tree

import adafactor_jax as af
from adafactor_jax._src import ema

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("overwrite_frequency", [None, 2])
def test_ema_params(overwrite_frequency):
  tx = optax.chain(optax.sgd(0.1), af.ema_params(0.9, overwrite_frequency))
  params = small_tree(0)
  state = tx.init(params)
  avg = jax.tree.map(jnp.zeros_like, params)
  step = jax.jit(tx.update)
  for i in range(4):
    g = small_tree(i + 1)
    updates, state = step(g, state, params)
    new_p = jax.tree.map(lambda p, x: p - 0.1 * x, params, g)
    avg = jax.tree.map(lambda a, p: ema.ema_averaged(a, p, 0.0 if i == 0 else 0.9), avg, new_p)
    assert_trees_close(state[1].ema, avg, 1e-6, 1e-7)
    expected = avg if overwrite_frequency and (i + 1) % overwrite_frequency == 0 else new_p
    params = optax.apply_updates(params, updates)
    assert_trees_close(params, expected, 1e-6, 1e-7)
  assert_trees_close(af.finalize_variable_values(params, state), state[1].ema, 0, 0)


def test_finalize_before_any_step_returns_the_params():
  tx = af.ema_params(0.9)
  params = {"w": jnp.arange(3.0)}
  np.testing.assert_array_equal(af.finalize_variable_values(params, tx.init(params))["w"],
                                params["w"])
