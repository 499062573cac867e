"""Data- and model-parallel training of a small transformer with sharded Adafactor state.

    python examples/sharded_training.py            # 8 simulated CPU devices, a (2, 4) mesh
    python examples/sharded_training.py --devices 4 --steps 20

The model is the character-level transformer of train_lm.py. Its matrices are split over the
"model" axis, the batch over the "data" axis, and the optimizer state follows
`adafactor_jax.state_shardings`: the printout compares the optimizer-state bytes each device
holds with the replicated layout (every device holding all of it).
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":
  _n = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), None)
  if _n is None and "--devices" in sys.argv:
    _n = sys.argv[sys.argv.index("--devices") + 1]
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_n or 8}")

import importlib.util  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import adafactor_jax  # noqa: E402


def _train_lm():
  spec = importlib.util.spec_from_file_location(
      "train_lm", os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_lm.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def param_spec(path: str, ndim: int) -> P:
  """Megatron-style: split the first matmul of a block by columns, the second by rows."""
  if ndim < 2:
    return P()
  if path.endswith(("qkv", "mlp_in", "embed", "pos")):
    return P(None, "model")
  if path.endswith(("out", "mlp_out", "head")):
    return P("model", None)
  return P()


def per_device_bytes(tree) -> int:
  """Bytes held by device 0 (every device holds the same amount here)."""
  dev = jax.devices()[0]
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
             if s.device == dev)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--devices", type=int, default=8)
  ap.add_argument("--steps", type=int, default=60)
  ap.add_argument("--d", type=int, default=256)
  ap.add_argument("--layers", type=int, default=2)
  args = ap.parse_args(argv)
  lm = _train_lm()
  n = len(jax.devices())
  mesh = jax.make_mesh((2, n // 2), ("data", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  text = lm.corpus()
  chars = sorted(set(text))
  data = np.asarray([chars.index(c) for c in text], np.int32)
  seq, batch, heads = 64, 16, 4
  params = lm.init_params(jax.random.PRNGKey(0), len(chars), args.d, args.layers, seq)
  shardings = jax.tree_util.tree_map_with_path(
      lambda p, x: NamedSharding(mesh, param_spec(jax.tree_util.keystr(p).replace("'", "")
                                                  .strip("[]"), x.ndim)), params)
  params = jax.device_put(params, shardings)
  tx = adafactor_jax.adafactor(learning_rate=1e-2)
  state_sharding = adafactor_jax.state_shardings(tx, params)
  opt_state = jax.jit(tx.init, out_shardings=state_sharding)(params)
  batch_sharding = NamedSharding(mesh, P("data", None))

  def step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(lm.loss_fn)(params, tokens, heads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step, in_shardings=(shardings, state_sharding, batch_sharding),
                 out_shardings=(shardings, state_sharding, None), donate_argnums=(0, 1))
  losses = []
  for tokens in lm.batches(data, batch, seq, args.steps, seed=0):
    params, opt_state, loss = step(params, opt_state, jax.device_put(tokens, batch_sharding))
    losses.append(float(loss))
  total = sum(x.nbytes for x in jax.tree.leaves(opt_state))
  local = per_device_bytes(opt_state)
  print(f"{n} devices, mesh {dict(mesh.shape)}: loss {losses[0]:.3f} -> "
        f"{np.mean(losses[-5:]):.3f} in {args.steps} steps")
  print(f"optimizer state per device: {local:,} bytes sharded vs {total:,} bytes replicated "
        f"({local / total:.2f}x); params per device: {per_device_bytes(params):,} bytes")
  return {"losses": losses, "state_per_device": local, "state_replicated": total}


if __name__ == "__main__":
  main(sys.argv[1:])
