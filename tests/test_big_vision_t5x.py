"""big_vision parity (against the same chain written with optax's public pieces), t5x's published
test numbers and options, and the cross-library goldens A-F
(docs/reference-behaviours.md#cross-library-goldens) through every preset that can express them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close
from helpers import grads_seq
from helpers import max_rel_diff
from helpers import run_steps

import adafactor_jax as af

STEPS = 30
RTOL, ATOL = 1e-5, 1e-6
MAX_SEEN: dict[str, float] = {}


def run(tx, params, grads):
  """Params after each step, jitted, for an explicit list of gradient trees."""
  return run_steps(tx, params, grads)[0]


def state_of(state, kind):
  """The index and value of the (first) sub-state of type `kind` in a chain's state."""
  for i, s in enumerate(state):
    if isinstance(s, kind):
      return i, s
  raise AssertionError(f"no {kind.__name__} in the state")


def replace_state(state, kind, **fields):
  i, s = state_of(state, kind)
  return state[:i] + (s._replace(**fields),) + state[i + 1:]


# --------------------------------------------------------------------------------------------
# big_vision: the preset equals big_vision's chain written with optax's public pieces.

def bv_params(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"kernel": (40, 36), "t3": (3, 33, 40), "bias": (7,), "small": (5, 3),
            "emb": {"kernel": (64, 8)}}
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def kernel_mask(params):
  return af.mask_by_path(include=r"(^|/)kernel$")(params)


def lr_schedule(count):
  return 0.01 * jnp.minimum(1.0, (count + 1.0) / 10.0) * jax.lax.rsqrt(count + 1.0)


def wd_schedule(count):
  return 1e-3 * (1.0 + jnp.cos(count / 10.0))


