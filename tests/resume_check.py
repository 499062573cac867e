"""Checkpoint/resume across processes (see test_reliability.py).

    python resume_check.py run DIR        # for every preset: 30 steps uninterrupted (saved as
                                          # DIR/NAME.full.npz) and 13 steps, then save_state
    python resume_check.py resume DIR     # in a fresh process: load_state, train to 30
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from presets import PRESETS  # noqa: E402

import adafactor_jax as af  # noqa: E402

STEPS, CUT = 30, 13
RESUME = dict(PRESETS)
RESUME["keras_adafactor_accumulation"] = lambda lr: af.keras_adafactor(
    lr, gradient_accumulation_steps=3, use_ema=True, ema_overwrite_frequency=4, weight_decay=1e-3)
RESUME["adafactor_skip"] = lambda lr: af.adafactor(lr, momentum=0.9, skip_nonfinite=True)


def params0():
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.normal(size=(16, 12)), jnp.float32),
          "t3": jnp.asarray(rng.normal(size=(3, 16, 10)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(12,)), jnp.float32)}


def grads(i, params):
  rng = np.random.default_rng(1000 + i)
  g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  if i == 7:  # one non-finite step, skipped by the presets that skip
    g["b"] = g["b"].at[0].set(jnp.nan)
  return g


def make_step(tx):
  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s
  return step


def train(step, p, s, start, stop):
  for i in range(start, stop):
    g = grads(i, p)
    if i == 7 and not any(isinstance(x, af.SkipNonFiniteState) for x in jax.tree.leaves(
        s, is_leaf=lambda x: isinstance(x, af.SkipNonFiniteState))):
      g = jax.tree.map(jnp.nan_to_num, g)
    p, s = step(p, s, g)
  return p, s


def flat(p, s):
  return {f"p/{k}": np.asarray(v) for k, v in p.items()} | {
      f"s/{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(s))}


def main(mode, folder):
  for name, make in sorted(RESUME.items()):
    tx = make(1e-2)
    step = make_step(tx)  # compiled once per process: both runs below take the same program
    if mode == "run":
      p = params0()
      full_p, full_s = train(step, p, tx.init(p), 0, STEPS)
      np.savez(os.path.join(folder, f"{name}.full.npz"), **flat(full_p, full_s))
      p, s = train(step, p, tx.init(p), 0, CUT)
      af.save_state(os.path.join(folder, f"{name}.state.npz"), s)
      np.savez(os.path.join(folder, f"{name}.params.npz"), **p)
    else:
      with np.load(os.path.join(folder, f"{name}.params.npz")) as f:
        p = {k: jnp.asarray(f[k]) for k in f.files}
      like = jax.eval_shape(tx.init, p)
      s = af.load_state(os.path.join(folder, f"{name}.state.npz"), like=like)
      p, s = train(step, p, s, CUT, STEPS)
      np.savez(os.path.join(folder, f"{name}.resumed.npz"), **flat(p, s))
  print("done", len(RESUME))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
