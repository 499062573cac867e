"""Property-based tests (hypothesis) over random shapes, dtypes, hyperparameters of every preset
and random gradients. The example count is small by default (profile "ci"); set
HYPOTHESIS_PROFILE=thorough for a long run."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import adafactor_jax as af

settings.register_profile("ci", max_examples=8, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
lr = st.floats(1e-4, 1.0)
unit = st.floats(0.0, 0.99)

PRESETS = {
    "adafactor": st.fixed_dictionaries({}, optional={
        "learning_rate": lr, "decay_rate": st.floats(0.1, 1.0),
        "clipping_threshold": st.floats(0.1, 10.0), "momentum": unit,
        "eps": st.floats(0.0, 1e-3), "min_dim_size_to_factor": st.integers(0, 300),
        "factor_rule": st.sampled_from(["largest", "last"]),
        "multiply_by_parameter_scale": st.booleans(), "weight_decay_rate": st.floats(0, 0.1),
        "factored": st.booleans()}).map(lambda kw: af.adafactor(**kw)),
    "adadelta": st.fixed_dictionaries({}, optional={
        "learning_rate": lr, "rho": st.floats(0.0, 1.0), "eps": st.floats(1e-8, 1e-3),
        "weight_decay": st.floats(0, 0.1)}).map(lambda kw: af.adadelta(**kw)),
    "keras_adafactor": st.fixed_dictionaries({}, optional={
        "learning_rate": lr, "beta_2_decay": st.floats(-1.0, -0.1),
        "epsilon_2": st.floats(1e-5, 1e-2), "clip_threshold": st.floats(0.1, 10.0),
        "weight_decay": st.floats(0, 0.1)}).map(lambda kw: af.keras_adafactor(**kw)),
    "keras_adadelta": st.fixed_dictionaries({}, optional={
        "learning_rate": lr, "rho": st.floats(0.0, 0.99), "epsilon": st.floats(1e-8, 1e-3)}
    ).map(lambda kw: af.keras_adadelta(**kw)),
    "torch_adafactor": st.fixed_dictionaries({}, optional={
        "lr": lr, "beta2_decay": st.floats(-1.0, -0.1), "d": st.floats(1.0, 5.0),
        "weight_decay": st.floats(0, 0.1), "maximize": st.booleans()}
    ).map(lambda kw: af.torch_adafactor(**kw)),
    "hf_adafactor": st.fixed_dictionaries({}, optional={
        "clip_threshold": st.floats(0.1, 10.0), "beta1": unit, "weight_decay": st.floats(0, 0.1),
        "scale_parameter": st.booleans(), "warmup_init": st.booleans()}
    ).map(lambda kw: af.hf_adafactor(**kw)),
    "big_vision_adafactor": st.fixed_dictionaries(
        {"learning_rate": lr}, optional={"beta2_cap": st.floats(0.5, 0.999), "momentum": unit,
                                         "min_dim_size_to_factor": st.integers(0, 64)}
    ).map(lambda kw: af.big_vision_adafactor(**kw)),
}

# shapes of rank 0-4 with sizes 0-300 per dim, at most 4096 elements in all
shapes = st.lists(st.integers(0, 300), min_size=0, max_size=4).filter(
    lambda s: int(np.prod(s)) <= 4096).map(tuple)
trees = st.dictionaries(st.sampled_from(["a", "b", "c"]), shapes, min_size=1, max_size=3)


def make(tree_shapes, dtype, seed, scale):
  rng = np.random.default_rng(seed)
  params = {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in tree_shapes.items()}
  grads = [{k: jnp.asarray(scale * rng.normal(size=s), dtype) for k, s in tree_shapes.items()}
           for _ in range(2)]
  return params, grads


def spec(tree):
  return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("name", sorted(PRESETS))
@given(data=st.data(), tree_shapes=trees,
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.0, 1e-6, 1.0, 1e3]))
def test_properties_of_every_preset(name, data, tree_shapes, dtype, seed, scale):
  tx = data.draw(PRESETS[name])
  params, grads = make(tree_shapes, dtype, seed, scale)
  state = tx.init(params)
  first_state = state
  for g in grads:
    updates, new_state = tx.update(g, state, params)
    # shapes and dtypes preserved, state structure stable
    assert spec(updates) == spec(g)
    assert spec(new_state) == spec(first_state)
    # finite in, finite out
    for x in jax.tree.leaves((updates, new_state)):
      if jnp.issubdtype(x.dtype, jnp.inexact):
        assert bool(jnp.all(jnp.isfinite(x))), (name, tree_shapes, dtype, scale)
    # deterministic: the same inputs give bitwise the same outputs
    again = tx.update(g, state, params)
    for x, y in zip(jax.tree.leaves((updates, new_state)), jax.tree.leaves(again)):
      assert np.array_equal(np.asarray(x), np.asarray(y))
    state = new_state


def digest() -> str:
  """A hash of the updates of every preset (default hyperparameters) on fixed inputs."""
  h = hashlib.sha256()
  shapes = {"w": (130, 129), "t": (3, 17, 5), "b": (7,), "s": ()}
  factories = {"adafactor": lambda: af.adafactor(1e-2, momentum=0.9),
               "adadelta": lambda: af.adadelta(1.0), "keras_adafactor": af.keras_adafactor,
               "keras_adadelta": af.keras_adadelta, "torch_adafactor": af.torch_adafactor,
               "hf_adafactor": af.hf_adafactor,
               "big_vision_adafactor": lambda: af.big_vision_adafactor(1e-3)}
  for name, factory in sorted(factories.items()):
    for dtype in DTYPES:
      tx = factory()
      params, grads = make(shapes, dtype, 7, 1.0)
      state = tx.init(params)
      for g in grads:
        updates, state = jax.jit(tx.update)(g, state, params)
        for x in jax.tree.leaves((updates, state)):
          h.update(np.asarray(x).tobytes())
  return h.hexdigest()


def test_updates_bitwise_identical_across_processes():
  here = os.path.dirname(os.path.abspath(__file__))
  code = (f"import sys; sys.path.insert(0, {here!r}); import test_properties as t;"
          "print(t.digest())")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == digest()