def big_vision_reference(learning_rate, *, min_dim_size_to_factor=32, decay_rate=0.8,
                         decay_offset=0, beta2_cap=0.999, clipping_threshold=None,
                         momentum=0.9, dtype_momentum=jnp.bfloat16, eps=1e-30,
                         weight_decay=None, weight_decay_mask=None):
  """big_vision/optax.py scale_by_adafactor + make(), with optax's public transformations."""

  def decay_rate_pow(i, exponent):
    t = jnp.array(i, jnp.float32) + 1.0
    return jnp.minimum(beta2_cap, 1.0 - t**(-exponent))

  txs = [optax.scale_by_factored_rms(
      factored=True, decay_rate=decay_rate, step_offset=decay_offset,
      min_dim_size_to_factor=min_dim_size_to_factor, epsilon=eps,
      decay_rate_fn=decay_rate_pow)]
  if clipping_threshold:
    txs.append(optax.clip_by_block_rms(clipping_threshold))
  if momentum:
    txs.append(optax.ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
  txs.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
  if weight_decay is not None:
    txs.append(optax.add_decayed_weights(weight_decay, weight_decay_mask))
  txs.append(optax.scale(-1.0))
  return optax.chain(*txs)


BV_CASES = {
    "default": dict(learning_rate=0.01),
    "momentum_f32": dict(learning_rate=0.01, dtype_momentum=jnp.float32),
    "no_momentum": dict(learning_rate=0.01, momentum=None),
    "beta2_cap_0.9": dict(learning_rate=0.01, beta2_cap=0.9, dtype_momentum=jnp.float32),
    "decay_rate_0.6": dict(learning_rate=0.01, decay_rate=0.6),
    "clip_1": dict(learning_rate=0.01, clipping_threshold=1.0),
    "min_dim_8": dict(learning_rate=0.01, min_dim_size_to_factor=8),
    "eps_1e-8": dict(learning_rate=0.01, eps=1e-8),
    "lr_schedule": dict(learning_rate=lr_schedule),
    "weight_decay": dict(learning_rate=0.01, weight_decay=1e-3),
    "weight_decay_masked_schedule": dict(learning_rate=lr_schedule, weight_decay=wd_schedule,
                                         weight_decay_mask=kernel_mask),
    "combo": dict(learning_rate=0.02, min_dim_size_to_factor=4, beta2_cap=0.95,
                  clipping_threshold=0.8, momentum=0.8, weight_decay=3e-3,
                  weight_decay_mask=kernel_mask),
}


@pytest.mark.parametrize("name", list(BV_CASES))
def test_big_vision_matches_optax_chain(name):
  kw = BV_CASES[name]
  params = bv_params()
  grads = grads_seq(params, STEPS)
  a = run(af.big_vision_adafactor(**kw), params, grads)
  b = run(big_vision_reference(**kw), params, grads)
  bf16_momentum = kw.get("momentum", 0.9) and kw.get("dtype_momentum", jnp.bfloat16) == jnp.bfloat16
  for i, (x, y) in enumerate(zip(a, b)):
    if bf16_momentum:
      # big_vision's default bf16 momentum: a one-ulp f32 difference in an update (our means of
      # squares add eps after the sum, and sum in another order) can round a momentum entry to
      # the neighbouring bf16 value, which stays in the trajectory; held to 2e-4 of each leaf's
      # scale, as adafactor's bf16 momentum against optax (test_optax_parity).
      assert max_rel_diff(x, y) < 2e-4, f"big_vision[{name}] step {i + 1}"
    else:
      assert_trees_close(x, y, RTOL, ATOL, f"big_vision[{name}] step {i + 1}")
  MAX_SEEN[f"big_vision[{name}]"] = max(max_rel_diff(x, y) for x, y in zip(a, b))


def test_big_vision_decay_offset_with_restored_counter():
  # optax's step_offset is finite only once the counter has passed it (a restored run).
  params = bv_params()
  grads = grads_seq(params, steps=10)
  kw = dict(learning_rate=0.01, decay_offset=6, dtype_momentum=jnp.float32)
  out = []
  for tx in (af.big_vision_adafactor(**kw), big_vision_reference(**kw)):
    init = tx.init

    def init_at_10(p, tx=tx, init=init):
      state = init(p)
      return (state[0]._replace(count=jnp.asarray(10, jnp.int32)),) + tuple(state[1:])

    out.append(run(optax.GradientTransformation(init_at_10, tx.update), params, grads))
  for x, y in zip(*out):
    assert_trees_close(x, y, RTOL, ATOL, "big_vision[decay_offset]")


def test_big_vision_state_matches_big_vision_test():
  # big_vision/optax_test.py::test_adafactor: a 1024x1024 kernel keeps 2*1024 second-moment
  # floats (big_vision/optax also keeps a (1,) placeholder and the count; we keep neither the
  # placeholder) and a full-size bf16 momentum.
  tx = af.big_vision_adafactor(0.01)
  state = tx.init({"kernel": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)})
  _, f = state_of(state, af.ScaleByFactoredRMSState)
  assert f.v_row["kernel"].size + f.v_col["kernel"].size == 2 * 1024
  assert f.v["kernel"] is None
  _, m = state_of(state, af.ScaleByMomentumState)
  assert m.mu["kernel"].shape == (1024, 1024) and m.mu["kernel"].dtype == jnp.bfloat16


