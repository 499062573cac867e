"""Optimizer-state memory of a real model's parameter tree, computed without allocating.

    python examples/state_memory.py

Prints a markdown table of the state bytes of optax.adam, optax.adafactor and
adafactor_jax.adafactor for BERT-base (110M parameters), from `jax.eval_shape` of `init`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import adafactor_jax


def bert_base_shapes(dtype=jnp.float32) -> dict:
  """The parameter shapes of BERT-base (uncased): 30522-token vocabulary, 12 layers of 768."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  d, ff = 768, 3072
  layer = lambda: {
      "attention": {n: {"kernel": s(d, d), "bias": s(d)} for n in ("query", "key", "value",
                                                                   "output")},
      "attention_ln": {"scale": s(d), "bias": s(d)},
      "intermediate": {"kernel": s(d, ff), "bias": s(ff)},
      "output": {"kernel": s(ff, d), "bias": s(d)},
      "output_ln": {"scale": s(d), "bias": s(d)},
  }
  return {
      "embeddings": {"word": s(30522, d), "position": s(512, d), "token_type": s(2, d),
                     "ln": {"scale": s(d), "bias": s(d)}},
      "encoder": {f"layer_{i}": layer() for i in range(12)},
      "pooler": {"kernel": s(d, d), "bias": s(d)},
  }


def state_bytes(tx, shapes) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(tx.init, shapes)))


def table(shapes=None) -> list[tuple[str, int]]:
  shapes = bert_base_shapes() if shapes is None else shapes
  rows = [
      ("optax.adam", state_bytes(optax.adam(1e-3), shapes)),
      ("optax.adafactor", state_bytes(optax.adafactor(1e-3), shapes)),
      ("adafactor_jax.adafactor", state_bytes(adafactor_jax.adafactor(1e-3), shapes)),
      ("adafactor_jax.adafactor(momentum=0.9, dtype_momentum=bf16)",
       state_bytes(adafactor_jax.adafactor(1e-3, momentum=0.9, dtype_momentum=jnp.bfloat16),
                   shapes)),
  ]
  return rows


def markdown(rows, n_params: int) -> str:
  lines = ["| optimizer | state bytes | state / param bytes |", "|---|---:|---:|"]
  for name, nbytes in rows:
    lines.append(f"| {name} | {nbytes:,} | {nbytes / (4 * n_params):.4f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  shapes = bert_base_shapes()
  n = sum(x.size for x in jax.tree.leaves(shapes))
  print(f"BERT-base: {n:,} parameters, {4 * n:,} bytes in float32\n")
  print(markdown(table(shapes), n))
