"""`adafactor_jax.keras.Adafactor` and `Adadelta` in `model.fit`, live against Keras's own.

Parity on the JAX backend in this process, on PyTorch and TensorFlow in subprocesses
(tests/keras_fit_cases.py); memory against ``keras.optimizers.Adafactor``; saving and resuming in a
fresh process (tests/keras_resume_check.py); loading Keras's saved variables; the distribution
API (tests/keras_distribution_check.py); mixed precision; argument checks; the Keras bug of
``fit`` twice with ``use_ema``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import keras_fit_cases as cases  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import adafactor_jax  # noqa: E402
import adafactor_jax.keras as afk  # noqa: E402
from adafactor_jax._src import validation  # noqa: E402

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent
# A weight may differ from Keras's by this much of its variable's largest |weight| after training
# (the JAX backend's fused step sums in another order; measured up to 4.2e-7).
TOL = 1e-6


def run_script(args, env=None, timeout=900) -> dict:
  env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]),
             TF_CPP_MIN_LOG_LEVEL="3")
  done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                        timeout=timeout, cwd=ROOT)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
  line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
  return json.loads(line[-1][len("RESULT "):]) if line else {}


def check_errors(backend: str, errors: dict) -> None:
  print(f"\n{backend}: largest weight difference / largest |weight|, per case")
  for opt, by_case in errors.items():
    print(f"  {opt}: max {max(by_case.values()):.2e} over {len(by_case)} cases")
    for name, err in by_case.items():
      assert err <= TOL, (backend, opt, name, err)


def test_fit_parity_jax():
  check_errors("jax", cases.all_parity())


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_fit_parity_other_backends(backend):
  result = run_script([str(TESTS / "keras_fit_cases.py")], env={"KERAS_BACKEND": backend})
  assert result["backend"] == backend
  check_errors(backend, result["errors"])


def optimizer_bytes(opt) -> int:
  return sum(int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
             for v in opt.variables)


def test_memory_of_a_4096_square_kernel():
  """Row and column statistics only, against Keras's r, c and full-size velocity."""
  var = keras.Variable(np.zeros((4096, 4096), "float32"), name="kernel")
  ours, theirs = afk.Adafactor(), keras.optimizers.Adafactor()
  ours.build([var])
  theirs.build([var])
  print(f"\none (4096, 4096) float32 kernel: ours {optimizer_bytes(ours):,} bytes, Keras "
        f"{optimizer_bytes(theirs):,}")
  assert optimizer_bytes(theirs) == 67_141_640
  assert optimizer_bytes(ours) == 32_776  # r, c (float32), iterations (int64), lr (float32)
  assert optimizer_bytes(ours) <= 0.01 * optimizer_bytes(theirs)
  assert max(int(np.prod(v.shape)) for v in ours.variables) == 4096


def test_state_shapes_and_dtypes():
  model, _, _ = cases.model_and_data()
  opt = afk.Adafactor()
  opt.build(model.trainable_variables)
  shapes = {v.path: tuple(v.shape) for v in opt.variables}
  # EinsumDense kernel (8, 16): rows (8,), cols (16,); the head's kernel (96, 4): (96,), (4,);
  # the biases (16,) and (4,) in full; iterations and the learning rate
  assert sorted(shapes.values()) == sorted(
      [(), (), (8,), (16,), (16,), (96,), (4,), (4,)]), shapes
  half = keras.Variable(np.zeros((6, 5), "float32"), dtype="bfloat16", name="half")
  for stats_dtype, want in (("float32", "float32"), (None, "bfloat16")):
    opt = afk.Adafactor(stats_dtype=stats_dtype)
    opt.build([half])
    assert {keras.backend.standardize_dtype(v.dtype) for v in opt.variables[2:]} == {want}


def test_registered_and_config_round_trip():
  for cls, kw in ((afk.Adafactor, dict(learning_rate=0.05, clip_threshold=0.5, stats_dtype=None,
                                       gradient_accumulation_steps=4.0)),
                  (afk.Adadelta, dict(rho=0.9, epsilon=1e-6, weight_decay=0.1))):
    name = keras.saving.get_registered_name(cls)
    assert name == f"adafactor_jax>{cls.__name__}"
    opt = cls(**kw)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is cls and again.get_config() == opt.get_config()
    assert keras.optimizers.get(opt) is opt  # what model.compile calls
  assert afk.Adafactor(gradient_accumulation_steps=4.0).gradient_accumulation_steps == 4