def test_big_vision_momentum_is_before_the_learning_rate():
  # Deliberate in big_vision (and different from optax/t5x/transformers): with a constant
  # gradient, halving the learning rate after step 1 halves the very next step at once.
  params = {"w": jnp.ones(4)}
  g = {"w": jnp.ones(4)}
  for factory, before in ((lambda lr: af.big_vision_adafactor(
      lr, dtype_momentum=jnp.float32), True), (lambda lr: af.adafactor(
          lr, momentum=0.9, multiply_by_parameter_scale=False), False)):
    tx = factory(lambda c: jnp.where(c == 0, 1.0, 0.5))
    state = tx.init(params)
    u1, state = tx.update(g, state, params)
    u2, state = tx.update(g, state, params)
    # momentum of the raw update (1 each step): m1 = 0.1, m2 = 0.19 -> steps 0.1 and 0.095;
    # momentum of lr-scaled steps: m1 = 0.1, m2 = 0.09 + 0.1 * 0.5 = 0.14.
    expected = 0.5 * 0.19 if before else 0.9 * 0.1 + 0.1 * 0.5
    np.testing.assert_allclose(-u2["w"], expected, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# t5x: its published test numbers (t5x/adafactor_test.py), with our state set to theirs.

def t5x_step(tx, state_fields, momentum=None):
  params = {"x": jnp.ones((3, 2), jnp.float32)}
  grads = {"x": jnp.ones((3, 2), jnp.float32)}
  state = replace_state(tx.init(params), af.ScaleByFactoredRMSState, **state_fields)
  if momentum is not None:
    state = replace_state(state, af.ScaleByMomentumState, mu={"x": momentum})
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def test_t5x_apply_gradient_factored():
  tx = af.adafactor(learning_rate=0.1, decay_rate=0.8, min_dim_size_to_factor=0)
  new_params, state = t5x_step(tx, dict(count=jnp.asarray(1, jnp.int32),
                                        v_row={"x": jnp.array([0.9, 0.9])},
                                        v_col={"x": jnp.array([0.1, 0.1, 0.1])}))
  _, f = state_of(state, af.ScaleByFactoredRMSState)
  assert int(f.count) == 2
  np.testing.assert_allclose(f.v_row["x"], [0.9574349, 0.9574349], rtol=1e-6)
  np.testing.assert_allclose(f.v_col["x"], [0.6169143] * 3, rtol=1e-6)
  np.testing.assert_allclose(new_params["x"], 0.9 * np.ones((3, 2)), rtol=1e-6)
  assert f.v["x"] is None  # t5x stores (1,) zeros here


def test_t5x_apply_gradient_unfactored_with_beta1_zero():
  tx = af.adafactor(learning_rate=0.1, momentum=0.0, decay_rate=0.8, min_dim_size_to_factor=32)
  new_params, state = t5x_step(tx, dict(count=jnp.asarray(1, jnp.int32),
                                        v={"x": 0.5 * jnp.ones((3, 2))}),
                               momentum=jnp.zeros((3, 2)))
  _, f = state_of(state, af.ScaleByFactoredRMSState)
  _, m = state_of(state, af.ScaleByMomentumState)
  np.testing.assert_allclose(f.v["x"], 0.787174 * np.ones((3, 2)), rtol=1e-6)
  np.testing.assert_allclose(m.mu["x"], 0.1 * np.ones((3, 2)), rtol=1e-6)
  np.testing.assert_allclose(new_params["x"], 0.9 * np.ones((3, 2)), rtol=1e-6)
  assert f.v_row["x"] is None and f.v_col["x"] is None


def test_t5x_apply_gradient_with_global_norm_clipping():
  tx = af.adafactor(learning_rate=0.1, decay_rate=0.8, min_dim_size_to_factor=0,
                    global_norm_clip_threshold=1.0)
  new_params, state = t5x_step(tx, dict(count=jnp.asarray(1, jnp.int32),
                                        v_row={"x": jnp.array([0.9, 0.9])},
                                        v_col={"x": jnp.array([0.1, 0.1, 0.1])}))
  _, f = state_of(state, af.ScaleByFactoredRMSState)
  np.testing.assert_allclose(f.v_row["x"], [0.478811, 0.478811], rtol=1e-6)
  np.testing.assert_allclose(f.v_col["x"], [0.13829] * 3, rtol=1e-5)  # 5 digits published
  np.testing.assert_allclose(new_params["x"], 0.9 * np.ones((3, 2)), rtol=1e-6)


@pytest.mark.parametrize("rule,v_row,v_col", [
    (("col", "batch", "row"), (4, 16), (24, 4)),
    (("row", "batch", "col"), (24, 4), (4, 16)),
    (("col", "row", "row"), (4, 16), (24,)),
    (("col", "col", "row"), (16,), (24, 4)),
])
def test_t5x_3d_factor_rule_shapes(rule, v_row, v_col):
  # t5x test_3D_simple_manual_rules: (24, 4, 16) with explicit ROW/COL/BATCH rules.
  tx = af.adafactor(min_dim_size_to_factor=8, factor_rule={"a": rule})
  _, f = state_of(tx.init({"a": jnp.ones((24, 4, 16))}), af.ScaleByFactoredRMSState)
  assert f.v_row["a"].shape == v_row and f.v_col["a"].shape == v_col and f.v["a"] is None


def test_t5x_2d_shapes():
  # t5x test_2D_simple / _nofactor / test_factorizes.
  for shape, min_dim, expect in [((24, 16), 8, ((16,), (24,))), ((24, 16), 32, None),
                                 ((64, 64), 32, ((64,), (64,))), ((31, 64), 32, None)]:
    tx = af.adafactor(min_dim_size_to_factor=min_dim)
    _, f = state_of(tx.init({"a": jnp.ones(shape)}), af.ScaleByFactoredRMSState)
    if expect is None:
      assert f.v["a"].shape == shape and f.v_row["a"] is None
    else:
      assert (f.v_row["a"].shape, f.v_col["a"].shape) == expect


def test_t5x_batch_dims_give_per_slice_clipping_and_scale():
  # Scanned layers: a (2, 8, 6) stack with a batch dim behaves as two separate (8, 6) leaves,
  # statistics, update clipping and parameter scale included.
  rng = np.random.default_rng(0)
  stack = jnp.asarray(rng.normal(size=(2, 8, 6)) * np.array([1.0, 30.0])[:, None, None],
                      jnp.float32)
  grads = [jnp.asarray(rng.normal(size=(2, 8, 6)) * np.array([1.0, 1e-3])[:, None, None],
                       jnp.float32) for _ in range(10)]
  kw = dict(learning_rate=0.05, min_dim_size_to_factor=0, momentum=0.5)
  stacked = run(af.adafactor(**kw, factor_rule={"stack": ("batch", "col", "row")}),
                {"stack": stack}, [{"stack": g} for g in grads])
  split = run(af.adafactor(**kw), {"l0": stack[0], "l1": stack[1]},
              [{"l0": g[0], "l1": g[1]} for g in grads])
  for x, y in zip(stacked, split):
    np.testing.assert_allclose(x["stack"], np.stack([y["l0"], y["l1"]]), rtol=1e-6, atol=1e-7)
  # and without the batch dim the RMS spans both slices: different numbers
  whole = run(af.adafactor(**kw, factor_rule={"stack": ("none", "col", "row")}),
              {"stack": stack}, [{"stack": g} for g in grads])
  assert not np.allclose(whole[-1]["stack"], stacked[-1]["stack"], rtol=1e-3)


def test_t5x_multiply_by_parameter_scale_per_path():
  # t5x test_multiply_by_parameter_scale_equivalence: HParamMap([('a', False), ('.*', True)])
  # equals two optimizers, one without parameter scale for 'a'.
  rng = np.random.default_rng(1)
  p = {k: jnp.asarray(rng.normal(size=(64, 64)) * 100, jnp.float32) for k in "ab"}
  grads = [{k: jnp.asarray(rng.normal(size=(64, 64)), jnp.float32) for k in "ab"}
           for _ in range(5)]
  mapped = af.adafactor(3.0, multiply_by_parameter_scale=[("a", False), (".*", True)])
  multi = optax.multi_transform(
      {"scaled": af.adafactor(3.0),
       "unscaled": af.adafactor(3.0, multiply_by_parameter_scale=False)},
      {"a": "unscaled", "b": "scaled"})
  for x, y in zip(run(mapped, p, grads), run(multi, p, grads)):
    assert_trees_close(x, y, 1e-6, 1e-7, "per-path parameter scale")
  with pytest.raises(ValueError, match="no pattern matches"):
    bad = af.adafactor(3.0, multiply_by_parameter_scale={"a": False})
    bad.update(grads[0], bad.init(p), p)


def test_t5x_max_parameter_scale():
  rng = np.random.default_rng(2)
  p = {"w": jnp.asarray(rng.normal(size=(16, 12)) * 100, jnp.float32),
       "b": jnp.asarray(rng.normal(size=(12,)) * 0.1, jnp.float32)}
  grads = grads_seq(p, steps=5)
  capped = run(af.adafactor(0.1, max_parameter_scale=0.5), p, grads)
  # 'w' has RMS ~100, capped to 0.5: like no parameter scale and lr 0.05; 'b' (RMS ~0.1) is
  # scaled normally.
  unscaled = run(af.adafactor(0.05, multiply_by_parameter_scale=False), p, grads)
  plain = run(af.adafactor(0.1), p, grads)
  for x, y, z in zip(capped, unscaled, plain):
    np.testing.assert_allclose(x["w"], y["w"], rtol=1e-6)
    np.testing.assert_allclose(x["b"], z["b"], rtol=1e-6)


@pytest.mark.parametrize("wd,exponent,lr,ratio", [
    (None, 1.0, 0.1, [0.9, 0.9]),
    (0.5, 2.0, 0.1, [0.995, 0.995]),
    (None, 1.0, lambda c: 0.1 / (c + 1.0), [0.9, 0.95]),
    (0.1, None, 0.1, [0.9, 0.9]),  # no exponent: not lr-coupled (optax/t5x default)
])
def test_t5x_weight_decay_rate_lr_exponent(wd, exponent, lr, ratio):
  p = {"w": jnp.asarray(np.linspace(-2, 2, 12).reshape(3, 4), jnp.float32)}
  zero = [{"w": jnp.zeros((3, 4))}] * 2
  tx = af.adafactor(lr, weight_decay_rate=wd, weight_decay_rate_lr_exponent=exponent)
  out = run(tx, p, zero)
  np.testing.assert_allclose(out[0]["w"], ratio[0] * p["w"], rtol=1e-6)
  np.testing.assert_allclose(out[1]["w"], ratio[1] * out[0]["w"], rtol=1e-6)


def test_t5x_options_errors():
  with pytest.raises(ValueError, match="needs a learning_rate"):
    af.adafactor(weight_decay_rate_lr_exponent=1.0)
  with pytest.raises(ValueError):
    af.adafactor(0.1, global_norm_clip_threshold=0.0)
  with pytest.raises(ValueError):
    af.adafactor(0.1, max_parameter_scale=-1.0)
  with pytest.raises(ValueError):
    af.adafactor(0.1, multiply_by_parameter_scale={"a": "yes"})


# --------------------------------------------------------------------------------------------
# Cross-library goldens, docs/reference-behaviours.md#cross-library-goldens
# (computed by running the libraries).

W2 = [[0.5, -1.0, 1.5], [-2.0, 0.25, 1.0]]
G2 = [[[0.1, -0.2, 0.3], [0.4, -0.5, 0.6]],
      [[-0.3, 0.1, 0.2], [0.05, 0.6, -0.4]],
      [[1.0, -1.0, 0.5], [-0.5, 0.25, 2.0]]]
W1 = [0.5, -1.0, 1.5, -2.0]
G1 = [[0.1, -0.2, 0.3, 0.4], [-0.3, 0.1, 0.2, 0.05], [1.0, -1.0, 0.5, -0.5]]

GOLDEN_A_2D = [[[0.492613191, -0.988688705, 1.486379397], [-2.012598984, 0.262057881, 0.988384310]],
               [[0.514843201, -0.993217507, 1.476895300], [-2.014348529, 0.249226565, 0.997341310]],
               [[0.497130905, -0.976144665, 1.472006288], [-2.008271189, 0.246297598, 0.983921397]]]
GOLDEN_A_1D = [[0.486306936, -0.986306936, 1.486306936, -2.013693064],
               [0.503643271, -0.995365328, 1.475263870, -2.016284740],
               [0.489267393, -0.980667645, 1.462389999, -2.003627831]]
GOLDEN_B_2D = [[[0.426131908, -0.886887046, 1.363793968], [-2.125989842, 0.370578813, 0.883843105]],
               [[0.645026716, -0.931481331, 1.270405813], [-2.143217283, 0.244231205, 0.972041027]],
               [[0.468439501, -0.761269305, 1.221663572], [-2.082627712, 0.215030129, 0.838247811]]]
GOLDEN_B_1D = [[0.363069361, -0.863069361, 1.363069361, -2.136930639],
               [0.534423473, -0.952603430, 1.253918564, -2.162547031],
               [0.391090024, -0.806061463, 1.125560756, -2.036352422]]
W3 = [[[1.69, -0.47], [0.03, 0.41], [-0.79, 0.0]], [[0.0, -1.75], [1.02, 0.60], [-0.63, -0.17]],
      [[0.51, -0.26], [-0.24, -1.45], [0.55, 0.12]], [[0.27, -1.53], [1.65, 0.15], [-0.39, 2.03]]]
G3 = [
    [[[-0.05, -1.45], [-0.41, -2.29], [1.05, -0.42]],
     [[-0.74, 1.07], [-1.65, 0.54], [-2.06, -0.66]],
     [[-1.20, 1.46], [1.77, -0.33], [0.84, -0.18]],
     [[0.57, -0.75], [-1.71, -1.80], [0.38, 2.25]]],
    [[[0.27, -0.52], [1.91, 0.24], [0.10, 0.25]],
     [[-0.13, -0.31], [-1.43, 0.50], [-0.09, 1.19]],
     [[-0.37, -1.91], [-0.10, 1.70], [-0.38, -0.89]],
     [[-1.19, -1.05], [-0.30, -1.18], [1.50, -0.28]]]]
GOLDEN_C_LAST2 = [
    [[1.660811142, -0.311928271], [-0.059832873, 0.488829806], [-1.022804324, -0.006351086]],
    [[0.072365898, -1.849792589], [1.213579659, 0.484241460], [-0.530580074, -0.235313150]],
    [[0.609136418, -0.268799899], [-0.333427175, -1.533126198], [0.517018692, 0.264767683]],
    [[0.300797967, -1.351697291], [1.788843643, 0.303093518], [-0.536654359, 1.946699349]]]
GOLDEN_C_LARGEST2 = [
    [[1.660498280, -0.333158837], [-0.072914625, 0.509022491], [-0.946065188, 0.000903332]],
    [[0.084481853, -1.848373501], [1.186352256, 0.488814735], [-0.505050110, -0.256150475]],
    [[0.702711426, -0.292596645], [-0.332005135, -1.530053903], [0.534776333, 0.216891634]],
    [[0.346223506, -1.412558326], [1.791224933, 0.312208537], [-0.557929021, 1.920076944]]]
GOLDEN_D = [[[0.492613191, -0.988688705, 1.486379397], [-2.012598984, 0.262057881, 0.988384310]],
            [[0.508195073, -0.983037341, 1.464636757], [-2.025687614, 0.260078658, 0.986887190]],
            [[0.504540058, -0.960910647, 1.440188640], [-2.031401567, 0.255373944, 0.972145316]]]
GOLDEN_E = [[[0.4985859278, -0.9985858218, 1.4985858022],
             [-2.0014142047, 0.2514142079, 0.9985857904]],
            [[0.5004879415, -0.9994986623, 1.4974567026],
             [-2.0016686132, 0.2498617826, 0.9997149014]],
            [[0.4978672433, -0.9973710454, 1.4955848525],
             [-2.0000880862, 0.2490706652, 0.9975646393]]]
GOLDEN_E2 = [[[0.4968393023, -0.9968381176, 1.4968378980],
              [-2.0031621788, 0.2531622144, 0.9968377663]],
             [[0.5011020363, -0.9989229048, 1.4942667783],
              [-2.0037463560, 0.2496540474, 0.9994090192]],
             [[0.4952606875, -0.9941883670, 1.4900432141],
              [-2.0001879621, 0.2478314173, 0.9946032007]]]
# The libraries' float32 results agree with these float64 values to <= 1.3e-7
# (docs/reference-behaviours.md#cross-library-goldens).
GOLDEN_ATOL = 2e-7


def paper_schedule(t):
  return jnp.minimum(1e-2, 1.0 / jnp.sqrt(t + 1.0))


def check_golden(tx, w, grads, golden, label):
  out = run(tx, jnp.asarray(w, jnp.float32), [jnp.asarray(g, jnp.float32) for g in grads])
  for i, (x, y) in enumerate(zip(out, golden)):
    np.testing.assert_allclose(x, y, rtol=0, atol=GOLDEN_ATOL, err_msg=f"{label} step {i + 1}")
  MAX_SEEN[f"golden {label}"] = max(
      float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)))) for x, y in zip(out, golden))


