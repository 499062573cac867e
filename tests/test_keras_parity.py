"""Live parity with Keras 3 (JAX backend): `keras_adafactor` and `keras_adadelta`, step by step.

Keras is driven through ``opt.build(vars)`` and a jitted ``opt.stateless_apply``; the params
after every step must equal Keras's. Also: Keras's own test numbers
(docs/reference-behaviours.md#keras-tests), the state memory against Keras's ``opt.variables``,
construction-time errors, half precision, and the config round trip.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

# A live reference: a missing keras (or another backend) fails the suite instead of skipping.
import keras  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from helpers import assert_trees_close  # noqa: E402
from helpers import grads_seq  # noqa: E402
from helpers import max_rel_diff  # noqa: E402
from helpers import run_steps  # noqa: E402

import adafactor_jax as af  # noqa: E402
from adafactor_jax._src import engine
from adafactor_jax._src import tree as tree_lib  # noqa: E402

assert keras.backend.backend() == "jax", "tests/conftest.py sets KERAS_BACKEND=jax"

STEPS = 30
RTOL, ATOL = 1e-5, 1e-6  # atol is scaled by each leaf's max |value| (helpers.assert_trees_close)
MAX_SEEN: dict[str, float] = {}

# Key-path regexes that select the same leaves in our '/'-joined paths and in Keras's variable
# names (the same paths joined with '_').
EXCLUDE = ["bias", "^nested", "scalar"]


def keras_schedule():
  return keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=5, decay_rate=0.7)


def our_schedule(count):
  # ExponentialDecay(0.5, 5, 0.7): 0.5 * 0.7 ** (step / 5), in float32 as Keras computes it.
  p = jnp.asarray(count, jnp.float32) / jnp.float32(5.0)
  return jnp.float32(0.5) * jnp.power(jnp.float32(0.7), p)


def keras_tree(seed: int = 0) -> dict:
  """Leaves of rank 0 to 4 (Keras factors the last two dims of every rank >= 2 leaf)."""
  rng = np.random.default_rng(seed)
  shapes = {"scalar": (), "bias": (7,), "kernel": (12, 9), "t3": (4, 3, 5),
            "nested": {"t4": (2, 3, 4, 5), "b": (3,)}}
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def run_ours(tx, params, grads):
  out, state = run_steps(tx, params, grads)
  return out, af.finalize_variable_values(out[-1], state)


def run_keras(opt, params, grads, exclude=None):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [tree_lib.path_str(p).replace("/", "_") for p, _ in leaves]
  kvars = [keras.Variable(np.asarray(x), name=n) for (_, x), n in zip(leaves, names)]
  if exclude is not None:
    opt.exclude_from_weight_decay(var_names=exclude)
  opt.build(kvars)
  opt_vals = [v.value for v in opt.variables]
  values = [v.value for v in kvars]
  step = jax.jit(opt.stateless_apply)
  out = []
  for g in grads:
    values, opt_vals = step(opt_vals, jax.tree.leaves(g), values)
    out.append(treedef.unflatten(values))
  for v, x in zip(kvars, values):
    v.assign(x)
  for v, x in zip(opt.variables, opt_vals):
    v.assign(x)
  opt.finalize_variable_values(kvars)
  return out, treedef.unflatten([v.value for v in kvars])


def keras_kwargs(kw):
  """Our kwargs -> Keras's: the schedule object, and exclusions through a method call."""
  kk = dict(kw)
  kk.pop("exclude_from_weight_decay", None)
  if kk.get("learning_rate") is our_schedule:
    kk["learning_rate"] = keras_schedule()
  return kk


def compare(name, ours_fn, keras_cls, kw, *, steps=STEPS, seed=1, grad_scale=1.0):
  params = keras_tree(0)
  grads = grads_seq(params, steps, seed, grad_scale)
  a, a_final = run_ours(ours_fn(**kw), params, grads)
  b, b_final = run_keras(keras_cls(**keras_kwargs(kw)), params, grads,
                         kw.get("exclude_from_weight_decay"))
  for i, (x, y) in enumerate(zip(a, b)):
    assert_trees_close(x, y, RTOL, ATOL, f"{name} step {i + 1}")
  assert_trees_close(a_final, b_final, RTOL, ATOL, f"{name} finalize_variable_values")
  MAX_SEEN[name] = max(max_rel_diff(x, y) for x, y in zip(a, b))
  moved = max_rel_diff(a[-1], params)
  assert moved > 0, f"{name}: the params did not move"


