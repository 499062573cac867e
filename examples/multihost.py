"""Sharded training across several processes (hosts) with adafactor_jax, on one machine.

Each process simulates 4 CPU devices; the processes join one JAX cluster over 127.0.0.1 with
`jax.distributed.initialize` and gloo CPU collectives, and train a small MLP on a global
(2, 4) mesh (data x model) with the optimizer state sharded by `state_shardings`.

    python examples/multihost.py                 # launches 2 local processes, then compares
                                                 # their result with a single-process run
    python examples/multihost.py --steps 5 --hidden 64

The same program runs on real hosts: drop `--launch`, start one process per host with
`--process-id`, `--num-processes` and a reachable `--coordinator`.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def train(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import adafactor_jax

  mesh = jax.make_mesh((2, 4), ("data", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rng = np.random.default_rng(0)
  d_in, h, d_out, batch = 32, args.hidden, 16, 64
  full = {"w1": rng.normal(size=(d_in, h)) / np.sqrt(d_in), "b1": np.zeros(h),
          "w2": rng.normal(size=(h, d_out)) / np.sqrt(h), "b2": np.zeros(d_out)}
  full = {k: v.astype(np.float32) for k, v in full.items()}
  specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}
  shardings = {k: NamedSharding(mesh, specs[k]) for k in full}
  params = {k: jax.make_array_from_callback(v.shape, shardings[k], lambda idx, v=v: v[idx])
            for k, v in full.items()}
  data_sharding = NamedSharding(mesh, P("data", None))
  x_all = rng.normal(size=(args.steps, batch, d_in)).astype(np.float32)
  w_true = rng.normal(size=(d_in, d_out)).astype(np.float32)

  tx = adafactor_jax.adafactor(learning_rate=1e-2, min_dim_size_to_factor=16)
  state_sharding = adafactor_jax.state_shardings(tx, params)
  opt_state = jax.jit(tx.init, out_shardings=state_sharding)(params)

  def loss_fn(p, x, y):
    hid = jax.nn.relu(x @ p["w1"] + p["b1"])
    return jnp.mean((hid @ p["w2"] + p["b2"] - y) ** 2)

  @jax.jit
  def step(p, s, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  step = jax.jit(step, in_shardings=(shardings, state_sharding, data_sharding, data_sharding),
                 out_shardings=(shardings, state_sharding, None))
  losses = []
  for i in range(args.steps):
    put = lambda a: jax.make_array_from_callback(a.shape, data_sharding, lambda idx: a[idx])
    params, opt_state, loss = step(params, opt_state, put(x_all[i]), put(x_all[i] @ w_true))
    losses.append(float(loss))
  from jax.experimental import multihost_utils
  host = multihost_utils.process_allgather(params, tiled=True)
  state_bytes = sum(s.data.nbytes for x in jax.tree.leaves(opt_state)
                    for s in x.addressable_shards)
  return {"params": {k: np.asarray(v) for k, v in host.items()}, "losses": losses,
          "local_state_bytes": state_bytes}


def worker(args) -> None:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import numpy as np
  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id,
                               local_device_ids=list(range(args.local_devices)))
  out = train(args)
  if jax.process_index() == 0 and args.out:
    np.savez(args.out, losses=np.asarray(out["losses"]), **out["params"])
  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local "
        f"of {jax.device_count()} devices, final loss {out['losses'][-1]:.5f}, local optimizer "
        f"state {out['local_state_bytes']:,} bytes", flush=True)
  if args.num_processes > 1:
    jax.distributed.shutdown()


def launch(args) -> int:
  """Starts the processes, waits (bounded), kills them on timeout, compares with one process."""
  import numpy as np
  tmp = tempfile.mkdtemp(prefix="multihost_")
  common = [sys.executable, os.path.abspath(__file__), "--steps", str(args.steps),
            "--hidden", str(args.hidden)]
  coordinator = f"127.0.0.1:{free_port()}"
  procs = [subprocess.Popen(common + ["--worker", "--num-processes", str(args.launch),
                                      "--process-id", str(i), "--local-devices",
                                      str(8 // args.launch), "--coordinator", coordinator,
                                      "--out", os.path.join(tmp, "multi.npz")])
           for i in range(args.launch)]
  deadline = time.time() + args.timeout
  try:
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.time()))
  except subprocess.TimeoutExpired:
    print(f"timed out after {args.timeout}s: killing the processes", flush=True)
    return 124
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  if any(p.returncode for p in procs):
    print(f"a process failed: return codes {[p.returncode for p in procs]}")
    return 1
  single = subprocess.run(common + ["--worker", "--num-processes", "1", "--local-devices", "8",
                                    "--out", os.path.join(tmp, "single.npz")],
                          timeout=args.timeout)
  if single.returncode:
    return 1
  a, b = np.load(os.path.join(tmp, "multi.npz")), np.load(os.path.join(tmp, "single.npz"))
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in b.files)
  same = all(np.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in b.files)
  print(f"{args.launch} processes vs 1 process: max |difference| {worst:.3g} "
        f"({'equal' if same else 'DIFFERENT'}); loss {b['losses'][0]:.4f} -> {b['losses'][-1]:.4f}")
  return 0 if same else 1


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--launch", type=int, default=2, help="processes to start locally")
  ap.add_argument("--worker", action="store_true", help="run as one process of the cluster")
  ap.add_argument("--num-processes", type=int, default=1)
  ap.add_argument("--process-id", type=int, default=0)
  ap.add_argument("--local-devices", type=int, default=4)
  ap.add_argument("--coordinator", default="127.0.0.1:12355")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--hidden", type=int, default=128)
  ap.add_argument("--timeout", type=float, default=240.0)
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  if args.worker:
    worker(args)
    return 0
  return launch(args)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