PAPER_PRESETS = {  # golden A: the paper's defaults
    "adafactor_schedule_lambda": lambda: af.adafactor(paper_schedule, min_dim_size_to_factor=0),
    "adafactor_relative_step_size": lambda: af.adafactor(af.relative_step_size(1e-2),
                                                         min_dim_size_to_factor=0),
    "torch_adafactor": lambda: af.torch_adafactor(lr=0.01),
    "hf_adafactor": lambda: af.hf_adafactor(),
}
LR_01_PRESETS = {  # golden B: rho = lr = 0.1
    "adafactor": lambda: af.adafactor(0.1, min_dim_size_to_factor=0),
    "torch_adafactor": lambda: af.torch_adafactor(lr=0.1),
    "hf_adafactor": lambda: af.hf_adafactor(lr=0.1, relative_step=False),
}
LAST2_PRESETS = {  # golden C, last two dims factored
    "adafactor_last": lambda: af.adafactor(0.1, min_dim_size_to_factor=0, factor_rule="last"),
    "adafactor_explicit": lambda: af.adafactor(0.1, factor_rule={".*": ("none", "row", "col")}),
    "torch_adafactor": lambda: af.torch_adafactor(lr=0.1),
    "hf_adafactor": lambda: af.hf_adafactor(lr=0.1, relative_step=False),
}
MOMENTUM_PRESETS = {  # golden D: momentum 0.9 after the learning rate
    "adafactor": lambda: af.adafactor(0.1, min_dim_size_to_factor=0, momentum=0.9),
    "hf_adafactor": lambda: af.hf_adafactor(lr=0.1, relative_step=False, beta1=0.9),
}


