"""Shared test helpers: mixed parameter trees, random gradients, trajectories."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def mixed_tree(seed: int = 0, dtype=jnp.float32, big: bool = True) -> dict:
  """Scalars, 1-D, 2-D below and above the factoring threshold (square and not), 3-D, 4-D."""
  rng = np.random.default_rng(seed)
  shapes = {
      "scalar": (),
      "bias": (7,),
      "small": (5, 3),
      "square_small": (6, 6),
      "kernel": (130, 140) if big else (20, 24),
      "square": (128, 128) if big else (16, 16),
      "t3": (4, 3, 2),
      "t4": (2, 130, 3, 129) if big else (2, 17, 3, 16),
      "nested": {"a": (3, 129) if big else (3, 17), "b": [(2,), (129, 2) if big else (17, 2)]},
  }
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), dtype), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def contract_tree(dtype=jnp.float32, seed: int = 0, one: bool = True) -> dict:
  """The contract suite's small tree: a factored-size matrix at threshold 8, a rank-3 leaf, a
  vector, a scalar and (with `one`) a ``(1, 9)`` leaf."""
  rng = np.random.default_rng(seed)
  shapes = {"w": (16, 12), "t3": (3, 16, 10), "b": (12,), "s": ()} | (
      {"one": (1, 9)} if one else {})
  return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}


def grads_like(params, seed: int = 1, scale: float = 1.0):
  """Normal gradients shaped like `params` (one tree)."""
  return grads_seq(params, 1, seed, scale)[0]


def grads_seq(params, steps: int, seed: int = 1, scale: float = 1.0) -> list:
  """`steps` trees of normal gradients shaped like `params`, from one generator."""
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), p.dtype), params)
          for _ in range(steps)]


def random_grads(params, rng: np.random.Generator, scale: float = 1.0):
  return jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), p.dtype), params)


def run_steps(tx: optax.GradientTransformation, params, grads_list):
  """Params after each jitted step on an explicit list of gradient trees, and the final state."""
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  out = []
  for grads in grads_list:
    params, state = step(params, state, jax.tree.map(jnp.asarray, grads))
    out.append(params)
  return out, state


def trajectory(tx: optax.GradientTransformation, params, steps: int, seed: int = 1):
  """Params after each of `steps` jitted steps on random gradients, and the final state."""
  rng = np.random.default_rng(seed)
  return run_steps(tx, params, [random_grads(params, rng) for _ in range(steps)])


def max_rel_diff(a, b) -> float:
  """max over leaves of max|a-b| / max|b| (a scale-aware relative difference)."""
  vals = jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
                         / max(float(np.max(np.abs(np.asarray(y, np.float64)))), 1e-30))
      if np.size(y) else 0.0, a, b))
  return max(vals) if vals else 0.0


def assert_trees_close(a, b, rtol: float, atol: float, msg: str = "") -> None:
  """assert_allclose per leaf; `atol` is scaled by max(1, max|b|) of that leaf (f32 ulps grow
  with the magnitude of the leaf, and elements crossing zero have no meaningful relative error)."""
  ka = jax.tree_util.tree_flatten_with_path(a)[0]
  kb = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in ka] == [p for p, _ in kb], msg
  for (path, x), (_, y) in zip(ka, kb):
    y64 = np.asarray(y, np.float64)
    scale = max(1.0, float(np.max(np.abs(y64)))) if y64.size else 1.0
    np.testing.assert_allclose(np.asarray(x, np.float64), y64, rtol=rtol,
                               atol=atol * scale, err_msg=f"{msg} at {jax.tree_util.keystr(path)}")


def small_tree(seed: int = 0, dtype=jnp.float32) -> dict:
  """A small mixed tree for the fast tier: a scalar, vectors, matrices (one factored at the
  default threshold of 8 used by the unit tests), a rank-3 and a rank-4 leaf, nested."""
  rng = np.random.default_rng(seed)
  shapes = {"scalar": (), "bias": (7,), "kernel": (12, 10), "t3": (4, 9, 8),
            "nested": {"a": (3, 8), "b": [(2,), (16, 9)]}}
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), dtype), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def leaf_by_leaf(fn, *trees):
  """`fn` applied to the leaves of `trees` at each key path (the reference of a per-leaf
  block), as a tree like the first; jitted, as the blocks are in the tests, so that XLA treats
  the same arithmetic alike (it contracts ``a + b * c`` into a fused multiply-add where the CPU
  has one, in both)."""
  return jax.jit(lambda *ts: jax.tree.map(fn, *ts))(*trees)


def run_block(tx: optax.GradientTransformation, grads_list, params, *, jit: bool = True):
  """The updates of `tx` for each gradient tree of `grads_list` (params fixed), and its state."""
  state = tx.init(grads_list[0] if params is None else params)
  update = jax.jit(tx.update) if jit else tx.update
  out = []
  for g in grads_list:
    u, state = update(g, state, params)
    out.append(u)
  return out, state