ADAFACTOR_SINGLE = {
    "default": dict(),
    "lr_0.5_capped": dict(learning_rate=0.5),
    "schedule": dict(learning_rate=our_schedule),
    "keras_golden_args": dict(learning_rate=0.5, beta_2_decay=-0.65, epsilon_1=1e-15,
                              epsilon_2=1e-4, clip_threshold=0.9),
    "relative_step_false": dict(learning_rate=0.05, relative_step=False),
    "weight_decay_exclusions": dict(learning_rate=0.5, weight_decay=0.05,
                                    exclude_from_weight_decay=EXCLUDE),
    "clipnorm": dict(learning_rate=0.1, clipnorm=0.5),
    "clipvalue": dict(learning_rate=0.1, clipvalue=0.2),
    "global_clipnorm": dict(learning_rate=0.1, global_clipnorm=1.0),
    "ema": dict(learning_rate=0.1, use_ema=True, ema_momentum=0.9),
    "ema_overwrite": dict(learning_rate=0.1, use_ema=True, ema_momentum=0.8,
                          ema_overwrite_frequency=4),
    "accumulation": dict(learning_rate=0.5, gradient_accumulation_steps=3),
    "loss_scale": dict(learning_rate=0.1, loss_scale_factor=128.0),
    # Keras's accumulation semantics together: t counts updates, the schedule and the EMA see
    # every call, weight decay uses the schedule at the update's call.
    "accumulation_schedule_wd_ema": dict(
        learning_rate=our_schedule, weight_decay=0.1, gradient_accumulation_steps=2,
        use_ema=True, ema_momentum=0.7, ema_overwrite_frequency=3),
}

ADADELTA_SINGLE = {
    "default": dict(),
    "lr_1": dict(learning_rate=1.0),
    "rho_eps": dict(learning_rate=1.0, rho=0.8, epsilon=1e-6),
    "schedule": dict(learning_rate=our_schedule),
    "weight_decay_exclusions": dict(learning_rate=1.0, weight_decay=0.05,
                                    exclude_from_weight_decay=EXCLUDE),
    "clipnorm": dict(learning_rate=1.0, clipnorm=0.5),
    "clipvalue": dict(learning_rate=1.0, clipvalue=0.2),
    "global_clipnorm": dict(learning_rate=1.0, global_clipnorm=1.0),
    "ema_overwrite": dict(learning_rate=1.0, use_ema=True, ema_momentum=0.8,
                          ema_overwrite_frequency=4),
    "ema": dict(learning_rate=1.0, use_ema=True),
    "accumulation": dict(learning_rate=1.0, gradient_accumulation_steps=3),
    "loss_scale": dict(learning_rate=1.0, loss_scale_factor=128.0),
}

BASE_CHOICES = {
    "learning_rate": [0.01, 0.5, our_schedule],
    "weight_decay": [None, 0.02],
    "clip": [None, ("clipnorm", 1.0), ("clipvalue", 0.5), ("global_clipnorm", 2.0)],
    "use_ema": [False, True],
    "ema_overwrite_frequency": [None, 2, 5],
    "loss_scale_factor": [None, 64.0],
    "gradient_accumulation_steps": [None, 2, 3],
}
ADAFACTOR_CHOICES = {"beta_2_decay": [-0.8, -0.5], "epsilon_2": [1e-3, 1e-2],
                     "clip_threshold": [1.0, 0.5], "epsilon_1": [1e-30, 1e-10]}
ADADELTA_CHOICES = {"rho": [0.95, 0.8], "epsilon": [1e-7, 1e-5]}


def random_combo(seed, extra):
  rng = np.random.default_rng(seed)
  pick = lambda v: v[rng.integers(len(v))]
  kw = {k: pick(v) for k, v in {**BASE_CHOICES, **extra}.items()}
  clip = kw.pop("clip")
  if clip is not None:
    kw[clip[0]] = clip[1]
  if kw["weight_decay"] is not None and rng.random() < 0.5:
    kw["exclude_from_weight_decay"] = EXCLUDE
  return {k: v for k, v in kw.items() if v is not None}


