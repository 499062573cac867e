"""Bad input gets a clear ValueError, at construction or at update, naming what is wrong."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adafactor_jax as af
from adafactor_jax._src import validation

BAD_CONSTRUCTION = [
    (af.adafactor, dict(learning_rate=-0.1), "learning_rate"),
    (af.adafactor, dict(learning_rate=math.nan), "learning_rate"),
    (af.adafactor, dict(learning_rate=math.inf), "learning_rate"),
    (af.adafactor, dict(decay_rate=-0.8), "decay_rate"),
    (af.adafactor, dict(clipping_threshold=0.0), "clipping_threshold"),
    (af.adafactor, dict(clipping_threshold=-1.0), "clipping_threshold"),
    (af.adafactor, dict(min_dim_size_to_factor=-1), "min_dim_size_to_factor"),
    (af.adafactor, dict(min_dim_size_to_factor=2.5), "min_dim_size_to_factor"),
    (af.adafactor, dict(momentum=1.0), "momentum"),
    (af.adafactor, dict(momentum=-0.1), "momentum"),
    (af.adafactor, dict(eps=-1e-30), "eps"),
    (af.adafactor, dict(weight_decay_rate=-1e-3), "weight_decay_rate"),
    (af.adafactor, dict(factor_rule="biggest"), "factor_rule"),
    (af.adafactor, dict(factor_rule={"w": ("row", "column")}), "factor_rule"),
    (af.adafactor, dict(factor_rule={"(": ("row", "col")}), "factor_rule"),
    (af.adafactor, dict(stats_dtype=jnp.int32), "stats_dtype"),
    (af.adadelta, dict(learning_rate=-1.0), "learning_rate"),
    (af.adadelta, dict(rho=1.5), "rho"),
    (af.adadelta, dict(rho=-0.1), "rho"),
    (af.adadelta, dict(eps=-1.0), "eps"),
    (af.adadelta, dict(weight_decay=-1.0), "weight_decay"),
    (af.scale_by_factored_rms, dict(decay_rate=-0.5), "decay_rate"),
    (af.scale_by_factored_rms, dict(epsilon=-1.0), "epsilon"),
    (af.scale_by_factored_rms, dict(decay_rate_fn=3), "decay_rate_fn"),
    (af.clip_by_block_rms, dict(threshold=0.0), "threshold"),
    (af.scale_by_param_block_rms, dict(min_scale=-1.0), "min_scale"),
    (af.scale_by_param_block_rms, dict(max_scale=0.0), "max_scale"),
    (af.scale_by_learning_rate, dict(learning_rate=-1.0), "learning_rate"),
    (af.scale_by_momentum, dict(decay=1.0), "decay"),
    (af.add_decayed_weights, dict(weight_decay=-1.0), "weight_decay"),
    (af.add_decayed_weights, dict(weight_decay=0.1, mask={"w": "yes"}), "mask"),
    (af.scale_by_adadelta, dict(rho=2.0), "rho"),
    (af.mask_by_path, dict(include=["("]), "include"),
    (af.mask_by_path, dict(exclude=[3]), "exclude"),
    # switches: a bool, not a truthy string or a number
    (af.adafactor, dict(factored="no"), "factored"),
    (af.adafactor, dict(factored=None), "factored"),
    (af.adafactor, dict(multiply_by_parameter_scale="no"), "multiply_by_parameter_scale"),
    (af.adafactor, dict(multiply_by_parameter_scale=1), "multiply_by_parameter_scale"),
    (af.scale_by_factored_rms, dict(factored="no"), "factored"),
    (af.scale_by_learning_rate, dict(learning_rate=0.1, flip_sign="no"), "flip_sign"),
    (af.hf_adafactor, dict(scale_parameter="no"), "scale_parameter"),
    (af.hf_adafactor, dict(relative_step=2), "relative_step"),
    (af.hf_adafactor, dict(warmup_init="yes"), "warmup_init"),
    (af.keras_adafactor, dict(learning_rate=0.1, relative_step="no"), "relative_step"),
    (af.keras_adafactor, dict(learning_rate=0.1, use_ema=1), "use_ema"),
    (af.torch_adafactor, dict(maximize="no"), "maximize"),
    # dtypes: a floating one (accumulators of complex updates may be complex), or None
    (af.adafactor, dict(momentum=0.9, dtype_momentum="foo"), "dtype_momentum"),
    (af.adafactor, dict(momentum=0.9, dtype_momentum=jnp.int32), "dtype_momentum"),
    (af.adafactor, dict(stats_dtype="foo"), "stats_dtype"),
    (af.adafactor, dict(stats_dtype=jnp.complex64), "stats_dtype"),
    (af.big_vision_adafactor, dict(learning_rate=0.1, dtype_momentum=jnp.int8), "dtype_momentum"),
    (af.adadelta, dict(stats_dtype=jnp.int32), "stats_dtype"),
    (af.keras_adadelta, dict(learning_rate=0.1, stats_dtype=jnp.int32), "stats_dtype"),
    (af.keras_adafactor, dict(learning_rate=0.1, stats_dtype=bool), "stats_dtype"),
    (af.torch_adafactor, dict(stats_dtype=jnp.int32), "stats_dtype"),
    (af.scale_by_adadelta, dict(stats_dtype=jnp.int32), "stats_dtype"),
    (af.scale_by_momentum, dict(decay=0.9, accumulator_dtype=jnp.int32), "accumulator_dtype"),
    (af.ema_params, dict(dtype="foo"), "dtype"),
    # the building blocks name their own arguments (the Keras presets check Keras's names)
    (af.ema_params, dict(momentum=1.5), "momentum"),
    (af.ema_params, dict(overwrite_frequency=0), "overwrite_frequency"),
    (af.clip_by_leaf_norm, dict(max_norm=0.0), "max_norm"),
    (af.clip_by_global_norm, dict(max_norm=-1.0), "max_norm"),
    (af.clip_by_global_norm_nan_on_nonfinite, dict(max_norm=-1.0), "max_norm"),
    (af.clip_by_value, dict(max_value=0.0), "max_value"),
    (af.adafactor, dict(factor_rule=3), "factor_rule"),
    (af.mask_by_path, dict(exclude=3), "exclude"),
    (af.adafactor, dict(skip_nonfinite="yes"), "skip_nonfinite"),
    # wrapped transformations
    (af.skip_nonfinite, dict(inner=3), "inner"),
    (af.state_shardings, dict(tx=3, params={"w": jnp.ones(2)}), "tx"),
    (af.adafactor, dict(weight_decay_mask={"w": "yes"}), "weight_decay_mask"),
    (af.adadelta, dict(weight_decay=0.1, weight_decay_mask=3), "weight_decay_mask"),
    (af.big_vision_adafactor, dict(learning_rate=0.1, weight_decay_mask=[1.5]),
     "weight_decay_mask"),
    (af.with_decoupled_weight_decay, dict(inner="adafactor", weight_decay=0.1), "inner"),
    (af.accumulate_gradients, dict(inner=None, gradient_accumulation_steps=2), "inner"),
    (af.accumulate_gradients, dict(inner=af.adafactor(0.1), gradient_accumulation_steps=2,
                                   accumulator_dtype=jnp.int32), "accumulator_dtype"),
]


@pytest.mark.unit
@pytest.mark.parametrize("factory,kwargs,arg", BAD_CONSTRUCTION,
                         ids=[f"{f.__name__}-{a}-{i}" for i, (f, _, a) in
                              enumerate(BAD_CONSTRUCTION)])
def test_bad_hyperparameter_raises_at_construction(factory, kwargs, arg):
  with pytest.raises(ValueError) as err:
    factory(**kwargs)
  msg = str(err.value)
  assert arg in msg, msg
  value = kwargs.get(arg, list(kwargs.values())[-1])  # the bad one
  if isinstance(value, (float, str)) and arg != "mask":
    assert repr(value) in msg or "out of range" in msg, msg


@pytest.mark.unit
def test_range_named_in_message():
  with pytest.raises(ValueError, match=r"momentum=1\.0 .* \[0\.0, 1\.0\)"):
    af.adafactor(momentum=1.0)
  with pytest.raises(ValueError, match=r"rho=1\.5 .* \[0\.0, 1\.0\]"):
    af.adadelta(rho=1.5)
  with pytest.raises(ValueError, match=r"decay_rate=-0\.5 .* \[0\.0, inf\)"):
    af.adafactor(decay_rate=-0.5)


@pytest.mark.unit
def test_bad_dtype_and_switch_messages():
  with pytest.raises(ValueError, match=r"dtype_momentum=dtype\('int32'\) is not a floating or "
                                       r"complex dtype"):
    af.adafactor(momentum=0.9, dtype_momentum=jnp.int32)
  with pytest.raises(ValueError, match=r"stats_dtype='foo' is not a floating dtype"):
    af.adafactor(stats_dtype="foo")
  with pytest.raises(ValueError, match=r"factored must be a bool, got 'no'"):
    af.adafactor(factored="no")
  with pytest.raises(ValueError, match=r"chain: transforms\[1\] must be an optax "
                                       r"GradientTransformation.*got 3"):
    af.chain(af.scale_by_factored_rms(), 3)


def test_good_dtypes_accepted():
  """Strings, NumPy and JAX dtypes, and None (the param dtype) are all accepted."""
  params = {"w": jnp.ones((3, 4), jnp.complex64)}
  for dtype in ("bfloat16", jnp.float16, jnp.dtype("float32"), None):
    tx = af.adafactor(0.1, momentum=0.9, dtype_momentum=dtype, stats_dtype=dtype)
    state = tx.init({"w": jnp.ones((3, 4))})
    mu = next(s.mu for s in state if isinstance(s, af.ScaleByMomentumState))
    assert mu["w"].dtype == (jnp.float32 if dtype is None else jnp.dtype(dtype))
  tx = af.adafactor(0.1, momentum=0.9, dtype_momentum=jnp.complex64)  # complex updates' average
  updates, _ = tx.update(params, tx.init(params), params)
  assert updates["w"].dtype == jnp.complex64


def test_integer_gradient_names_the_leaf():
  """An integer update would be truncated to zero (the update of an int leaf is cast back)."""
  tx = af.adafactor(0.1)
  params = {"enc": {"w": jnp.ones((3, 4)), "step": jnp.ones((), jnp.int32)}}
  with pytest.raises(ValueError, match=r"'enc/step' has dtype int32: gradients must be floating"):
    tx.update(params, tx.init(params), params)
  import optax  # the way out the message names: leave the integer leaf out
  masked = optax.masked(tx, {"enc": {"w": True, "step": False}})
  updates, _ = masked.update(params, masked.init(params), params)
  assert updates["enc"]["w"].dtype == jnp.float32 and float(updates["enc"]["w"][0, 0]) < 0


def test_bfloat16_hyperparameters_are_numbers():
  """optax.inject_hyperparams casts hyperparameters to the params' dtype: a bfloat16 scalar is
  a number like a float16 one (np.issubdtype does not count ml_dtypes' bfloat16), and is still
  range-checked."""
  import optax
  params = {"w": jnp.ones((4, 6), jnp.bfloat16)}
  grads = {"w": jnp.linspace(-1, 1, 24, dtype=jnp.bfloat16).reshape(4, 6)}
  for factory in (af.adafactor, af.adadelta, af.keras_adafactor):
    tx = optax.inject_hyperparams(factory)(learning_rate=1e-2)
    state = tx.init(params)
    assert state.hyperparams["learning_rate"].dtype == jnp.bfloat16
    injected, _ = tx.update(grads, state, params)
    direct = factory(**state.hyperparams)  # the same (bfloat16) values, given directly
    expected, _ = direct.update(grads, direct.init(params), params)
    assert jnp.array_equal(injected["w"], expected["w"]), factory.__name__
    assert float(jnp.abs(expected["w"]).max()) > 0
  with pytest.raises(ValueError, match="learning_rate=.* out of range"):
    af.adafactor(jnp.asarray(-1e-2, jnp.bfloat16))
  with pytest.raises(ValueError, match="decay_rate=.* out of range"):
    af.adafactor(1e-2, decay_rate=jnp.asarray(float("inf"), jnp.bfloat16))


def test_injected_switch_needs_a_python_bool():
  import jax
  import optax
  tx = optax.inject_hyperparams(af.adafactor, static_args=("min_dim_size_to_factor",))(
      learning_rate=0.1, factored=1)  # a number (not a bool) is injected as an array
  with pytest.raises(ValueError, match=r"factored must be a bool, got Array\(1"):
    tx.init({"w": jnp.ones((3, 4))})

  def build(factored):  # a switch traced under jit
    af.adafactor(0.1, factored=factored)
    return factored
  with pytest.raises(ValueError, match="factored .* concrete bool.*static_args"):
    jax.jit(build)(True)


@pytest.mark.parametrize("factory", [
    lambda: af.adafactor(0.1),
    lambda: af.adafactor(0.1, weight_decay_rate=0.1, multiply_by_parameter_scale=False),
    lambda: af.keras_adafactor(0.1, weight_decay=0.1),
    lambda: af.keras_adafactor(0.1, use_ema=True)],
    ids=["param_scale", "weight_decay", "keras_weight_decay", "keras_ema"])
def test_params_of_another_shape_name_the_leaf(factory):
  """Params whose leaf has another shape than its update (the update would broadcast or fail
  deep in XLA)."""
  tx = factory()
  params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
  with pytest.raises(ValueError, match=r"'w' has shape \(3, 4\) in the updates but \(3, 5\) in "
                                       r"the params"):
    tx.update(params, tx.init(params), {"w": jnp.ones((3, 5)), "b": jnp.ones(4)})


@pytest.mark.parametrize("other", ["optax.adam", "keras_adafactor"])
def test_state_of_another_optimizer_names_the_first_differing_path(other):
  import optax
  params = {"w": jnp.ones((3, 4))}
  state = (optax.adam(0.1) if other == "optax.adam" else af.keras_adafactor(0.1)).init(params)
  with pytest.raises(ValueError, match=r"state passed does not match the state init makes.*"
                                       r"first differing key path: '0/"):
    af.adafactor(0.1).update(params, state, params)


def test_scale_loss_and_from_config_bad_input():
  with pytest.raises(ValueError, match="opt_state_or_factor must be a number or an optimizer "
                                       "state, got 'x'"):
    af.scale_loss(1.0, "x")
  with pytest.raises(ValueError, match=r"opt_state_or_factor=0\.0 is out of range"):
    af.scale_loss(1.0, 0.0)
  with pytest.raises(ValueError, match=r"from_config: adafactor has no argument\(s\) \['bogus'\]"):
    af.from_config({"name": "adafactor", "config": {"learning_rate": 0.1, "bogus": 1}})


def test_factor_rule_rank_mismatch_names_the_leaf():
  tx = af.adafactor(factor_rule={"enc/w": ("row", "col")})
  with pytest.raises(ValueError, match=r"'enc/w'.*rank 3"):
    tx.init({"enc": {"w": jnp.zeros((2, 3, 4))}})


@pytest.mark.unit
@pytest.mark.parametrize("factory", [af.adafactor, af.adadelta])
def test_mismatched_tree_names_first_differing_path(factory):
  tx = factory(0.1)
  params = {"enc": {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}, "dec": jnp.ones(2)}
  state = tx.init(params)
  grads = {"enc": {"w": jnp.ones((3, 4)), "bias": jnp.ones(4)}, "dec": jnp.ones(2)}
  with pytest.raises(ValueError, match=r"enc/bias.*enc/b|enc/b.*enc/bias"):
    tx.update(grads, state, grads)


def test_mismatched_shape_names_the_leaf():
  tx = af.adafactor(0.1, min_dim_size_to_factor=2)
  state = tx.init({"w": jnp.ones((3, 4))})
  with pytest.raises(ValueError, match=r"'w'.*\(5, 4\)"):
    tx.update({"w": jnp.ones((5, 4))}, state, {"w": jnp.ones((5, 4))})


@pytest.mark.parametrize("kwargs,transform", [
    (dict(learning_rate=0.1), "scale_by_param_block_rms"),
    (dict(learning_rate=0.1, multiply_by_parameter_scale=False, weight_decay_rate=0.1),
     "add_decayed_weights"),
])
def test_params_none_names_the_transform(kwargs, transform):
  tx = af.adafactor(**kwargs)
  params = {"w": jnp.ones((3, 4))}
  with pytest.raises(ValueError, match=transform):
    tx.update(params, tx.init(params), None)


def test_params_not_needed_without_scale_or_decay():
  tx = af.adafactor(0.1, multiply_by_parameter_scale=False)
  params = {"w": jnp.ones((3, 4))}
  updates, _ = tx.update(params, tx.init(params), None)
  assert updates["w"].shape == (3, 4)


def test_weight_decay_mask_tree_mismatch_names_path():
  tx = af.adafactor(0.1, weight_decay_rate=0.1, weight_decay_mask={"w": True, "c": False})
  params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
  with pytest.raises(ValueError, match="'b'.*'c'|'c'.*'b'"):
    tx.update(params, tx.init(params), params)


@pytest.mark.unit
def test_numpy_and_jax_bool_arguments_round_trip_through_config():
  """Switches and mask leaves given as NumPy or JAX bools (which the factories accept) are
  serialised as bools."""
  import numpy as np
  tx = af.adafactor(0.01, factored=np.bool_(True), weight_decay_rate=0.1,
                    weight_decay_mask={"w": np.True_, "n": {"x": jnp.asarray(False)}})
  config = af.get_config(tx)
  assert config["config"]["factored"] is True
  assert config["config"]["weight_decay_mask"] == {"w": True, "n": {"x": False}}
  params = {"w": jnp.ones((3, 4)), "n": {"x": jnp.ones(2)}}
  again = af.from_config(config)
  a, _ = tx.update(params, tx.init(params), params)
  b, _ = again.update(params, again.init(params), params)
  assert all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_injected_min_dim_needs_static_args():
  import optax
  tx = optax.inject_hyperparams(af.adafactor)(learning_rate=0.1, min_dim_size_to_factor=2)
  params = {"w": jnp.ones((3, 4))}
  state = tx.init(params)
  import jax
  with pytest.raises(ValueError, match="static_args"):
    jax.jit(tx.update)(params, state, params)


# --------------------------------------------------------------------- one rule per argument

# Every factory that takes hyperparameters, with what it needs to be built.
FACTORIES = {
    "adafactor": (af.adafactor, {}),
    "adadelta": (af.adadelta, {}),
    "big_vision_adafactor": (af.big_vision_adafactor, dict(learning_rate=0.1)),
    "keras_adafactor": (af.keras_adafactor, {}),
    "keras_adadelta": (af.keras_adadelta, {}),
    "torch_adafactor": (af.torch_adafactor, {}),
    "hf_adafactor": (af.hf_adafactor, dict(lr=0.01, relative_step=False)),
    "scale_by_factored_rms": (af.scale_by_factored_rms, {}),
    "scale_by_adadelta": (af.scale_by_adadelta, {}),
    "clip_by_block_rms": (af.clip_by_block_rms, dict(threshold=1.0)),
    "scale_by_param_block_rms": (af.scale_by_param_block_rms, {}),
    "scale_by_learning_rate": (af.scale_by_learning_rate, dict(learning_rate=0.1)),
    "scale_by_momentum": (af.scale_by_momentum, {}),
    "add_decayed_weights": (af.add_decayed_weights, {}),
    "relative_step_size": (af.relative_step_size, {}),
    "static_loss_scale": (af.static_loss_scale, dict(loss_scale_factor=2.0)),
    "clip_by_global_norm": (af.clip_by_global_norm, dict(max_norm=1.0)),
    "clip_by_global_norm_nan_on_nonfinite": (af.clip_by_global_norm_nan_on_nonfinite,
                                             dict(max_norm=1.0)),
    "clip_by_leaf_norm": (af.clip_by_leaf_norm, dict(max_norm=1.0)),
    "clip_by_value": (af.clip_by_value, dict(max_value=1.0)),
    "with_decoupled_weight_decay": (af.with_decoupled_weight_decay,
                                    dict(inner=optax.sgd(0.1), weight_decay=0.1)),
    "accumulate_gradients": (af.accumulate_gradients,
                             dict(inner=optax.sgd(0.1), gradient_accumulation_steps=2)),
    "ema_params": (af.ema_params, {}),
}
# Arguments named as another library names another quantity: the rule they follow, and why.
OTHER_RULE = {
    ("hf_adafactor", "decay_rate"): "beta2_decay",  # transformers' exponent is negated (-0.8)
    ("ema_params", "momentum"): "ema_momentum",  # Keras's EMA of the weights: [0, 1]
}
# Arguments checked by a rule of their own kind, not `validation.RULES` (tested above).
NOT_RULED = {
    "eps": "PyTorch's and transformers' eps is a pair, each checked as eps (tested below)",
    "factor_rule": "factoring.as_rules", "epsilon_mode": "one of 'add' and 'clamp'",
    "decay_rate_fn": "a callable", "multiply_by_parameter_scale": "a bool or t5x's rules",
    "exclude_from_weight_decay": "Keras's patterns or a mask", "name": "Keras's name",
    "inner": "a transformation",
}


def _ruled_arguments():
  out = []
  for fname, (factory, base) in FACTORIES.items():
    for arg in inspect.signature(factory).parameters:
      if (fname, arg) in OTHER_RULE or (arg in validation.RULES and not (
          arg == "eps" and fname in ("torch_adafactor", "hf_adafactor"))):
        out.append((fname, arg))
  return out


def _bad_values(rule):
  """Values that break `rule` (for numbers: beyond each bound, and NaN)."""
  if rule.kind in ("number", "schedule"):
    bad = [math.nan, "0.1"]
    if rule.low is not None:
      bad.append(rule.low - 1.0)
    if rule.high is not None:
      bad.append(rule.high + 1.0)
    return bad
  if rule.kind == "int":
    return [rule.low - 1, 2.5]
  return {"bool": ["yes", 1], "dtype": [jnp.int32, "foo"], "buffer_dtype": [jnp.int32],
          "mask": ["x", [1.5]]}[rule.kind]


def _edges(rule):
  """Values on `rule`'s bounds that it allows."""
  if rule.kind not in ("number", "schedule", "int"):
    return []
  edges = [x for x, inclusive in ((rule.low, rule.low_inclusive),
                                  (rule.high, rule.high_inclusive)) if x is not None and inclusive]
  if rule.kind == "int":  # an integral float too: R passes every number as a double
    edges += [float(x) for x in edges]
  return edges


RULED = _ruled_arguments()


@pytest.mark.unit
def test_every_argument_has_one_rule():
  """Each argument of each factory is checked by its rule in validation.RULES, or is listed as
  another library's quantity (OTHER_RULE) or as checked by a rule of its own kind (NOT_RULED):
  a new argument cannot be left without one."""
  for fname, (factory, _) in FACTORIES.items():
    for arg in inspect.signature(factory).parameters:
      ruled = (fname, arg) in RULED
      assert ruled or arg in NOT_RULED, (fname, arg)


@pytest.mark.unit
@pytest.mark.parametrize("fname,arg", RULED, ids=[f"{f}-{a}" for f, a in RULED])
def test_one_rule_per_argument_one_message(fname, arg):
  """A block, a preset and a Keras-named preset reject a bad value of an argument with the same
  message, the one of its rule (naming the argument, the value and what is allowed), and accept
  the values on the rule's bounds (decay_rate=0 everywhere)."""
  factory, base = FACTORIES[fname]
  rule_name = OTHER_RULE.get((fname, arg), arg)
  rule = validation.RULES[rule_name]
  for bad in _bad_values(rule):
    with pytest.raises(ValueError) as expected:
      validation.check(arg, bad, rule=rule_name)
    with pytest.raises(ValueError) as got:
      factory(**{**base, arg: bad})
    assert str(got.value) == str(expected.value), (fname, arg, bad)
    assert arg in str(got.value)
  for edge in _edges(rule):
    factory(**{**base, arg: edge})


@pytest.mark.parametrize("factory", [af.torch_adafactor, af.hf_adafactor])
def test_eps_pairs_follow_the_rule_of_eps(factory):
  base = dict(lr=0.01, relative_step=False) if factory is af.hf_adafactor else {}
  for i in range(2):
    pair = [1e-3, 1e-3]
    pair[i] = -1.0
    with pytest.raises(ValueError) as expected:
      validation.check(f"eps[{i}]", -1.0, rule="eps")
    with pytest.raises(ValueError) as got:
      factory(**base, eps=tuple(pair))
    assert str(got.value) == str(expected.value)
  with pytest.raises(ValueError, match="pair"):
    factory(**base, eps=1e-3)


def test_decay_rate_zero_keeps_only_the_latest_squared_gradient():
  """decay_rate=0 (PyTorch's beta2_decay=0) is allowed by every factory: beta2 is 0 and the
  statistic is the latest squared gradient, so the unit step is g / |g|."""
  g = jnp.array([3.0, -0.5, 2.0])
  for tx in (af.scale_by_factored_rms(decay_rate=0.0), af.adafactor(decay_rate=0.0,
                                                                    clipping_threshold=None,
                                                                    multiply_by_parameter_scale=False)):
    state = tx.init(g)
    for scale in (1.0, 10.0):
      u, state = tx.update(scale * g, state, g)
      np.testing.assert_allclose(np.abs(np.asarray(u)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("factory", [af.adadelta, af.keras_adafactor, af.keras_adadelta,
                                     af.torch_adafactor, af.hf_adafactor,
                                     af.big_vision_adafactor])
def test_weight_decay_takes_a_schedule_in_every_preset(factory):
  """`weight_decay` follows one rule (a number >= 0 or a schedule) in every preset: a constant
  schedule gives the numbers of the constant."""
  base = dict(learning_rate=0.1) if factory is af.big_vision_adafactor else {}
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(8, 6)), jnp.float32)}
  grads = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(8, 6)), jnp.float32)}
  out = []
  for wd in (0.05, lambda count: 0.05):
    tx = factory(**base, weight_decay=wd)
    state, p = tx.init(params), params
    for _ in range(3):
      u, state = jax.jit(tx.update)(grads, state, p)
      p = optax.apply_updates(p, u)
    out.append(p["w"])
  np.testing.assert_allclose(out[1], out[0], rtol=1e-6, atol=1e-7)
  assert not np.allclose(out[0], params["w"])  # the steps moved the params
