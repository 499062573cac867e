"""adafactor_jax._src.layout (buffers laid out like their parameter) and adafactor_jax._src.tree
(key paths and tree checks), on one device (tests/test_sharding.py runs meshes)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adafactor_jax._src import layout
from adafactor_jax._src import tree as tree_lib

pytestmark = pytest.mark.unit


def test_zeros_keep_dims_and_dtype():
  p = jnp.ones((2, 3, 4), jnp.bfloat16)
  z = layout.zeros(p, jnp.float32, keep=[0, 2])
  assert z.shape == (2, 4) and z.dtype == jnp.float32 and not np.any(np.asarray(z))
  assert layout.zeros(p, jnp.float32).shape == (2, 3, 4)
  assert layout.param_sharding(np.ones(3)) is None  # a NumPy array: no sharding to follow
  shape_only = jax.ShapeDtypeStruct((5,), jnp.float32)
  assert layout.zeros(shape_only, jnp.float32).shape == (5,)


def test_zeros_under_jit_and_eval_shape():
  out = jax.eval_shape(lambda p: layout.zeros(p, jnp.float32, keep=[1]), jnp.ones((3, 7)))
  assert out.shape == (7,)
  np.testing.assert_array_equal(jax.jit(lambda p: layout.zeros(p, jnp.int32))(jnp.ones(2)), [0, 0])


@pytest.mark.parametrize("asked,leaf,expected", [
    (None, jnp.bfloat16, jnp.bfloat16),
    (jnp.float32, jnp.bfloat16, jnp.float32),
    (jnp.float32, jnp.complex64, jnp.complex64),  # a real buffer would drop the imaginary part
    (jnp.bfloat16, jnp.complex64, jnp.complex64),
    (None, jnp.complex64, jnp.complex64),
])
def test_buffer_dtype(asked, leaf, expected):
  assert layout.buffer_dtype(asked, leaf) == jnp.dtype(expected)


def test_path_str():
  tree = {"a": [1, {"b": 2}], "c": 3}
  assert tree_lib.leaf_paths(tree) == ["a/0", "a/1/b", "c"]


def test_check_same_tree_names_the_first_differing_key_path():
  expected = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
  with pytest.raises(ValueError, match="first differing key path: 'c' .* against 'b'"):
    tree_lib.check_same_tree("t", expected, {"w": jnp.ones((2, 3)), "c": jnp.ones(3)})
  with pytest.raises(ValueError, match="'w'"):
    tree_lib.check_same_tree("t", expected, {"w": jnp.ones((3, 2)), "b": jnp.ones(3)},
                             same_shapes=True)
  treedef = tree_lib.check_same_tree("t", expected, {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)},
                                     same_shapes=True)
  assert treedef.num_leaves == 2


def test_find_states():
  state = optax.chain(optax.scale_by_adam(), optax.scale(0.1)).init({"w": jnp.ones(2)})
  assert len(tree_lib.find_states(state, optax.ScaleByAdamState)) == 1
  assert tree_lib.find_states(state, optax.MaskedState) == []