ADAFACTOR_CASES = list(ADAFACTOR_SINGLE.items()) + [
    (f"random_{i}", random_combo(100 + i, ADAFACTOR_CHOICES)) for i in range(3)]
ADADELTA_CASES = list(ADADELTA_SINGLE.items()) + [
    (f"random_{i}", random_combo(200 + i, ADADELTA_CHOICES)) for i in range(2)]


@pytest.mark.parametrize("name,kw", ADAFACTOR_CASES, ids=[c[0] for c in ADAFACTOR_CASES])
def test_keras_adafactor_matches_keras(name, kw):
  scale = kw.get("loss_scale_factor", 1.0)
  compare(f"adafactor[{name}]", af.keras_adafactor, keras.optimizers.Adafactor, kw,
          grad_scale=scale)


@pytest.mark.parametrize("name,kw", ADADELTA_CASES, ids=[c[0] for c in ADADELTA_CASES])
def test_keras_adadelta_matches_keras(name, kw):
  scale = kw.get("loss_scale_factor", 1.0)
  compare(f"adadelta[{name}]", af.keras_adadelta, keras.optimizers.Adadelta, kw,
          grad_scale=scale)


def test_report_max_relative_difference():
  # Runs after the grids (pytest keeps file order); prints the worst case for the closing note.
  if MAX_SEEN:
    worst = max(MAX_SEEN, key=MAX_SEEN.get)
    print(f"\nmax relative difference to Keras over {len(MAX_SEEN)} configs: "
          f"{MAX_SEEN[worst]:.3g} ({worst})")
    assert MAX_SEEN[worst] < 1e-5


# ------------------------------------------------------------------ Keras's own test numbers


def one_step(tx, x, g):
  updates, _ = tx.update(g, tx.init(x), x)
  return optax.apply_updates(x, updates)


def test_keras_adafactor_single_step_1d():
  x = one_step(af.keras_adafactor(learning_rate=0.5), jnp.array([1.0, 2.0, 3.0, 4.0]),
               jnp.array([1.0, 6.0, 7.0, 2.0]))
  np.testing.assert_allclose(x, [-0.36930645, 0.63069355, 1.6306936, 2.6306934], rtol=1e-6)


def test_keras_adafactor_single_step_2d():
  x = one_step(af.keras_adafactor(learning_rate=0.5), jnp.array([[1.0, 2.0], [3.0, 4.0]]),
               jnp.array([[1.0, 6.0], [7.0, 2.0]]))
  # -0.0080709 is 2.0 - 2.0081: cancellation leaves ~1e-7 absolute (f32 ulps of 2.0).
  np.testing.assert_allclose(x, [[0.7006545, -0.0080709], [1.2492113, 3.440731]], rtol=1e-5,
                             atol=1e-6)


def golden_protocol(tx):
  x = jnp.ones(10)
  state = tx.init(x)
  grads = [jnp.full((10,), 0.01)] + [jnp.arange(0.1, 1.1, 0.1)] * 4
  out = []
  for g in grads:
    updates, state = tx.update(g, state, x)
    x = optax.apply_updates(x, updates)
    out.append(x)
  return np.stack(out)


def test_keras_adafactor_correctness_with_golden():
  tx = af.keras_adafactor(learning_rate=0.5, beta_2_decay=-0.65, epsilon_1=1e-15,
                          epsilon_2=1e-4, clip_threshold=0.9, relative_step=False)
  golden = np.array([
      [0.55] * 10,
      [0.3031, 0.3026, 0.3025, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024],
      [0.1671, 0.1665, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663],
      [0.0923, 0.0916, 0.0915, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914],
      [0.0554, 0.0548, 0.0546, 0.0546, 0.0546, 0.0546, 0.0546, 0.0545, 0.0545, 0.0545]])
  np.testing.assert_allclose(golden_protocol(tx), golden, rtol=5e-4, atol=5e-4)


