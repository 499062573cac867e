"""adafactor_jax._src.clipping: each clipping block against its per-leaf math, alone and inside
a chain (where it extends the formula of the block before)."""

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
from adafactor_jax._src import clipping

pytestmark = pytest.mark.unit

DTYPES = {"float32": (jnp.float32, 1e-6), "bfloat16": (jnp.bfloat16, 1e-2)}


def in_chain(block):
  """`block` behind a block that scales the update by 2 (its formula is then ``2 * g``)."""
  return af.chain(af.scale_by_learning_rate(2.0, flip_sign=False), block)


def doubled(tree):
  return jax.tree.map(lambda x: (2 * x).astype(x.dtype), tree)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.5, 1.0, 100.0])
def test_clip_by_block_rms(dtype, threshold):
  dt, rtol = DTYPES[dtype]
  g = small_tree(1, dt)
  ref = leaf_by_leaf(lambda u: clipping.block_rms_clipped(u, threshold), g)
  (alone,), _ = run_block(af.clip_by_block_rms(threshold), [g], None)
  assert_trees_close(alone, ref, rtol, rtol)
  (chained,), _ = run_block(in_chain(af.clip_by_block_rms(threshold)), [g], None)
  ref2 = leaf_by_leaf(lambda u: clipping.block_rms_clipped(u, threshold), doubled(g))
  assert_trees_close(chained, ref2, rtol, rtol)


def test_clip_by_block_rms_batch_dims():
  g = {"t3": jnp.asarray(np.random.default_rng(0).normal(size=(4, 9, 8)) *
                         np.arange(1, 5)[:, None, None], jnp.float32)}
  tx = af.clip_by_block_rms(1.0, factor_rule={"t3": ("batch", "row", "col")})
  (u,), _ = run_block(tx, [g], None)
  assert_trees_close(u, {"t3": clipping.block_rms_clipped(g["t3"], 1.0, axes=(1, 2))}, 1e-6, 1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_by_leaf_norm(dtype, max_norm):
  dt, rtol = DTYPES[dtype]
  g = small_tree(2, dt)
  (alone,), _ = run_block(af.clip_by_leaf_norm(max_norm), [g], None)
  assert_trees_close(alone, leaf_by_leaf(lambda x: clipping.leaf_norm_clipped(x, max_norm), g),
                     rtol, rtol)
  (chained,), _ = run_block(in_chain(af.clip_by_leaf_norm(max_norm)), [g], None)
  assert_trees_close(chained, leaf_by_leaf(lambda x: clipping.leaf_norm_clipped(x, max_norm),
                                           doubled(g)), rtol, rtol)


def test_clip_by_leaf_norm_zero_stays_zero():
  (u,), _ = run_block(af.clip_by_leaf_norm(1.0), [{"w": jnp.zeros(3)}], None)
  np.testing.assert_array_equal(u["w"], np.zeros(3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_by_value(dtype):
  dt, _ = DTYPES[dtype]
  g = small_tree(3, dt)
  (alone,), _ = run_block(af.clip_by_value(0.5), [g], None)
  assert_trees_close(alone, leaf_by_leaf(lambda x: clipping.value_clipped(x, 0.5), g), 0, 0)
  (chained,), _ = run_block(in_chain(af.clip_by_value(0.5)), [g], None)
  assert_trees_close(chained, leaf_by_leaf(lambda x: clipping.value_clipped(x, 0.5), doubled(g)),
                     0, 0)


def global_ref(fn, g, max_norm):
  flat, treedef = jax.tree.flatten(g)
  return treedef.unflatten(fn(flat, max_norm))


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_by_global_norm(max_norm):
  g = small_tree(4)
  (alone,), _ = run_block(af.clip_by_global_norm(max_norm), [g], None)
  assert_trees_close(alone, global_ref(clipping.global_norm_clipped, g, max_norm), 1e-6, 1e-7)
  ref, _ = jax.jit(optax.clip_by_global_norm(max_norm).update)(g, optax.EmptyState())
  assert_trees_close(alone, ref, 0, 0)  # optax's numbers, jitted both
  (chained,), _ = run_block(in_chain(af.clip_by_global_norm(max_norm)), [g], None)
  assert_trees_close(chained, global_ref(clipping.global_norm_clipped, doubled(g), max_norm),
                     1e-6, 1e-7)


@pytest.mark.parametrize("scale", [1.0, 1e30])  # 1e30: the float32 squared norm overflows
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_by_global_norm_nan_on_nonfinite(scale, max_norm):
  g = jax.tree.map(lambda x: x * scale, small_tree(5))
  ref = global_ref(clipping.global_norm_clipped_nan_on_nonfinite, g, max_norm)
  (alone,), _ = run_block(af.clip_by_global_norm_nan_on_nonfinite(max_norm), [g], None)
  assert_trees_close(alone, ref, 2e-6, 1e-7)
  (chained,), _ = run_block(in_chain(af.clip_by_global_norm_nan_on_nonfinite(max_norm)), [g],
                            None)
  ref2 = global_ref(clipping.global_norm_clipped_nan_on_nonfinite, doubled(g), max_norm)
  assert_trees_close(chained, ref2, 2e-6, 1e-7)


def test_global_norm_variants_differ_only_on_nonfinite():
  bad = {"a": jnp.array([jnp.inf, 1.0]), "b": jnp.array([3.0])}
  (optax_like,), _ = run_block(af.clip_by_global_norm(1.0), [bad], None)
  (keras_like,), _ = run_block(af.clip_by_global_norm_nan_on_nonfinite(1.0), [bad], None)
  ref, _ = optax.clip_by_global_norm(1.0).update(bad, optax.EmptyState())
  assert_trees_close(optax_like, ref, 0, 0)  # finite entries 0, the infinite one NaN
  assert all(bool(jnp.all(jnp.isnan(x))) for x in jax.tree.leaves(keras_like))
  ref = global_ref(clipping.global_norm_clipped_nan_on_nonfinite, bad, 1.0)
  assert all(bool(jnp.all(jnp.isnan(x))) for x in jax.tree.leaves(ref))