def test_every_keras_argument_in_keras_order_and_defaults():
  import inspect
  for ours, theirs in ((afk.Adafactor, keras.optimizers.Adafactor),
                       (afk.Adadelta, keras.optimizers.Adadelta)):
    mine = inspect.signature(ours).parameters
    keras_params = [p for p in inspect.signature(theirs).parameters.values()
                    if p.kind is not p.VAR_KEYWORD]
    positional = [p for p in mine.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [p.name for p in positional] == [p.name for p in keras_params]
    for p in keras_params:
      assert mine[p.name].default == p.default, (ours.__name__, p.name)
    extra = [p for p in mine.values() if p.kind is p.KEYWORD_ONLY]
    assert [p.name for p in extra] == ["stats_dtype"]


@pytest.mark.parametrize("cls", [afk.Adafactor, afk.Adadelta])
def test_bad_arguments_raise_the_rule_message(cls):
  """Each argument with a rule in validation.RULES is checked by it at construction, with the
  message the presets and blocks give; Keras's clipping exclusivity too."""
  import inspect
  for name in inspect.signature(cls).parameters:
    rule = validation.RULES.get(name)
    if rule is None:
      continue
    bad = {"number": [float("nan"), -1e9 if rule.low is not None else 1e9],
           "schedule": [float("nan"), -1.0], "int": [2.5, -1], "bool": ["yes"],
           "dtype": ["int32"]}[rule.kind]
    for value in bad:
      with pytest.raises(ValueError) as expected:
        validation.check(name, value)
      extra = {"use_ema": True} if name.startswith("ema_") else {}
      with pytest.raises(ValueError) as got:
        cls(**{name: value}, **extra)
      assert str(got.value) == str(expected.value), (cls.__name__, name, value)
  with pytest.raises(ValueError, match="Only one of clipnorm, clipvalue and global_clipnorm"):
    cls(clipnorm=1.0, clipvalue=1.0)


def test_load_variables_saved_by_keras_adafactor():
  """Keras's r and c are ours; its velocity is dropped; training continues with its numbers."""
  kw = dict(learning_rate=0.05)
  theirs = cases.train(keras.optimizers.Adafactor(**kw))
  store: dict = {}
  theirs.optimizer.save_own_variables(store)
  model, x, y = cases.model_and_data()
  model.set_weights(theirs.get_weights())
  opt = afk.Adafactor(**kw)
  opt.build(model.trainable_variables)
  opt.load_own_variables(store)
  keras_opt = theirs.optimizer
  for i, var in enumerate(model.trainable_variables):
    if opt._r[i] is not None:  # rank >= 2: Keras's r and c, its velocity dropped
      np.testing.assert_array_equal(opt._r[i].numpy(), keras_opt._r[i].numpy())
      np.testing.assert_array_equal(opt._c[i].numpy(), keras_opt._c[i].numpy())
    else:
      np.testing.assert_array_equal(opt._v[i].numpy(), keras_opt._v[i].numpy())
  assert int(opt.iterations) == int(keras_opt.iterations) > 0
  # Keras: r, c and velocity for every variable; ours: r and c, or the second moment
  assert len(store) == 2 + 3 * len(model.trainable_variables)
  # one more epoch on each: the same weights
  model.compile(optimizer=opt, loss="mse")
  model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
  theirs.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
  assert cases.weight_error(theirs.get_weights(), model.get_weights()) <= TOL
  # and a store of another model is an error, not Keras's warning-and-skip
  other = afk.Adafactor()
  other.build([keras.Variable(np.zeros((3, 3), "float32"), name="w")])
  with pytest.raises(ValueError, match="saved optimizer has"):
    other.load_own_variables(store)


def test_fit_twice_with_ema_on_jax():
  """Keras's own Adafactor fails there ("Attempt to donate the same buffer twice")."""
  x, y = np.ones((16, 8), "float32"), np.ones((16, 4), "float32")

  def fit_twice(opt):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    model.fit(x, y, epochs=1, verbose=0)
    return model

  with pytest.raises(Exception):
    fit_twice(keras.optimizers.Adafactor(use_ema=True))
  fit_twice(afk.Adafactor(use_ema=True))
  fit_twice(afk.Adadelta(use_ema=True))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(policy):
  """Float32 variables with half-precision compute (mixed_float16 wraps the optimizer in a
  LossScaleOptimizer): Keras's numbers."""
  keras.mixed_precision.set_global_policy(policy)
  try:
    kw = dict(learning_rate=0.05)
    theirs = cases.train(keras.optimizers.Adafactor(**kw))
    ours = cases.train(afk.Adafactor(**kw))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  if policy == "mixed_float16":
    assert isinstance(ours.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(ours.optimizer.inner_optimizer, afk.Adafactor)
  assert cases.weight_error(theirs.get_weights(), ours.get_weights()) <= TOL


@pytest.mark.parametrize("name", ["adafactor", "adadelta"])
def test_save_and_resume_in_a_fresh_process(tmp_path, name):
  script = str(TESTS / "keras_resume_check.py")
  run_script([script, "straight", str(tmp_path), name])
  run_script([script, "resume", str(tmp_path), name])
  straight = np.load(tmp_path / "straight.npz")
  for resumed in ("resume.npz", "resume_h5.npz"):
    got = np.load(tmp_path / resumed)
    assert sorted(got.files) == sorted(straight.files)
    for k in straight.files:
      np.testing.assert_array_equal(got[k], straight[k], err_msg=f"{resumed} {k}")


def test_distribution_data_and_model_parallel():
  result = run_script([str(TESTS / "keras_distribution_check.py")])
  for kind in ("data_parallel", "model_parallel"):
    assert result[kind]["error"] <= TOL, result
  for path, lay in result["model_parallel"]["layouts"].items():
    assert lay["row"] == lay["kernel"][:-1] and lay["col"] == lay["kernel"][-1:], (path, lay)
    assert "model" in lay["kernel"]
  print("\nModelParallel layouts:", result["model_parallel"]["layouts"])


def test_importing_the_package_does_not_import_keras():
  code = "import sys, adafactor_jax; assert 'keras' not in sys.modules; print('ok')"
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 0 and "ok" in done.stdout, done.stderr
  assert "keras" not in adafactor_jax.__all__


def test_docstring_examples_run():
  import doctest
  for obj in (afk.Adafactor, afk.Adadelta):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = doctest.DocTestFinder(recurse=False).find(obj, obj.__name__, globs={})
    assert tests and tests[0].examples
    for test in tests:
      runner.run(test)
    assert runner.summarize(verbose=False).failed == 0, obj.__name__


def test_keras_fit_benchmark_runs_on_a_small_model(tmp_path):
  """`benchmarks/keras_fit.py` end to end on a small model (no timing assertions)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("keras_fit", ROOT / "benchmarks" / "keras_fit.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "k.json"
  result = bench.main(["--small", "--rounds", "1", "--steps", "2", "--json", str(out)])
  rows = result["rows"]
  assert set(rows) == set(bench.OPTIMIZERS) and json.loads(out.read_text())["kind"] == "keras_fit"
  ours, theirs = rows["adafactor_jax.keras.Adafactor"], rows["keras.optimizers.Adafactor"]
  assert ours["matrix_state_bytes"] < 0.05 * theirs["matrix_state_bytes"]
  assert all(r["steps"] == 2 for r in rows.values())


@pytest.mark.hlo
def test_step_temporaries_on_jax():
  """The compiled ``stateless_apply`` (what ``fit`` runs): without Keras's base features, no
  temporary of the parameters' size (Keras's: one); with them, no more than Keras's own step
  (its clipping, decay, EMA and accumulation store their results)."""
  import jax

  def temp_bytes(opt):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1024),
                              keras.layers.Dense(512)])
    opt.build(model.trainable_variables)
    params = [v.value for v in model.trainable_variables]
    grads = [np.ones(v.shape, "float32") for v in params]
    step = jax.jit(opt.stateless_apply, donate_argnums=(0, 2))
    compiled = step.lower([v.value for v in opt.variables], grads, params).compile()
    return compiled.memory_analysis().temp_size_in_bytes, sum(p.nbytes for p in params)

  print()
  for kw in ({}, dict(weight_decay=0.01, clipnorm=1.0), dict(use_ema=True),
             dict(gradient_accumulation_steps=2)):
    ours, param_bytes = temp_bytes(afk.Adafactor(**kw))
    theirs, _ = temp_bytes(keras.optimizers.Adafactor(**kw))
    print(f"{kw}: temporaries {ours:,} bytes, Keras's {theirs:,} (params {param_bytes:,})")
    if not kw:
      assert ours < 0.01 * param_bytes and theirs > param_bytes
    assert ours <= theirs + 0.01 * param_bytes
