"""adafactor_jax._src.engine: the lazy formula, the opaque zeros, the chunked reductions and the
chain runtime, each on its own (the blocks' tests run them through the blocks)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adafactor_jax as af
from adafactor_jax._src import engine
from adafactor_jax._src.engine import chunked
from adafactor_jax._src.engine import formula
from adafactor_jax._src.engine import opaque
from adafactor_jax._src.engine import runtime

pytestmark = pytest.mark.unit


def test_deferred_then_scale_value():
  x = jnp.arange(6.0).reshape(2, 3)
  d = formula.Deferred(x)
  d.then(lambda u, a: u + a, jnp.ones((1, 1)))
  d.scale(jnp.float32(2.0))
  d.scale(jnp.float32(4.0), divide=True)
  assert d.shape == (2, 3) and d.dtype == jnp.float32
  assert len(d.scalars) == 2  # pending until the final pass
  np.testing.assert_allclose(d.value(), (x + 1) * 2 / 4)
  d.flush()  # applied one by one, in order
  assert not d.scalars
  np.testing.assert_allclose(d.value(), (x + 1) * 2 / 4)


def test_half_precision_scalars_round_at_once():
  d = formula.Deferred(jnp.ones(3, jnp.bfloat16))
  d.scale(jnp.float32(1 / 3))
  assert not d.scalars  # applied in bfloat16 at once, as optax
  assert d.value().dtype == jnp.bfloat16


def test_reduce_apart_equals_the_reduction_of_the_value():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(300, 300)), jnp.float32)
  d = formula.Deferred(x)
  d.then(lambda u, c: u * c, jnp.full((1, 1), 3.0))
  d.seed = opaque.seed_from(d, None)  # a large leaf: its own zero
  for purpose in ("row", "col", "rms"):
    got = d.reduce_apart(purpose, chunked.total, jnp.square, None)
    np.testing.assert_allclose(got, jnp.sum(jnp.square(d.value())), rtol=1e-6)


def test_like_leaf_and_operand():
  assert formula.like_leaf(jnp.float32(2), 3).shape == (1, 1, 1)
  assert formula.like_leaf(jnp.ones((2, 1)), 3).shape == (2, 1)
  a = formula.operand(2.0, jnp.bfloat16, 2)  # a Python number takes the leaf's dtype
  assert a.dtype == jnp.bfloat16 and a.shape == (1, 1)


def test_offset_is_exact_and_keeps_weak_types():
  """Exact but for -0.0 (+0.0) and float32 subnormals, which XLA:CPU flushes to zero in any
  arithmetic anyway."""
  z = jnp.float32(0.0)
  x = jnp.array([0.0, 1.2e-38, -3.5, jnp.inf])
  np.testing.assert_array_equal(opaque.offset(x, z), x)
  assert opaque.offset(2.0, z) == 2.0  # a Python number is left alone
  ints = jnp.arange(3)
  assert opaque.offset(ints, z) is ints


@pytest.mark.parametrize("first", [1.0, -2.0, 0.0, jnp.nan, jnp.inf, -jnp.inf])
def test_opaque_zero_is_zero_for_any_first_element(first):
  x = jnp.array([first, 1.0])
  assert float(opaque.opaque_zero(x, jnp.float32)) == 0.0
  assert int(opaque.opaque_zero(x, jnp.int32)) == 0
  assert not bool(opaque.opaque_zero(x, jnp.bool_))
  assert float(jax.jit(lambda y: opaque.opaque_zero(y, jnp.float32))(x)) == 0.0


def test_seeds_large_leaves_own_small_leaves_share():
  shared = opaque.Seed(jnp.float32(0))
  small = formula.Deferred(jnp.ones(10))
  large = formula.Deferred(jnp.ones(opaque.MIN_SIZE_APART))
  assert opaque.seed_from(small, shared) is shared
  own = opaque.seed_from(large, shared)
  assert own is not shared and float(own.value) == 0.0
  assert float(shared.zero("col")) == 0.0
  assert set(opaque.PURPOSES) >= {"row", "col", "rms", "global_norm", "v"}
  assert len(set(opaque.PURPOSES.values())) == len(opaque.PURPOSES)  # distinct multiples


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_chunked_reductions_equal_whole_ones(monkeypatch, dtype):
  monkeypatch.setattr(chunked, "BLOCK_ELEMENTS", 1 << 14)  # several chunks
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(300, 257)), dtype)  # over MIN_SIZE_APART elements
  f32 = lambda y: y.astype(jnp.float32) ** 2

  @jax.jit
  def chunks(x):
    link = chunked.Link()
    return (chunked.mean(f32, [x], x.shape, (1,), link),
            chunked.mean(f32, [x], x.shape, (0,), link),
            chunked.total(f32, [x], x.shape, link),
            chunked.largest(lambda y: jnp.abs(y.astype(jnp.float32)), [x], x.shape, link))

  rows, cols, tot, big = chunks(x)
  x64 = np.asarray(x, np.float64)
  np.testing.assert_allclose(rows, np.mean(x64 ** 2, axis=1), rtol=1e-5)
  np.testing.assert_allclose(cols, np.mean(x64 ** 2, axis=0), rtol=1e-5)
  np.testing.assert_allclose(tot, np.sum(x64 ** 2), rtol=1e-5)
  assert float(big) == float(np.max(np.abs(x64)))


def test_blocked_only_for_large_half_precision_leaves():
  big = (300, 257)
  assert chunked.blocked([jnp.ones(big, jnp.bfloat16)], big)
  assert not chunked.blocked([jnp.ones(big, jnp.float32)], big)
  assert not chunked.blocked([jnp.ones((10, 10), jnp.bfloat16)], (10, 10))


def test_kernel_of_and_fused_update():
  block = af.clip_by_value(1.0)
  assert isinstance(block.update, runtime.FusedUpdate)
  assert engine.kernel_of(block) is block.update.kernel
  assert engine.kernel_of(optax.sgd(0.1)) is None
  assert engine.kernel_of(af.adafactor(0.1)) is not None  # a preset is a chain
  u, _ = jax.jit(block.update)({"w": jnp.array([3.0])}, optax.EmptyState())  # jit of the object
  np.testing.assert_array_equal(u["w"], [1.0])


def test_chain_runs_optax_transformations_on_the_updates_so_far():
  g = {"w": jnp.array([4.0, -9.0])}
  tx = af.chain(af.scale_by_learning_rate(0.5, flip_sign=False), optax.clip(1.0),
                af.scale_by_learning_rate(3.0, flip_sign=False))
  u, state = tx.update(g, tx.init(g))
  np.testing.assert_array_equal(u["w"], [3.0, -3.0])
  assert len(state) == 3  # optax.chain's state


def test_disabled_runs_block_by_block_with_the_same_numbers():
  g = {"w": jnp.asarray(np.random.default_rng(2).normal(size=(20, 30)), jnp.float32)}
  tx = af.adafactor(0.1, min_dim_size_to_factor=8)
  fused, _ = jax.jit(tx.update)(g, tx.init(g), g)
  with engine.disabled():
    blockwise, _ = jax.jit(tx.update)(g, tx.init(g), g)
  np.testing.assert_allclose(fused["w"], blockwise["w"], rtol=1e-6)


def test_a_block_names_the_state_it_was_not_given():
  tx = af.scale_by_momentum(0.9)
  with pytest.raises(ValueError, match="first differing key path: <nothing> in the state passed "
                                       "against 'mu/w'"):
    tx.update({"w": jnp.ones(2)}, optax.EmptyState())


def test_then_apart_is_then_with_an_exact_one():
  g, a = jnp.arange(4.0, dtype=jnp.bfloat16), jnp.full(4, 0.5, jnp.float32)
  d = formula.Deferred(g)
  d.then_apart(lambda x, a: (x + a).astype(jnp.bfloat16), a, dtype=jnp.float32)
  np.testing.assert_array_equal(d.value(), (g.astype(jnp.float32) + a).astype(jnp.bfloat16))
  assert len(d.inputs) == 3  # g, the one, a


def test_ordered_after_is_the_predicate():
  for pred in (True, False):
    for x in (jnp.array([jnp.nan, 1.0]), jnp.zeros(0)):
      assert bool(opaque.ordered_after(jnp.asarray(pred), x)) == pred


def test_computed_apart_equals_the_function_and_declares_its_recipe():
  ctx = runtime.Context({"w": jnp.ones(3)}, {})
  p, r = jnp.array([1.0, -2.0, 4.0]), jnp.float32(0.25)
  out = ctx.computed_apart(lambda p, r: p - p * r, [p, r])
  np.testing.assert_array_equal(out, p - p * r)
  assert id(out) in ctx.link._recipes


def test_in_branch_gives_scratch_seeds_and_restores_them():
  d = formula.Deferred(jnp.ones(opaque.MIN_SIZE_APART))
  d.seed = opaque.seed_from(d, None)
  before = d.seed
  with runtime.in_branch([d]) as link:
    assert isinstance(link, chunked.Link)
    assert d.seed is not before and d.seed.value is before.value
  assert d.seed is before


def test_run_on_formulas_starts_each_leaf():
  g = {"a": jnp.ones(2), "b": jnp.full(3, 2.0)}
  start = lambda i, d: d.then(lambda u, c: u * c, jnp.full((1,), 10.0 * (i + 1)))
  out, state = runtime.run_on_formulas(optax.identity(), None, g, start, optax.EmptyState(),
                                       None, {})
  np.testing.assert_array_equal(out["a"], [10.0, 10.0])
  np.testing.assert_array_equal(out["b"], [40.0, 40.0, 40.0])
