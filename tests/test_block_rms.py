"""adafactor_jax._src.block_rms: the RMS of a leaf over its non-batch dims."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adafactor_jax._src import block_rms
from adafactor_jax._src import engine
from adafactor_jax._src import factoring

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64])
def test_block_rms_of_the_whole_leaf(dtype):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 5)) + (1j * rng.normal(size=(6, 5)) if dtype == jnp.complex64 else 0)
  x = jnp.asarray(x, dtype)
  got = block_rms.block_rms(x, factoring.UNFACTORED, jnp.float32)
  assert got.shape == ()
  x64 = np.asarray(x, np.complex128)
  # bfloat16 squares are taken in bfloat16 (8 bits) before the float32 mean (`block_rms`);
  # float16 ones are squared in float32.
  rtol = 2.0 ** -8 if dtype == jnp.bfloat16 else 1e-6
  np.testing.assert_allclose(got, np.sqrt(np.mean(np.abs(x64) ** 2)), rtol=rtol)


def test_block_rms_per_batch_slice():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4, 5)), jnp.float32)
  plan = factoring.LeafPlan((1,), (2,), (0,))
  got = block_rms.block_rms(x, plan, jnp.float32)
  assert got.shape == (3, 1, 1)  # broadcasts against the leaf
  np.testing.assert_allclose(got[:, 0, 0], np.sqrt(np.mean(np.asarray(x) ** 2, axis=(1, 2))),
                             rtol=1e-6)


def test_block_rms_of_an_empty_leaf_is_zero():
  assert float(block_rms.block_rms(jnp.zeros((0, 3)), factoring.UNFACTORED, jnp.float32)) == 0.0


def test_block_rms_in_chunks_equals_whole(monkeypatch):
  monkeypatch.setattr(engine.chunked, "BLOCK_ELEMENTS", 1 << 14)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(300, 257)), jnp.bfloat16)
  chunked = jax.jit(lambda x: block_rms.block_rms(x, factoring.UNFACTORED, jnp.float32,
                                                  engine.Link()))(x)
  exact = np.sqrt(np.mean(np.asarray(x, np.float64) ** 2))
  np.testing.assert_allclose(chunked, exact, rtol=2.0 ** -8)  # (bfloat16 squares, as above)


def test_rules_of_and_plans():
  assert block_rms.rules_of(None) is None
  rules = block_rms.rules_of({"w": "batch,row,col"})
  ctx = engine.Context({"w": jnp.ones((2, 3, 4)), "b": jnp.ones(4)}, {})
  leaves = ctx.leaves(ctx.treedef.flatten_up_to({"w": jnp.ones((2, 3, 4)), "b": jnp.ones(4)}))
  assert block_rms.plans(rules, leaves, ctx)[1] == factoring.LeafPlan((1,), (2,), (0,))
  assert block_rms.plans(None, leaves, ctx) == [factoring.UNFACTORED] * 2
