"""adafactor_jax._src.factoring: which dims of a leaf are factored (pure shape logic)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from adafactor_jax._src import factoring
from adafactor_jax._src.factoring import UNFACTORED
from adafactor_jax._src.factoring import FactorRules
from adafactor_jax._src.factoring import LeafPlan

pytestmark = pytest.mark.unit


def optax_factored_dims(shape, factored=True, min_dim_size_to_factor=128):
  """optax's `_factored_dims` (optax/_src/factorized.py), written out: the two largest dims,
  (second largest, largest), if the second largest is at least the threshold."""
  if not factored or len(shape) < 2:
    return None
  sorted_dims = np.argsort(shape, kind="stable")
  if shape[sorted_dims[-2]] < min_dim_size_to_factor:
    return None
  return int(sorted_dims[-2]), int(sorted_dims[-1])


@pytest.mark.parametrize("shape,plan", [
    ((256, 512), LeafPlan((0,), (1,), ())),
    ((512, 256), LeafPlan((1,), (0,), ())),
    ((3, 512, 256), LeafPlan((2,), (1,), ())),
    ((127, 512), UNFACTORED),  # the smaller of the two largest dims is under the threshold
    ((128, 128), LeafPlan((0,), (1,), ())),  # a tie keeps the earlier dim as the row dim
    ((64, 64, 3, 3), UNFACTORED),
    ((512,), UNFACTORED),
    ((), UNFACTORED),
    ((0, 512), UNFACTORED),  # an empty leaf has nothing to factor
])
def test_largest(shape, plan):
  assert FactorRules("largest").plan("w", shape) == plan


def test_largest_ties_are_stable():
  """Equal dims: the earlier one is the row dim whatever the rank (optax's default argsort is
  not stable on NumPy 2 for every shape, see the module docstring)."""
  rules = FactorRules("largest", min_dim_size_to_factor=64)
  assert rules.plan("w", (64, 64, 3, 3)) == LeafPlan((0,), (1,), ())
  assert rules.plan("w", (3, 200, 200)) == LeafPlan((1,), (2,), ())
  assert rules.plan("w", (200, 3, 200)) == LeafPlan((0,), (2,), ())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 600), min_size=0, max_size=5), st.integers(0, 300))
def test_largest_is_optax_rule(shape, threshold):
  shape = tuple(shape)
  plan = FactorRules("largest", min_dim_size_to_factor=threshold).plan("w", shape)
  dims = optax_factored_dims(shape, min_dim_size_to_factor=threshold)
  if dims is None:
    assert plan == UNFACTORED
  else:
    assert plan == LeafPlan((dims[0],), (dims[1],), ())
    # the row statistic averages the largest dim away
    assert shape[plan.col_dims[0]] >= shape[plan.row_dims[0]]


@pytest.mark.parametrize("shape,threshold,plan", [
    ((4, 5), 0, LeafPlan((0,), (1,), ())),
    ((7, 4, 5), 0, LeafPlan((1,), (2,), ())),
    ((7, 4, 5), 5, UNFACTORED),
    ((1000, 2), 0, LeafPlan((0,), (1,), ())),  # the last two dims, whatever their sizes
    ((5,), 0, UNFACTORED),
])
def test_last(shape, threshold, plan):
  assert FactorRules("last", min_dim_size_to_factor=threshold).plan("w", shape) == plan


def test_not_factored():
  assert FactorRules("largest", factored=False).plan("w", (512, 512)) == UNFACTORED
  rules = FactorRules({"w": ("batch", "row", "col")}, factored=False)
  assert rules.plan("w", (2, 512, 512)) == LeafPlan((), (), (0,))  # batch dims still count


def test_explicit_rules_first_match_wins_and_default_is_largest():
  rules = FactorRules({"layers/.*/kernel": "batch,row,col", "layers": "unfactored",
                       "emb": ("col", "row")}, min_dim_size_to_factor=0)
  assert rules.plan("layers/0/kernel", (4, 8, 16)) == LeafPlan((1,), (2,), (0,))
  assert rules.plan("layers/0/bias", (4, 16)) == UNFACTORED
  assert rules.plan("emb", (10, 20)) == LeafPlan((1,), (0,), ())
  assert rules.plan("head", (10, 20)) == LeafPlan((0,), (1,), ())  # no match: "largest"


def test_explicit_rule_without_row_or_col_keeps_a_full_moment_and_its_batch_dims():
  rules = FactorRules([("w", ("batch", "none", "row"))])
  assert rules.plan("w", (2, 3, 4)) == LeafPlan((), (), (0,))


def test_several_row_dims_are_averaged_together():
  plan = FactorRules({"w": "row,row,col"}).plan("w", (2, 3, 4))
  assert plan == LeafPlan((0, 1), (2,), ())
  assert plan.row_shape((2, 3, 4)) == (2, 3)
  assert plan.col_shape((2, 3, 4)) == (4,)
  assert plan.row_dims_in_row_stat() == (0, 1)


def test_plan_shapes():
  plan = LeafPlan((1,), (3,), (0,))
  shape = (2, 5, 7, 11)
  assert plan.factored
  assert plan.row_shape(shape) == (2, 5, 7)
  assert plan.col_shape(shape) == (2, 7, 11)
  assert plan.row_dims_in_row_stat() == (1,)
  assert plan.rms_axes(4) == (1, 2, 3)
  assert LeafPlan((3,), (1,), ()).row_dims_in_row_stat() == (2,)  # a col dim before the row dim
  assert not UNFACTORED.factored
  assert UNFACTORED.rms_axes(3) == (0, 1, 2)


@pytest.mark.parametrize("rule,match", [
    ("biggest", "factor_rule='biggest' is not a known rule"),
    (3, "factor_rule=3 is not a rule"),
    ({"w": "row,col,diag"}, r"unknown labels \['diag'\]"),
    ({"w": 3}, "is not a string or a sequence of labels"),
    ({"(": "row,col"}, "is not a valid regular expression"),
    ([("w",)], "is not a \\(key-path regex, rule\\) pair"),
])
def test_bad_rules(rule, match):
  with pytest.raises(ValueError, match=match):
    FactorRules(rule)


def test_rule_of_wrong_rank_names_the_leaf():
  rules = FactorRules({"w": "row,col"})
  with pytest.raises(ValueError, match=r"the leaf 'w' has shape \(2, 3, 4\) \(rank 3\)"):
    rules.plan("w", (2, 3, 4))


def test_as_rules_passes_rules_through():
  rules = FactorRules("last")
  assert factoring.as_rules(rules) is rules
  assert factoring.as_rules("last", min_dim_size_to_factor=5).min_dim_size_to_factor == 5
