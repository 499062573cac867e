"""Correctness on whatever device JAX runs on (a GPU where there is one): before timing there.

    python benchmarks/device_check.py

Prints, for a small tree of leaves of rank 0 to 4 (a size-0 one too), the largest difference
over 10 steps, relative to each leaf's largest value:
- `adafactor` (alone, with momentum and weight decay) and `adadelta` against optax's;
- the fast path (`adafactor_jax.chain`) against ``optax.chain`` of the same blocks;
- each preset's fused step against its blocks run one by one (``engine.disabled()``), and
  whether its bfloat16 params stay finite;
- `torch_adafactor` against ``torch.optim.Adafactor`` (on CUDA where torch has it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adafactor_jax as af
from adafactor_jax._src import engine

SHAPES = {"emb": (1000, 256), "k": (256, 1024), "qkv": (256, 3, 4, 64), "b": (1024,), "s": (),
          "conv": (3, 3, 16, 256), "e": (0, 4)}


def tree(seed, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.standard_normal(s) * 0.5, dtype) for k, s in SHAPES.items()}


def scale_err(a, b) -> float:
  """max |a - b| / max |b| over the leaves (empty leaves skipped)."""
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size:
      worst = max(worst, float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-30)))
  return worst


def run(tx, params, steps=10, seed=10):
  """The updates of `steps` jitted steps, applied, and the final params."""
  state, p, out = tx.init(params), params, []
  update = jax.jit(tx.update)
  dtype = jax.tree.leaves(params)[0].dtype
  for i in range(steps):
    u, state = update(tree(seed + i, dtype), state, p)
    out.append(u)
    p = optax.apply_updates(p, u)
  return out, p


def worst(a, b) -> float:
  return max(scale_err(x, y) for x, y in zip(a, b))


def main():
  print(jax.devices(), "jax", jax.__version__, "optax", optax.__version__, flush=True)
  params = tree(0)
  for name, ours, ref in [
      ("adafactor", af.adafactor(1e-2), optax.adafactor(1e-2)),
      ("adafactor momentum+wd", af.adafactor(1e-2, momentum=0.9, weight_decay_rate=1e-3),
       optax.adafactor(1e-2, momentum=0.9, weight_decay_rate=1e-3)),
      ("adadelta", af.adadelta(1.0), optax.adadelta(1.0))]:
    (ua, pa), (ub, pb) = run(ours, params), run(ref, params)
    print(f"{name} vs optax: updates {worst(ua, ub):.2e}, params {scale_err(pa, pb):.2e}",
          flush=True)

  blocks = [af.scale_by_factored_rms(), af.clip_by_block_rms(1.0),
            af.scale_by_learning_rate(1e-2, flip_sign=False), af.scale_by_param_block_rms(),
            af.scale_by_momentum(0.9), af.add_decayed_weights(1e-3), af.scale_by_learning_rate(1.0)]
  (ua, _), (ub, _) = run(af.chain(*blocks), params), run(optax.chain(*blocks), params)
  print(f"fast path vs optax.chain of the blocks: {worst(ua, ub):.2e}", flush=True)

  for name in ("adafactor", "keras_adafactor", "torch_adafactor", "hf_adafactor",
               "big_vision_adafactor"):
    kw = dict(relative_step=False, scale_parameter=False) if name == "hf_adafactor" else {}
    tx = getattr(af, name)(1e-2, **kw)
    with engine.disabled():
      ub, _ = run(tx, params, 3)
    ua, _ = run(tx, params, 3)
    _, half = run(tx, tree(0, jnp.bfloat16), 3)
    finite = all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(half))
    print(f"{name}: fused vs block by block {worst(ua, ub):.2e}; bf16 params finite {finite}",
          flush=True)

  try:
    import torch
  except ImportError:
    print("torch not installed: no torch.optim.Adafactor comparison")
    return
  device = "cuda" if torch.cuda.is_available() else "cpu"
  leaves = [x for x in jax.tree.leaves(params) if x.size]
  theirs = [torch.nn.Parameter(torch.tensor(np.asarray(x), device=device)) for x in leaves]
  opt = torch.optim.Adafactor(theirs, lr=1e-2)
  tx = af.torch_adafactor(1e-2)
  state, p, err = tx.init(leaves), leaves, 0.0
  update = jax.jit(tx.update)
  for i in range(5):
    grads = [x for x in jax.tree.leaves(tree(10 + i)) if x.size]
    for t, g in zip(theirs, grads):
      t.grad = torch.tensor(np.asarray(g), device=device)
    opt.step()
    u, state = update(grads, state, p)
    p = optax.apply_updates(p, u)
    err = max(err, scale_err(p, [t.detach().cpu().numpy() for t in theirs]))
  print(f"torch_adafactor vs torch.optim.Adafactor ({torch.__version__}, {device}): "
        f"params {err:.2e}", flush=True)


if __name__ == "__main__":
  main()
