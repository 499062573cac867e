"""Sharded optimizer state on 8 simulated CPU devices (in a subprocess: XLA_FLAGS must be set
before jax is imported), and the single-process parts of state_shardings."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from presets import OPTIONS

import adafactor_jax as af

HERE = pathlib.Path(__file__).resolve().parent


@pytest.mark.hlo
def test_sharded_training_equals_single_device_and_gathers_no_parameter():
  env = dict(os.environ, SHARDED_STEPS="20", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(HERE / "sharded_check.py")], env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  print("\n[sharding] collective bytes per step on a (2, 4) mesh:")
  for key, r in sorted(results["presets"].items()):
    print(f"  {key:<40} {r['collective_bytes']:>8} B   max diff {r['max_rel_err']:.2e}")
  assert not results["failures"], "\n".join(results["failures"])
  assert len(results["presets"]) >= 3


def test_state_types_on_explicit_and_auto_meshes():
  """The state-type contract on meshes (state_types_check.py): for every option of
  presets.OPTIONS, init (eager, jitted) and update (eager, jitted) give every state leaf the same
  `jax.typeof`, sharding included, on (2, 4) meshes of Explicit and of Auto axes."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(HERE / "state_types_check.py")], env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  assert not results["failures"], "\n".join(results["failures"][:20])
  assert len(results["checked"]) == 2 * len(OPTIONS)


@pytest.mark.unit
def test_state_shardings_needs_named_shardings():
  with pytest.raises(ValueError, match="'w'.*NamedSharding"):
    af.state_shardings(af.adafactor(0.1), {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32)})


@pytest.mark.unit
def test_state_shardings_structure_and_specs_one_device():
  mesh = jax.make_mesh((1, 1), ("data", "model"))
  sds = lambda shape, spec: jax.ShapeDtypeStruct(shape, jnp.float32,
                                                 sharding=NamedSharding(mesh, spec))
  params = {"w": sds((256, 512), P("data", "model")), "t": sds((4, 256, 128), P(None, "model")),
            "b": sds((512,), P("model"))}
  tx = optax.chain(af.adafactor(lambda t: 1e-2, momentum=0.9),
                   optax.masked(af.scale_by_momentum(0.5), {"w": True, "t": False, "b": True}))
  sh = af.state_shardings(tx, params)
  state = jax.eval_shape(tx.init, params)
  assert jax.tree.structure(sh) == jax.tree.structure(state)
  fac = sh[0][0]
  assert fac.v_row["w"].spec == P("data") and fac.v_col["w"].spec == P("model")
  # t: (4, 256, 128) factors dims 1 and 2 (largest); the row statistic averages the largest
  # dim (1, sharded) away, the column statistic keeps it with its mesh axis; dim 0 is in both
  assert fac.v_row["t"].spec == P() and fac.v_col["t"].spec == P(None, "model")
  assert fac.v["b"].spec == P("model") and fac.count.spec == P()
  momentum = [x for x in jax.tree.leaves(sh[0]) if x.spec == P("data", "model")]
  assert len(momentum) == 1  # the adafactor momentum buffer of w
  assert sh[1].inner_state.mu["w"].spec == P("data", "model")


@pytest.mark.unit
def test_state_shardings_of_a_single_bare_param():
  """Params that are one array (key path ''): its full-size buffers are sharded like it, not
  replicated; the counters stay replicated."""
  mesh = jax.make_mesh((1, 1), ("data", "model"))
  w = jax.ShapeDtypeStruct((256, 512), jnp.float32,
                           sharding=NamedSharding(mesh, P("data", "model")))
  sh = af.state_shardings(af.adafactor(1e-2, momentum=0.9), w)
  assert sh[0].v_row.spec == P("data") and sh[0].v_col.spec == P("model")
  assert sh[0].count.spec == P()
  assert sh[4].mu.spec == P("data", "model")
  adadelta = af.state_shardings(af.adadelta(1.0), w)[1]  # after the weight decay's counter
  assert adadelta.e_g.spec == P("data", "model") and adadelta.e_x.spec == P("data", "model")
  ema = af.state_shardings(af.keras_adafactor(1e-2, use_ema=True), w)
  buffers = [x.spec for x in jax.tree.leaves(ema) if x.spec != P()]
  assert P("data", "model") in buffers, buffers