def test_keras_adadelta_single_step():
  x0 = jnp.array([1.0, 2.0, 3.0, 4.0])
  x = one_step(af.keras_adadelta(learning_rate=0.5), x0, jnp.array([1.0, 6.0, 7.0, 2.0]))
  np.testing.assert_allclose(x, x0 - 0.00070710, rtol=1e-6)


def test_keras_adadelta_correctness_with_golden():
  tx = af.keras_adadelta(learning_rate=1.0, rho=0.8, epsilon=1e-6)
  golden = np.tile([[0.9978], [0.9947], [0.9915], [0.9882], [0.9849]], (1, 10))
  np.testing.assert_allclose(golden_protocol(tx), golden, rtol=5e-4, atol=5e-4)


@pytest.mark.parametrize("factory", [af.keras_adafactor, af.keras_adadelta])
def test_keras_weight_decay_golden(factory):
  # Keras's test_weight_decay: zero grads, lr=1, wd=0.004; var1 is updated by three optimizers,
  # the excluded variables (by name, and by a tree of bools: Keras's var_list) stay at 2.0.
  params = {"var1": jnp.float32(2.0), "exclude": jnp.float32(2.0), "var3": jnp.float32(2.0)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  for excl in (None, ["exclude"], {"var1": False, "exclude": False, "var3": True}):
    tx = factory(learning_rate=1.0, weight_decay=0.004, exclude_from_weight_decay=excl)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    params = {**params, "var1": new["var1"]}
    if excl is not None:
      excluded = "exclude" if isinstance(excl, list) else "var3"
      assert float(new[excluded]) == 2.0
  np.testing.assert_allclose(params["var1"], 1.9760959, rtol=0, atol=1e-6)


def test_ema_golden_with_any_optimizer():
  # Keras's optimizer_test.test_ema (SGD, lr=1, ema_momentum=0.9, overwrite every 3 steps).
  tx = optax.chain(optax.sgd(1.0), af.ema_params(0.9, overwrite_frequency=3))
  params = jnp.array([[3.0, 4.0], [5.0, 6.0]])
  state = tx.init(params)
  expected = [([[2.0, 3.0], [4.0, 5.0]], [[2.0, 3.0], [4.0, 5.0]]),
              ([[1.0, 2.0], [3.0, 4.0]], [[1.9, 2.9], [3.9, 4.9]]),
              ([[1.71, 2.71], [3.71, 4.71]], [[1.71, 2.71], [3.71, 4.71]])]
  for want_params, want_ema in expected:
    updates, state = tx.update(jnp.ones((2, 2)), state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, want_params, rtol=1e-6)
    np.testing.assert_allclose(af.finalize_variable_values(params, state), want_ema, rtol=1e-6)


@pytest.mark.parametrize("factory", [af.keras_adafactor, af.keras_adadelta])
def test_gradient_accumulation_equals_mean_gradient_steps(factory):
  # Keras's optimizer_test.test_gradient_accumulation_with_weigth_decay: three accumulated
  # micro-batches equal one step on their mean, weight decay included (t counts updates).
  rng = np.random.default_rng(0)
  p1 = p3 = {"w": jnp.array([[0.9], [0.5]]), "m": jnp.asarray(rng.normal(size=(3, 4)),
                                                              jnp.float32)}
  tx1, tx3 = factory(weight_decay=0.05), factory(weight_decay=0.05, gradient_accumulation_steps=3)
  s1, s3 = tx1.init(p1), tx3.init(p3)
  up1, up3 = jax.jit(tx1.update), jax.jit(tx3.update)
  for _ in range(8):
    g3 = [jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape), jnp.float32), p1)
          for _ in range(3)]
    mean = jax.tree.map(lambda *g: sum(g) / 3, *g3)
    u, s1 = up1(mean, s1, p1)
    p1 = optax.apply_updates(p1, u)
    for g in g3:
      u, s3 = up3(g, s3, p3)
      p3 = optax.apply_updates(p3, u)
  assert_trees_close(p3, p1, 1e-5, 1e-6)