@pytest.mark.unit
@pytest.mark.parametrize("name", list(PAPER_PRESETS))
def test_golden_a_paper_defaults(name):
  check_golden(PAPER_PRESETS[name](), W2, G2, GOLDEN_A_2D, f"A 2-D {name}")
  check_golden(PAPER_PRESETS[name](), W1, G1, GOLDEN_A_1D, f"A 1-D {name}")


@pytest.mark.unit
@pytest.mark.parametrize("name", list(LR_01_PRESETS))
def test_golden_b_lr_01(name):
  check_golden(LR_01_PRESETS[name](), W2, G2, GOLDEN_B_2D, f"B 2-D {name}")
  check_golden(LR_01_PRESETS[name](), W1, G1, GOLDEN_B_1D, f"B 1-D {name}")


@pytest.mark.unit
@pytest.mark.parametrize("name", list(LAST2_PRESETS))
def test_golden_c_last_two_dims(name):
  out = run(LAST2_PRESETS[name](), jnp.asarray(W3, jnp.float32),
            [jnp.asarray(g, jnp.float32) for g in G3])
  np.testing.assert_allclose(out[-1], GOLDEN_C_LAST2, rtol=0, atol=GOLDEN_ATOL, err_msg=name)
  MAX_SEEN[f"golden C last2 {name}"] = float(np.max(np.abs(out[-1] - np.asarray(GOLDEN_C_LAST2))))


