"""Equinox (eqx.filter) with adafactor_jax.

    python examples/equinox.py
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path and this file would shadow the
# library of the same name: drop the folder before importing it.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
  sys.path.pop(0)

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import adafactor_jax  # noqa: E402


def main(steps: int = 100) -> list[float]:
  model = eqx.nn.MLP(16, 8, width_size=256, depth=1, key=jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 16))
  y = jnp.sin(x[:, :8])
  tx = adafactor_jax.adafactor(learning_rate=1e-2, min_dim_size_to_factor=8)
  opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))

  @eqx.filter_jit
  def train_step(model, opt_state):
    loss_fn = lambda m: jnp.mean((jax.vmap(m)(x) - y) ** 2)
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
    updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state, loss

  losses = []
  for _ in range(steps):
    model, opt_state, loss = train_step(model, opt_state)
    losses.append(float(loss))
  print(f"equinox + adafactor_jax: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
  return losses


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