def test_scale_loss_and_static_loss_scale():
  # Keras's optimizer_test.test_static_loss_scaling: grads * 1024 with loss_scale_factor=1024.
  tx = optax.chain(af.static_loss_scale(1024.0), optax.sgd(1.0))
  params = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  state = tx.init(params)
  updates, _ = tx.update(params * 1024.0, state, params)
  np.testing.assert_allclose(optax.apply_updates(params, updates), 0.0)
  assert float(af.scale_loss(2.0, state)) == 2048.0
  assert float(af.scale_loss(2.0, optax.sgd(1.0).init(params))) == 2.0
  assert float(af.scale_loss(2.0, 4.0)) == 8.0


def test_injected_loss_scale_factor_is_the_one_used():
  """Under optax.inject_hyperparams the factor can change between steps: scale_loss multiplies
  by the injected value and the update divides by it (before, by the factor init stored)."""
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
  loss = lambda p: jnp.sum(p["w"] ** 3)
  plain = optax.inject_hyperparams(af.keras_adafactor)(learning_rate=0.1)
  expected, _ = plain.update(jax.grad(loss)(params), plain.init(params), params)
  for factory in (af.keras_adafactor, af.static_loss_scale):
    kwargs = {"learning_rate": 0.1} if factory is af.keras_adafactor else {}
    tx = optax.inject_hyperparams(factory)(loss_scale_factor=8.0, **kwargs)
    state = tx.init(params)
    assert float(af.scale_loss(1.0, state)) == 8.0
    state.hyperparams["loss_scale_factor"] = jnp.asarray(2.0)  # changed before this step
    grads = jax.grad(lambda p: af.scale_loss(loss(p), state))(params)
    np.testing.assert_array_equal(grads["w"], 2.0 * jax.grad(loss)(params)["w"])
    updates, state = tx.update(grads, state, params)
    want = expected["w"] if factory is af.keras_adafactor else jax.grad(loss)(params)["w"]
    np.testing.assert_array_equal(updates["w"], want)  # a power of two: exact
    assert float(af.scale_loss(1.0, state)) == 2.0


def test_finalize_variable_values_under_masked_and_multi_transform():
  """optax.masked and optax.multi_transform hold optax.MaskedNode where an EMA averages
  nothing: each EMA swaps in the leaves it averages, the others are the params."""
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            "f": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
           for _ in range(3)]
  make = {"a": lambda: af.keras_adafactor(0.1, use_ema=True, ema_momentum=0.5),
          "b": lambda: af.keras_adadelta(1.0, use_ema=True, ema_momentum=0.5)}

  def run(tx, params, grads):
    state = tx.init(params)
    for g in grads:
      updates, state = tx.update(g, state, params)
      params = optax.apply_updates(params, updates)
    return params, af.finalize_variable_values(params, state)

  p, final = run(optax.multi_transform({k: f() for k, f in make.items()}, {"w": "a", "f": "b"}),
                 params, grads)
  for key, label in (("w", "a"), ("f", "b")):  # each alone on its own leaf
    alone_p, alone_final = run(make[label](), params[key], [g[key] for g in grads])
    np.testing.assert_array_equal(p[key], alone_p)
    np.testing.assert_array_equal(final[key], alone_final)
    assert not np.array_equal(final[key], p[key])
  p, final = run(optax.masked(make["a"](), {"w": True, "f": False}), params, grads)
  np.testing.assert_array_equal(final["f"], p["f"])
  assert not np.array_equal(final["w"], p["w"])


def test_clip_blocks_keras_numbers():
  # Keras's test_clip_norm / test_clip_value.
  g = jnp.array([100.0, 100.0])
  np.testing.assert_allclose(af.clip_by_leaf_norm(1.0).update(g, None)[0], [2**0.5 / 2] * 2,
                             rtol=1e-6)
  np.testing.assert_allclose(af.clip_by_value(1.0).update(g, None)[0], [1.0, 1.0])
  bad = {"a": jnp.array([jnp.inf]), "b": jnp.array([1.0])}
  assert bool(jnp.all(jnp.isnan(
      af.clip_by_global_norm_nan_on_nonfinite(1.0).update(bad, None)[0]["b"])))


