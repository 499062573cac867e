"""adafactor_jax._src.adadelta: `scale_by_adadelta` against Zeiler's algorithm, per leaf."""

import jax
import jax.numpy as jnp
import pytest
from helpers import assert_trees_close
from helpers import run_block
from helpers import small_tree

import adafactor_jax as af
from adafactor_jax._src import adadelta

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("rho,eps", [(0.9, 1e-6), (0.95, 1e-7), (0.0, 1e-3)])
def test_scale_by_adadelta(rho, eps):
  gs = [small_tree(i) for i in range(3)]
  us, state = run_block(af.scale_by_adadelta(rho, eps), gs, None)
  e_g = jax.tree.map(jnp.zeros_like, gs[0])
  e_x = e_g
  for g, u in zip(gs, us):
    out = jax.tree.map(lambda x, a, b: adadelta.adadelta_scaled(x, a, b, rho, eps), g, e_g, e_x)
    ref = jax.tree.map(lambda o: o[0], out, is_leaf=lambda x: isinstance(x, tuple))
    e_g = jax.tree.map(lambda o: o[1], out, is_leaf=lambda x: isinstance(x, tuple))
    e_x = jax.tree.map(lambda o: o[2], out, is_leaf=lambda x: isinstance(x, tuple))
    assert_trees_close(u, ref, 1e-6, 1e-7)
  assert_trees_close(state.e_g, e_g, 1e-6, 1e-7)
  assert_trees_close(state.e_x, e_x, 1e-6, 1e-7)
