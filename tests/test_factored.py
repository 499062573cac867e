"""adafactor_jax._src.factored: `scale_by_factored_rms` against the paper's factored second
moment (and PyTorch's clamped variant), per leaf, over several steps."""

import jax
import jax.numpy as jnp
import pytest
from helpers import assert_trees_close
from helpers import run_block
from helpers import small_tree

import adafactor_jax as af
from adafactor_jax._src import factored
from adafactor_jax._src import factoring

pytestmark = pytest.mark.unit

RULES = {"largest": "largest", "last": "last",
         "batch": {"t3": ("batch", "row", "col"), "kernel": ("col", "row")}}


def reference(gs, rule, epsilon, epsilon_mode, decay_rate=0.8):
  rules = factoring.FactorRules(RULES[rule], min_dim_size_to_factor=8)
  flat = [jax.tree_util.tree_flatten_with_path(g)[0] for g in gs]
  paths = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in flat[0]]
  stats = {}
  outs = []
  for t, leaves in enumerate(flat):
    beta2 = factored.decay_rate_pow(t, decay_rate)
    out = []
    for path, (_, g) in zip(paths, leaves):
      plan = rules.plan(path, g.shape)
      if plan.factored:
        r, c = stats.get(path, (jnp.zeros(plan.row_shape(g.shape)),
                                jnp.zeros(plan.col_shape(g.shape))))
        u, r, c = factored.factored_rms_scaled(g, r, c, beta2, epsilon, plan, epsilon_mode)
        stats[path] = (r, c)
      else:
        v = stats.get(path, jnp.zeros(g.shape))
        u, v = factored.unfactored_rms_scaled(g, v, beta2, epsilon, epsilon_mode)
        stats[path] = v
      out.append(u)
    outs.append(jax.tree.unflatten(jax.tree.structure(gs[0]), out))
  return outs


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("epsilon_mode,epsilon", [("add", 1e-30), ("add", 1e-3),
                                                  ("clamp", 1e-3)])
def test_scale_by_factored_rms(rule, epsilon_mode, epsilon):
  gs = [small_tree(i) for i in range(3)]
  tx = af.scale_by_factored_rms(min_dim_size_to_factor=8, factor_rule=RULES[rule],
                                epsilon=epsilon, epsilon_mode=epsilon_mode)
  us, state = run_block(tx, gs, None)
  for u, ref in zip(us, reference(gs, rule, epsilon, epsilon_mode)):
    assert_trees_close(u, ref, 2e-6, 1e-7)
  assert int(state.count) == 3


def test_in_chain_reads_the_formula_of_the_block_before():
  gs = [small_tree(i) for i in range(2)]
  tx = af.chain(af.scale_by_learning_rate(3.0, flip_sign=False),
                af.scale_by_factored_rms(min_dim_size_to_factor=8, epsilon=1e-3))
  us, _ = run_block(tx, gs, None)
  tripled = [jax.tree.map(lambda x: 3 * x, g) for g in gs]
  for u, ref in zip(us, reference(tripled, "largest", 1e-3, "add")):
    assert_trees_close(u, ref, 2e-6, 1e-7)