def test_global_clipnorm_of_overflowing_gradients():
  """A squared norm that overflows float32 takes Keras's rescaled branch: the gradients divided
  by their largest magnitude give a finite scale (float64 reference), alone and in a chain."""
  rng = np.random.default_rng(3)
  g = {"a": jnp.asarray(rng.normal(size=(40, 30)) * 1e30, jnp.float32),
       "b": jnp.asarray(rng.normal(size=(30,)) * 1e30, jnp.float32)}
  g64 = {k: np.asarray(v, np.float64) for k, v in g.items()}
  norm = np.sqrt(sum(np.sum(x * x) for x in g64.values()))
  with np.errstate(over="ignore"):  # the float32 squares overflow
    assert not np.isfinite(np.sum(np.square(np.asarray(g["a"]))))
  clipped, _ = jax.jit(af.clip_by_global_norm_nan_on_nonfinite(2.0).update)(g, None)
  for k in g:
    np.testing.assert_allclose(clipped[k], g64[k] * (2.0 / norm), rtol=2e-6)
  params = jax.tree.map(jnp.ones_like, g)
  tx = af.keras_adafactor(0.1, global_clipnorm=2.0)
  # (the gradients are arguments: XLA folds a program whose gradients are constants otherwise)
  ours = jax.jit(lambda g, s: tx.update(g, s, params)[0])(g, tx.init(params))
  with engine.disabled():  # clipped gradients computed first, then the chain
    ref = jax.jit(lambda g, s: tx.update(g, s, params)[0])(g, tx.init(params))
  assert_trees_close(ours, ref, RTOL, ATOL, "keras_adafactor(global_clipnorm) overflow")
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(ours))


def test_finalize_without_ema_returns_params():
  params = {"w": jnp.ones(3)}
  tx = af.keras_adafactor()
  assert af.finalize_variable_values(params, tx.init(params)) is params


# ------------------------------------------------------------------ better than Keras


def test_state_bytes_4096_square_under_0p1_percent_of_keras():
  shape = (4096, 4096)
  ours = jax.eval_shape(af.keras_adafactor().init, jax.ShapeDtypeStruct(shape, jnp.float32))
  ours_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(ours))
  opt = keras.optimizers.Adafactor()
  opt.build([keras.Variable(np.zeros(shape, np.float32), name="w")])
  keras_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in opt.variables)
  print(f"\nstate bytes for a {shape} leaf: ours {ours_bytes}, Keras {keras_bytes} "
        f"({100 * ours_bytes / keras_bytes:.4f}%)")
  assert ours_bytes < 1e-3 * keras_bytes
  # Only r and c (plus scalar counters): no full-size leaf in the state.
  assert max(x.size for x in jax.tree.leaves(ours)) == 4096


@pytest.mark.parametrize("kwargs,match", [
    (dict(clipnorm=1.0, clipvalue=1.0), "Only one of clipnorm, clipvalue and global_clipnorm"),
    (dict(clipvalue=1.0, global_clipnorm=1.0), "Only one of clipnorm"),
    (dict(gradient_accumulation_steps=1), r"gradient_accumulation_steps=1 .* integer >= 2"),
    (dict(gradient_accumulation_steps=2.5), "gradient_accumulation_steps must be an integer >= 2"),
    (dict(use_ema=True, ema_momentum=1.5), r"ema_momentum=1.5 .*\[0.0, 1.0\]"),
    (dict(ema_momentum=-0.1), r"ema_momentum=-0.1 .*\[0.0, 1.0\]"),
    (dict(use_ema=True, ema_overwrite_frequency=0), r"ema_overwrite_frequency=0 .* integer >= 1"),
    (dict(use_ema=True, ema_overwrite_frequency=2.5),
     "ema_overwrite_frequency must be an integer >= 1"),
    (dict(learning_rate=-0.1), r"learning_rate=-0.1 .*\[0.0, inf\)"),
    (dict(learning_rate=float("nan")), "learning_rate=nan"),
    (dict(learning_rate="0.1"), "learning_rate must be a scalar number"),
    (dict(weight_decay=-1.0), r"weight_decay=-1.0 .*\[0.0, inf\)"),
    (dict(clipnorm=0.0), r"clipnorm=0.0 .*\(0.0, inf\)"),
    (dict(global_clipnorm=-1.0), r"global_clipnorm=-1.0"),
    (dict(loss_scale_factor=0.0), r"loss_scale_factor=0.0 .*\(0.0, inf\)"),
    (dict(exclude_from_weight_decay=[3]), "exclude_from_weight_decay"),
    (dict(weight_decay=0.1, exclude_from_weight_decay=["("]), "invalid"),
])
@pytest.mark.parametrize("factory", [af.keras_adafactor, af.keras_adadelta])
def test_construction_errors(factory, kwargs, match):
  with pytest.raises(ValueError, match=match):
    factory(**kwargs)


