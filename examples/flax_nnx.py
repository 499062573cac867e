"""flax.nnx.Optimizer with adafactor_jax, on kernels sharded with nnx.with_partitioning.

    python examples/flax_nnx.py

Runs on 4 simulated CPU devices (a (2, 2) mesh). optax.adafactor fails here at init: its
reduced statistics and (1,) placeholders inherit the kernel's 2-D sharding metadata. The script
shows that failure, then trains with adafactor_jax.adafactor, whose row/column statistics carry
the kernel's mesh axes on the dims they keep.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import adafactor_jax  # noqa: E402


class MLP(nnx.Module):
  def __init__(self, d_in: int, hidden: int, d_out: int, rngs: nnx.Rngs):
    init = nnx.initializers.lecun_normal()
    self.l1 = nnx.Linear(d_in, hidden, rngs=rngs,
                         kernel_init=nnx.with_partitioning(init, ("a", "b")))
    self.l2 = nnx.Linear(hidden, d_out, rngs=rngs,
                         kernel_init=nnx.with_partitioning(init, ("b", "a")))

  def __call__(self, x):
    return self.l2(jax.nn.relu(self.l1(x)))


def optax_adafactor_error(hidden: int) -> str | None:
  """The error optax.adafactor raises on this model (None if it works: a fix upstream)."""
  model = MLP(16, hidden, 8, nnx.Rngs(0))
  try:
    nnx.Optimizer(model, optax.adafactor(1e-3, min_dim_size_to_factor=8), wrt=nnx.Param)
  except Exception as e:  # noqa: BLE001 - we report whatever optax raises
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
  return None


def main(steps: int = 50, hidden: int = 256) -> dict:
  mesh = jax.make_mesh((2, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  with jax.set_mesh(mesh):
    err = optax_adafactor_error(hidden)
    print(f"optax.adafactor: {err or 'works (fixed upstream?)'}")
    model = MLP(16, hidden, 8, nnx.Rngs(0))
    tx = adafactor_jax.adafactor(learning_rate=1e-2, min_dim_size_to_factor=8)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 16))
    y = jnp.sin(x[:, :8])

    @nnx.jit
    def train_step(model, optimizer, x, y):
      loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
      optimizer.update(model, grads)
      return loss

    losses = [float(train_step(model, optimizer, x, y)) for _ in range(steps)]
    kernel = model.l1.kernel[...]
    print(f"adafactor_jax: loss {losses[0]:.4f} -> {losses[-1]:.4f}; kernel sharding "
          f"{kernel.sharding.spec}")
  return {"losses": losses, "optax_error": err}


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