def test_golden_c_largest_vs_last():
  largest = run(af.adafactor(0.1, min_dim_size_to_factor=0), jnp.asarray(W3, jnp.float32),
                [jnp.asarray(g, jnp.float32) for g in G3])
  np.testing.assert_allclose(largest[-1], GOLDEN_C_LARGEST2, rtol=0, atol=GOLDEN_ATOL)
  MAX_SEEN["golden C largest2"] = float(np.max(np.abs(largest[-1] - np.asarray(GOLDEN_C_LARGEST2))))
  # the two rules differ by up to 0.094 (the reason the presets pick the rule of their library)
  assert np.max(np.abs(np.asarray(GOLDEN_C_LAST2) - np.asarray(GOLDEN_C_LARGEST2))) > 0.09


@pytest.mark.unit
@pytest.mark.parametrize("name", list(MOMENTUM_PRESETS))
def test_golden_d_momentum_after_lr(name):
  check_golden(MOMENTUM_PRESETS[name](), W2, G2, GOLDEN_D, f"D {name}")


@pytest.mark.unit
def test_golden_e_adadelta():
  check_golden(af.adadelta(1.0, rho=0.95, eps=1e-7), W2, G2, GOLDEN_E, "E adadelta")
  check_golden(af.adadelta(1.0), W2, G2, GOLDEN_E2, "E2 adadelta")