@pytest.mark.parametrize("ours,theirs", [(af.keras_adafactor, keras.optimizers.Adafactor),
                                         (af.keras_adadelta, keras.optimizers.Adadelta)])
def test_every_keras_argument_in_keras_order(ours, theirs):
  """A drop-in: Keras's arguments (from the live class), in its positional order, with its
  defaults (but `name`, which has no effect here and defaults to None)."""
  import inspect
  keras_args = [(n, p.default) for n, p in inspect.signature(theirs.__init__).parameters.items()
                if n not in ("self", "kwargs")]
  our_params = inspect.signature(ours).parameters
  positional = [n for n, p in our_params.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
  assert positional == [n for n, _ in keras_args]
  for n, default in keras_args:
    if n != "name":
      assert our_params[n].default == default, n
  ours(**{n: d for n, d in keras_args})  # Keras's defaults, every one passed
  with pytest.raises(ValueError, match="name must be a string or None, got 3"):
    ours(name=3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta_2_decay=0.5), r"beta_2_decay=0.5 .*\(-inf, 0.0\]"),
    (dict(epsilon_1=-1.0), r"epsilon_1=-1.0 .*\[0.0, inf\)"),
    (dict(epsilon_2=float("inf")), "epsilon_2=inf"),
    (dict(clip_threshold=0.0), r"clip_threshold=0.0 .*\(0.0, inf\)"),
    (dict(relative_step="yes"), "relative_step must be a bool"),
])
def test_construction_errors_adafactor(kwargs, match):
  with pytest.raises(ValueError, match=match):
    af.keras_adafactor(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(rho=1.5), r"rho=1.5 .*\[0.0, 1.0\]"),
    (dict(epsilon=-1e-7), r"epsilon=-1e-07 .*\[0.0, inf\)"),
])
def test_construction_errors_adadelta(kwargs, match):
  with pytest.raises(ValueError, match=match):
    af.keras_adadelta(**kwargs)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("factory", [af.keras_adafactor, af.keras_adadelta])
def test_half_precision_params_finite_and_moving(factory, dtype):
  # Keras computes beta2 and the step in the variable dtype: bf16 statistics freeze and f16
  # gives NaN for small gradients. Our statistics are float32 by default.
  params = {"w": jnp.ones((16, 8), dtype), "b": jnp.ones(8, dtype) * 0.5, "s": jnp.array(1.0, dtype)}
  tx = factory(learning_rate=0.05 if factory is af.keras_adafactor else 1.0, weight_decay=0.01,
               use_ema=True, gradient_accumulation_steps=2)
  state = tx.init(params)
  assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state))
  step = jax.jit(lambda p, s, g: tx.update(g, s, p))
  rng = np.random.default_rng(0)
  first = None
  for i in range(40):
    g = jax.tree.map(lambda p: jnp.asarray(1e-4 * rng.normal(size=p.shape), dtype), params)
    updates, state = step(params, state, g)
    assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    params = optax.apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((params, state))
               if jnp.issubdtype(x.dtype, jnp.inexact))
    if i == 1:
      first = params
  assert max_rel_diff(params, first) > 0, "the params stopped moving"
  assert all(x.dtype == dtype for x in jax.tree.leaves(params))


