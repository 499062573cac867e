"""adafactor_jax._src.loss_scaling: the gradients divided by the static factor, and
`scale_loss` finding it in any state."""

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
from adafactor_jax._src import loss_scaling

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_static_loss_scale(dtype):
  g = small_tree(0, dtype)
  (u,), state = run_block(af.static_loss_scale(8.0), [g], None)
  assert_trees_close(u, leaf_by_leaf(lambda x: loss_scaling.unscaled(x, 8.0), g), 0, 0)
  assert float(state.loss_scale_factor) == 8.0
  (c,), _ = run_block(af.chain(af.static_loss_scale(8.0), af.clip_by_value(0.05)), [g], None)
  assert_trees_close(c, leaf_by_leaf(lambda x: jnp.clip(loss_scaling.unscaled(x, 8.0), -0.05,
                                                        0.05), g), 0, 0)


def test_scale_loss_finds_the_factor():
  params = {"w": jnp.ones(2)}
  state = af.keras_adafactor(0.1, loss_scale_factor=4.0).init(params)
  assert float(af.scale_loss(jnp.float32(2.0), state)) == 8.0
  assert float(af.scale_loss(2.0, optax.sgd(0.1).init(params))) == 2.0  # none: unchanged
  injected = optax.inject_hyperparams(af.keras_adadelta)(learning_rate=1.0, loss_scale_factor=2.0)
  assert float(af.scale_loss(3.0, injected.init(params))) == 6.0
  assert float(jax.grad(lambda w: af.scale_loss(jnp.sum(w ** 2), 16.0))(jnp.ones(1))[0]) == 32.0


def test_scale_loss_rejects_bad_factors():
  with pytest.raises(ValueError, match="opt_state_or_factor"):
    af.scale_loss(1.0, "8")
  with pytest.raises(ValueError, match="opt_state_or_factor"):
    af.scale_loss(1.0, -2.0)
  np.testing.assert_array_equal(af.scale_loss(jnp.ones(2), 2.0), [2.0, 2.0])