@pytest.mark.unit
def test_golden_f_weight_decay_placement():
  # Zero gradient, wd = lr = 0.1: the ratio w1 / w0 tells where each library puts the decay.
  w = jnp.asarray(np.random.default_rng(4).normal(size=(3, 4)), jnp.float32)
  rms = float(jnp.sqrt(jnp.mean(w * w)))
  cases = {
      "adafactor (optax)": (af.adafactor(0.1, weight_decay_rate=0.1), 0.9),
      "adafactor (t5x lr exponent 1)": (af.adafactor(
          0.1, weight_decay_rate=0.1, weight_decay_rate_lr_exponent=1.0), 0.99),
      "torch_adafactor": (af.torch_adafactor(lr=0.1, weight_decay=0.1), 0.99),
      "hf_adafactor": (af.hf_adafactor(lr=0.1, relative_step=False, weight_decay=0.1),
                       1 - 0.1 * 0.1 * rms),
      "big_vision_adafactor": (af.big_vision_adafactor(0.1, weight_decay=0.1), 0.9),
  }
  for name, (tx, ratio) in cases.items():
    out = run(tx, w, [jnp.zeros_like(w)])
    np.testing.assert_allclose(out[0], ratio * w, rtol=1e-6, err_msg=name)


def test_report_max_difference(capsys):
  with capsys.disabled():
    bv = {k: v for k, v in MAX_SEEN.items() if k.startswith("big_vision")}
    gold = {k: v for k, v in MAX_SEEN.items() if k.startswith("golden")}
    if bv:
      worst = max(bv, key=bv.get)
      print(f"\n[parity] big_vision chain: {len(bv)} configurations x {STEPS} steps, max "
            f"|ours-ref|/max|ref| = {bv[worst]:.3g} ({worst})")
    if gold:
      worst = max(gold, key=gold.get)
      print(f"[parity] goldens A-F: {len(gold)} checks, max |ours-golden| = {gold[worst]:.3g} "
            f"({worst})")