@pytest.mark.parametrize("factory,kw", [
    (af.keras_adafactor, dict(learning_rate=0.3, beta_2_decay=-0.7, weight_decay=0.01,
                              clipnorm=2.0, use_ema=True, ema_overwrite_frequency=3,
                              loss_scale_factor=4.0, gradient_accumulation_steps=2,
                              exclude_from_weight_decay=["bias"], stats_dtype=jnp.float32)),
    (af.keras_adadelta, dict(learning_rate=1.0, rho=0.9, global_clipnorm=1.0,
                             weight_decay=0.02,
                             exclude_from_weight_decay={"w": False, "bias": True})),
])
def test_config_round_trip(factory, kw):
  tx = factory(**kw)
  cfg = json.loads(json.dumps(af.get_config(tx)))
  assert cfg["name"] == factory.__name__
  tx2 = af.from_config(cfg)
  assert af.get_config(tx2) == af.get_config(tx)
  params = {"w": jnp.arange(12.0).reshape(3, 4) / 10, "bias": jnp.ones(4)}
  grads = grads_seq(params, 6)
  assert_trees_close(run_ours(tx2, params, grads)[0], run_ours(tx, params, grads)[0], 0, 0)


def test_schedule_config_error_is_clear():
  with pytest.raises(ValueError, match="learning_rate=.*callable"):
    af.get_config(af.keras_adafactor(learning_rate=our_schedule))


@pytest.mark.parametrize("factory", [af.keras_adafactor, af.keras_adadelta])
def test_all_features_state_is_stable_and_shape_only_init(factory):
  # The contract suite cannot wrap an accumulating preset in optax.MultiSteps; check its state
  # contract here: init on ShapeDtypeStructs, one structure/dtype across steps, one compilation.
  tx = factory(learning_rate=0.1, weight_decay=0.01, clipvalue=1.0, use_ema=True,
               ema_overwrite_frequency=2, loss_scale_factor=4.0, gradient_accumulation_steps=2,
               exclude_from_weight_decay=["bias"])
  params = keras_tree(0)
  spec = lambda t: (jax.tree.structure(t), [(x.shape, x.dtype) for x in jax.tree.leaves(t)])
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  state = tx.init(params)
  assert spec(tx.init(shapes)) == spec(state) == spec(jax.eval_shape(tx.init, shapes))
  np.testing.assert_array_equal(af.finalize_variable_values(params, state)["kernel"],
                                params["kernel"])
  update = jax.jit(tx.update)
  for g in grads_seq(params, 4):
    updates, new_state = update(g, state, params, unknown_extra_arg=1)
    assert spec(new_state) == spec(state)
    params, state = optax.apply_updates(params, updates), new_state
  assert update._cache_size() == 1


@pytest.mark.parametrize("factory,injected", [
    (af.keras_adafactor, dict(learning_rate=0.3, beta_2_decay=-0.8, epsilon_2=1e-3)),
    (af.keras_adadelta, dict(learning_rate=0.5, rho=0.95)),
])
def test_inject_hyperparams(factory, injected):
  plain = factory(**injected, weight_decay=0.01, use_ema=True)
  inj = optax.inject_hyperparams(factory)(**injected, weight_decay=0.01, use_ema=True)
  params = keras_tree(0)
  s1, s2 = plain.init(params), inj.init(params)
  for g in grads_seq(params, 3):
    u1, s1 = jax.jit(plain.update)(g, s1, params)
    u2, s2 = jax.jit(inj.update)(g, s2, params)
    assert_trees_close(u2, u1, 1e-6, 1e-7)


def test_keras_quirks_reproduced():
  params = keras_tree(0)
  grads = grads_seq(params, 5)
  run = lambda **kw: run_ours(af.keras_adafactor(**kw), params, grads)[0]
  # relative_step has no effect.
  assert_trees_close(run(learning_rate=0.3, relative_step=False),
                     run(learning_rate=0.3, relative_step=True), 0, 0)
  # The learning rate is capped at 1/sqrt(t): any lr >= 1 gives the same trajectory.
  assert_trees_close(run(learning_rate=1.0), run(learning_rate=50.0), 0, 0)
  # Weight decay uses the base learning rate, before the step: with zero gradients the update is
  # exactly var*wd*lr (Adafactor's own step is zero), not var*wd*alpha_t.
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = af.keras_adafactor(learning_rate=0.5, weight_decay=0.1)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert_trees_close(updates, jax.tree.map(lambda p: -(p * 0.1 * 0.5), params), 1e-6, 1e-7)
