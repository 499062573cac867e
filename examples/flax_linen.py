"""flax.linen + flax.training.train_state.TrainState with adafactor_jax.

    python examples/flax_linen.py
"""

from __future__ import annotations

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.training import train_state

import adafactor_jax


class MLP(nn.Module):
  hidden: int = 256

  @nn.compact
  def __call__(self, x):
    return nn.Dense(8)(nn.relu(nn.Dense(self.hidden)(x)))


def main(steps: int = 100) -> list[float]:
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 16))
  y = jnp.sin(x[:, :8])
  model = MLP()
  state = train_state.TrainState.create(
      apply_fn=model.apply, params=model.init(jax.random.PRNGKey(0), x)["params"],
      tx=adafactor_jax.adafactor(learning_rate=1e-2, min_dim_size_to_factor=8,
                                 weight_decay_rate=1e-4,
                                 weight_decay_mask=adafactor_jax.mask_by_path(include="kernel")))

  @jax.jit
  def train_step(state, x, y):
    loss_fn = lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  losses = []
  for _ in range(steps):
    state, loss = train_step(state, x, y)
    losses.append(float(loss))
  print(f"flax.linen TrainState + adafactor_jax: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
  return losses


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
