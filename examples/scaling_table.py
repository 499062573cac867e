"""Per-device optimizer-state bytes of T5 v1.1 XXL (11B parameters) on a 256-device mesh.

    python examples/scaling_table.py

Nothing is allocated: the state is built with `jax.eval_shape` and each leaf's per-device
bytes come from its sharding's shard shape, on 256 simulated CPU devices (a (16, 16) mesh,
every matrix sharded over both axes, 2-D "FSDP x tensor" parallelism). Compares
this library (`state_shardings`), optax.adafactor (no partition rules for its FactoredState:
statistics and placeholders replicated, as t5x's OptaxStatePartitionRules leave them), t5x's
Adafactor (row/column statistics replicated by `derive_logical_axes`) and optax.adam.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=256")

import math  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import adafactor_jax  # noqa: E402


def t5_xxl_shapes(mesh) -> dict:
  d, ff, vocab, layers = 4096, 10240, 32128, 24
  sd = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(
      mesh, P("data", "model") if len(shape) == 2 else P("model")))
  attn = lambda: {n: sd(d, d) for n in ("q", "k", "v", "o")}
  mlp = lambda: {"wi_0": sd(d, ff), "wi_1": sd(d, ff), "wo": sd(ff, d)}
  enc = lambda: {"attention": attn(), "mlp": mlp(), "ln1": sd(d), "ln2": sd(d)}
  dec = lambda: {"self_attention": attn(), "cross_attention": attn(), "mlp": mlp(),
                 "ln1": sd(d), "ln2": sd(d), "ln3": sd(d)}
  return {"token_embedder": sd(vocab, d),
          "encoder": {f"layer_{i}": enc() for i in range(layers)}, "encoder_ln": sd(d),
          "decoder": {f"layer_{i}": dec() for i in range(layers)}, "decoder_ln": sd(d),
          "logits_dense": sd(d, vocab)}


def per_device(tree, shardings) -> int:
  return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
             for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)))


def mirror(tree, params, rep):
  """A subtree mirroring the params: a leaf of its param's shape is sharded like it."""
  return jax.tree.map(lambda x, p: p.sharding if x.shape == p.shape else rep, tree, params)


def rows(mesh) -> list[tuple[str, int]]:
  params = t5_xxl_shapes(mesh)
  rep = NamedSharding(mesh, P())
  n_params = sum(x.size for x in jax.tree.leaves(params))
  out = [("parameters (f32)", per_device(params, [p.sharding for p in jax.tree.leaves(params)]))]
  tx = adafactor_jax.adafactor(1e-2)
  ours = jax.eval_shape(tx.init, params)
  out.append(("adafactor_jax.adafactor", per_device(ours, adafactor_jax.state_shardings(tx,
                                                                                        params))))
  t5x = jax.tree.map(lambda x: x, adafactor_jax.state_shardings(tx, params))
  t5x = [t5x[0]._replace(v_row=jax.tree.map(lambda s: rep, t5x[0].v_row),
                         v_col=jax.tree.map(lambda s: rep, t5x[0].v_col))] + list(t5x[1:])
  out.append(("t5x Adafactor (row/col statistics replicated)", per_device(ours, tuple(t5x))))
  opt = jax.eval_shape(optax.adafactor(1e-2).init, params)
  fac = opt[0]  # FactoredState(count, v_row, v_col, v): only v can mirror the params
  opt_sh = (fac._replace(count=rep, v_row=jax.tree.map(lambda x: rep, fac.v_row),
                         v_col=jax.tree.map(lambda x: rep, fac.v_col),
                         v=mirror(fac.v, params, rep)),) + tuple(
                             jax.tree.map(lambda x: rep, s) for s in opt[1:])
  out.append(("optax.adafactor (statistics and placeholders replicated)", per_device(opt, opt_sh)))
  adam = jax.eval_shape(optax.adam(1e-3).init, params)
  adam_sh = (adam[0]._replace(count=rep, mu=mirror(adam[0].mu, params, rep),
                              nu=mirror(adam[0].nu, params, rep)),) + tuple(
                                  jax.tree.map(lambda x: rep, s) for s in adam[1:])
  out.append(("optax.adam (moments sharded like the params)", per_device(adam, adam_sh)))
  return n_params, out


def main() -> list[tuple[str, int]]:
  mesh = jax.make_mesh((16, 16), ("data", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  n_params, table = rows(mesh)
  print(f"T5 v1.1 XXL: {n_params:,} parameters; per-device bytes on a (16, 16) mesh of "
        f"{len(jax.devices())} devices\n")
  print("| | bytes per device |\n|---|---:|")
  for name, nbytes in table:
    print(f"| {name} | {nbytes:,} |")
  return table


if __name__ == "__main__":
  sys.exit(main() and 0)
