"""Haiku (hk.transform) with adafactor_jax.

    python examples/haiku.py
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path and this file would shadow the
# library of the same name: drop the folder before importing it.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
  sys.path.pop(0)

import haiku as hk  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import adafactor_jax  # noqa: E402


def main(steps: int = 100) -> list[float]:
  net = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([256, 8])(x)))
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 16))
  y = jnp.sin(x[:, :8])
  params = net.init(jax.random.PRNGKey(0), x)
  tx = adafactor_jax.adafactor(learning_rate=1e-2, min_dim_size_to_factor=8)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((net.apply(p, x) - y) ** 2))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(steps):
    params, opt_state, loss = train_step(params, opt_state)
    losses.append(float(loss))
  print(f"haiku + adafactor_jax: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
  return losses


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
