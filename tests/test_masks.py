"""adafactor_jax._src.masks: masks by key path, first-match rules, and prefixes."""

import jax
import jax.numpy as jnp
import pytest

import adafactor_jax as af
from adafactor_jax._src import masks

pytestmark = pytest.mark.unit

PARAMS = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "ln": {"scale": jnp.ones(2)}}


def test_mask_by_path():
  assert af.mask_by_path(include="kernel")(PARAMS) == {
      "dense": {"bias": False, "kernel": True}, "ln": {"scale": False}}
  assert af.mask_by_path(exclude=["bias", "^ln/"])(PARAMS) == {
      "dense": {"bias": False, "kernel": True}, "ln": {"scale": False}}
  assert af.mask_by_path()(PARAMS) == {"dense": {"bias": True, "kernel": True},
                                       "ln": {"scale": True}}


def test_path_mask_keeps_its_patterns():
  mask = af.mask_by_path(include=("dense",), exclude="bias")
  assert isinstance(mask, masks.PathMask)
  assert (mask.include, mask.exclude) == (["dense"], "bias")
  assert repr(mask) == "mask_by_path(include=['dense'], exclude='bias')"


@pytest.mark.parametrize("kwargs,match", [
    (dict(include=3), "include must be a regular-expression string or a list"),
    (dict(exclude=[3]), "exclude must hold regular-expression strings"),
    (dict(include="("), "include pattern '\\(' is invalid"),
])
def test_mask_by_path_bad_patterns(kwargs, match):
  with pytest.raises(ValueError, match=match):
    af.mask_by_path(**kwargs)


def test_mask_by_first_match():
  mask = masks.mask_by_first_match({"ln": False, ".*": True}, "multiply_by_parameter_scale")
  assert mask(PARAMS) == {"dense": {"bias": True, "kernel": True}, "ln": {"scale": False}}
  with pytest.raises(ValueError, match="no pattern matches the parameter 'ln/scale'"):
    masks.mask_by_first_match({"dense": True}, "m")(PARAMS)
  with pytest.raises(ValueError, match="is not a \\(key-path regex, bool\\) pair"):
    masks.mask_by_first_match({"dense": "yes"}, "m")


def test_resolve_mask_takes_a_prefix():
  treedef = jax.tree.structure(PARAMS)
  got = masks.resolve_mask({"dense": True, "ln": False}, PARAMS, treedef, "t")
  assert got == [True, True, False]
  with pytest.raises(ValueError, match="t"):
    masks.resolve_mask({"other": True}, PARAMS, treedef, "t")
