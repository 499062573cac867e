"""adafactor_jax._src.scaling: learning rate, relative step size, parameter scale and momentum
against their per-leaf math."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close
from helpers import leaf_by_leaf
from helpers import run_block
from helpers import small_tree

import adafactor_jax as af
from adafactor_jax._src import scaling

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("flip_sign", [True, False])
def test_scale_by_learning_rate(flip_sign):
  g = small_tree(0)
  (u,), _ = run_block(af.scale_by_learning_rate(0.3, flip_sign=flip_sign), [g], None)
  ref = leaf_by_leaf(lambda x: scaling.learning_rate_scaled(x, 0.3, flip_sign), g)
  assert_trees_close(u, ref, 0, 0)


def test_scale_by_learning_rate_schedule_counts_calls():
  g = small_tree(0)
  schedule = lambda count: 0.1 * (count + 1)
  us, state = run_block(af.scale_by_learning_rate(schedule), [g, g, g], None)
  for i, u in enumerate(us):
    assert_trees_close(u, leaf_by_leaf(lambda x: scaling.learning_rate_scaled(x, schedule(i)), g),
                       1e-6, 1e-7)
  assert int(state.count) == 3


def test_relative_step_size():
  rho = af.relative_step_size(1e-2)
  counts = np.array([0, 1, 99, 9999, 39999, 10**6])
  expected = np.minimum(1e-2, 1 / np.sqrt(counts + 1.0))
  np.testing.assert_allclose([float(rho(c)) for c in counts], expected, rtol=1e-6)
  warm = af.relative_step_size(warmup_rate=1e-6)
  np.testing.assert_allclose([float(warm(c)) for c in counts],
                             np.minimum(np.minimum(1e-2, 1e-6 * (counts + 1.0)),
                                        1 / np.sqrt(counts + 1.0)), rtol=1e-6)


@pytest.mark.parametrize("max_scale", [None, 0.5])
def test_scale_by_param_block_rms(max_scale):
  g, p = small_tree(1), small_tree(2)
  tx = af.scale_by_param_block_rms(1e-3, max_scale=max_scale)
  (u,), _ = run_block(tx, [g], p)
  assert_trees_close(u, leaf_by_leaf(lambda x, y: scaling.param_scaled(x, y, 1e-3, max_scale),
                                     g, p), 1e-6, 1e-7)
  (c,), _ = run_block(af.chain(af.scale_by_learning_rate(2.0, flip_sign=False), tx), [g], p)
  assert_trees_close(c, leaf_by_leaf(lambda x, y: scaling.param_scaled(2 * x, y, 1e-3, max_scale),
                                     g, p), 1e-6, 1e-7)


def test_scale_by_param_block_rms_floor_and_mask():
  g = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
  p = {"w": jnp.zeros((3, 4)), "b": jnp.full(4, 2.0)}
  tx = af.scale_by_param_block_rms(1e-3, mask=af.mask_by_path(include="w"))
  (u,), _ = run_block(tx, [g], p)
  np.testing.assert_allclose(u["w"], np.full((3, 4), 1e-3), rtol=1e-6)  # the floor
  np.testing.assert_array_equal(u["b"], np.ones(4))  # masked out


def test_scale_by_param_block_rms_batch_dims():
  rng = np.random.default_rng(0)
  g = {"t": jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32)}
  p = {"t": jnp.asarray(rng.normal(size=(3, 5, 6)) * np.arange(1, 4)[:, None, None], jnp.float32)}
  tx = af.scale_by_param_block_rms(1e-3, factor_rule={"t": "batch,row,col"})
  (u,), _ = run_block(tx, [g], p)
  assert_trees_close(u, {"t": scaling.param_scaled(g["t"], p["t"], 1e-3, axes=(1, 2))},
                     1e-6, 1e-7)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_scale_by_momentum(dtype):
  gs = [small_tree(i, dtype) for i in range(3)]
  us, state = run_block(af.scale_by_momentum(0.9, accumulator_dtype=None), gs, None)
  m = jax.tree.map(jnp.zeros_like, gs[0])
  for g, u in zip(gs, us):
    m = leaf_by_leaf(lambda x, y: scaling.momentum_averaged(x, y, 0.9).astype(x.dtype), g, m)
    assert_trees_close(u, m, 0, 0)
  assert_trees_close(state.mu, m, 0, 0)