@pytest.mark.parametrize("make", [
    lambda: af.torch_adafactor(lr=0.05, eps=(1e-3, 1e-2), weight_decay=0.1, maximize=True),
    lambda: af.hf_adafactor(lr=0.05, relative_step=False, beta1=0.9, weight_decay=0.1),
    lambda: af.hf_adafactor(warmup_init=True),
    lambda: af.big_vision_adafactor(0.01, clipping_threshold=1.0, weight_decay=1e-3,
                                    weight_decay_mask=af.mask_by_path(include="kernel")),
    lambda: af.adafactor(0.05, multiply_by_parameter_scale=[("bias", False), (".*", True)],
                         max_parameter_scale=2.0, global_norm_clip_threshold=1.0,
                         weight_decay_rate=0.5, weight_decay_rate_lr_exponent=1.0),
], ids=["torch", "hf", "hf_warmup", "big_vision", "adafactor_t5x"])
def test_presets_config_round_trip(make):
  import json
  tx = make()
  cfg = af.get_config(tx)
  tx2 = af.from_config(json.loads(json.dumps(cfg)))
  assert af.get_config(tx2) == cfg
  params = bv_params()
  grads = grads_seq(params, steps=3)
  for x, y in zip(run(tx, params, grads), run(tx2, params, grads)):
    assert_trees_close(x, y, 0, 0, cfg["name"])
