"""adafactor_jax._src.weight_decay: added decay (optax) and decoupled decay (Keras) against
their per-leaf math."""

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
from adafactor_jax._src import scaling
from adafactor_jax._src import weight_decay

pytestmark = pytest.mark.unit


def test_add_decayed_weights_with_mask():
  g, p = small_tree(1), small_tree(2)
  mask = af.mask_by_path(exclude="bias")
  (u,), _ = run_block(af.add_decayed_weights(0.1, mask), [g], p)
  ref = leaf_by_leaf(lambda x, y, m: jnp.where(m, weight_decay.decay_added(x, y, 0.1), x),
                     g, p, mask(p))
  assert_trees_close(u, ref, 0, 0)


def test_add_decayed_weights_param_scale():
  """transformers' decay: the rate times the parameter scale ``max(eps2, rms(p))``."""
  g, p = small_tree(1), small_tree(2)
  (u,), _ = run_block(af.add_decayed_weights(0.1, param_scale_min=1e-3), [g], p)
  ref = leaf_by_leaf(lambda x, y: weight_decay.decay_added(
      x, y, 0.1 * jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(y))), 1e-3)), g, p)
  assert_trees_close(u, ref, 1e-6, 1e-7)


def test_add_decayed_weights_schedule():
  g, p = small_tree(1), small_tree(2)
  us, _ = run_block(af.add_decayed_weights(lambda t: 0.1 * (t + 1)), [g, g], p)
  for i, u in enumerate(us):
    assert_trees_close(u, leaf_by_leaf(lambda x, y: weight_decay.decay_added(x, y, 0.1 * (i + 1)),
                                       g, p), 1e-6, 1e-7)


@pytest.mark.parametrize("masked", [False, True])
def test_with_decoupled_weight_decay(masked):
  """The inner block sees the decayed weights (its parameter scale is theirs)."""
  g, p = small_tree(3), small_tree(4)
  inner = af.chain(af.scale_by_param_block_rms(1e-3), af.scale_by_learning_rate(0.1))
  mask = af.mask_by_path(include="kernel") if masked else None
  tx = af.with_decoupled_weight_decay(inner, 0.01, 0.5, mask=mask)
  (u,), _ = run_block(tx, [g], p)
  decays = mask(p) if masked else jax.tree.map(lambda _: True, p)

  def ref(x, y, decay):
    inner_update = lambda q: scaling.learning_rate_scaled(scaling.param_scaled(x, q, 1e-3), 0.1)
    if not decay:
      return inner_update(y)
    return weight_decay.decoupled_decay_added(inner_update, y, 0.01, 0.5)

  assert_trees_close(u, jax.tree.map(ref, g, p, decays), 1e-6, 1e-7)


def test_with_decoupled_weight_decay_of_optax_inner():
  g, p = small_tree(3), small_tree(4)
  (u,), _ = run_block(af.with_decoupled_weight_decay(optax.sgd(0.1), 0.01, 0.5), [g], p)
  ref = leaf_by_leaf(lambda x, y: weight_decay.decoupled_decay_added(lambda q: -0.1 * x, y,
                                                                     0.01, 0.5), g, p)
  assert_trees_close(u, ref, 1e-6, 1e-7)
  np.testing.assert_allclose(p["bias"] + u["bias"], p["bias"] * (1 - 0.005) - 0.1 * g["bias"],
                             rtol=1e-6)
