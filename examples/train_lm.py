"""Train a small character-level transformer language model with adafactor_jax and optax.adam.

The text is the documentation that ships with Python itself (docstrings of standard-library
modules), so nothing is downloaded. For each optimizer the script shows a progress bar, prints
the final loss, the optimizer-state bytes and the median step time, and writes a PNG with both
loss curves.

    python examples/train_lm.py                 # defaults: about 1-2 minutes on 2 CPU cores
    python examples/train_lm.py --steps 20 --tiny --out /tmp/lm.png
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import adafactor_jax

MODULES = ("argparse", "collections", "json", "logging", "pathlib", "random", "re", "string",
           "textwrap", "unittest", "typing", "functools", "itertools", "subprocess", "datetime")


def corpus() -> str:
  """English prose from the standard library's docstrings (deterministic for a Python version)."""
  parts = []
  for name in MODULES:
    mod = importlib.import_module(name)
    parts.append(inspect.getdoc(mod) or "")
    for _, obj in sorted(vars(mod).items()):
      if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == mod.__name__:
        parts.append(inspect.getdoc(obj) or "")
  text = "\n\n".join(p for p in parts if p)
  return "".join(c for c in text if c.isprintable() or c == "\n")


def init_params(key, vocab: int, d: int, layers: int, seq: int) -> dict:
  keys = iter(jax.random.split(key, 4 + 6 * layers))
  dense = lambda i, o: jax.random.normal(next(keys), (i, o)) * (1.0 / np.sqrt(i))
  params = {"embed": jax.random.normal(next(keys), (vocab, d)) * 0.02,
            "pos": jax.random.normal(next(keys), (seq, d)) * 0.02,
            "ln_f": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
            "head": dense(d, vocab)}
  for i in range(layers):
    params[f"layer_{i}"] = {
        "ln1": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
        "ln2": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
        "qkv": dense(d, 3 * d), "out": dense(d, d),
        "mlp_in": dense(d, 4 * d), "mlp_in_bias": jnp.zeros(4 * d),
        "mlp_out": dense(4 * d, d), "mlp_out_bias": jnp.zeros(d)}
  return params


def layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def forward(params, tokens, heads: int):
  b, t = tokens.shape
  x = params["embed"][tokens] + params["pos"][:t]
  mask = jnp.tril(jnp.ones((t, t), bool))
  layers = sorted(k for k in params if k.startswith("layer_"))
  for name in layers:
    p = params[name]
    q, k, v = jnp.split(layer_norm(x, p["ln1"]) @ p["qkv"], 3, axis=-1)
    split = lambda y: y.reshape(b, t, heads, -1).transpose(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    att = jnp.where(mask, q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]), -1e9)
    y = (jax.nn.softmax(att, -1) @ v).transpose(0, 2, 1, 3).reshape(b, t, -1)
    x = x + y @ p["out"]
    h = jax.nn.gelu(layer_norm(x, p["ln2"]) @ p["mlp_in"] + p["mlp_in_bias"])
    x = x + h @ p["mlp_out"] + p["mlp_out_bias"]
  return layer_norm(x, params["ln_f"]) @ params["head"]


def loss_fn(params, batch, heads):
  logits = forward(params, batch[:, :-1], heads)
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def batches(data: np.ndarray, batch: int, seq: int, steps: int, seed: int):
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(data) - seq - 1, size=batch)
    yield np.stack([data[i:i + seq + 1] for i in idx])


def train(name, tx, params, data, args, progress):
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, args.heads)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses, times = [], []
  it = batches(data, args.batch, args.seq, args.steps, args.seed)
  bar = progress(it, total=args.steps, desc=f"{name:>10}", leave=True)
  for batch in bar:
    t0 = time.perf_counter()
    params, state, loss = step(params, state, batch)
    loss = float(loss)
    times.append(time.perf_counter() - t0)
    losses.append(loss)
    if hasattr(bar, "set_postfix"):
      bar.set_postfix(loss=f"{loss:.3f}")
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  step_ms = 1e3 * statistics.median(times[1:] if len(times) > 1 else times)
  return losses, state_bytes, step_ms


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--seq", type=int, default=64)
  ap.add_argument("--d", type=int, default=128)
  ap.add_argument("--layers", type=int, default=2)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--tiny", action="store_true", help="a tiny model, for tests")
  ap.add_argument("--out", default="examples/out/train_lm.png", help="where to write the plot")
  args = ap.parse_args(argv)
  if args.tiny:
    args.d, args.layers, args.heads, args.seq, args.batch = 32, 1, 2, 16, 8

  try:
    from tqdm import tqdm as progress
  except ImportError:  # still runs, without a bar
    progress = lambda it, **kw: it

  text = corpus()
  chars = sorted(set(text))
  data = np.asarray([chars.index(c) for c in text], np.int32)
  print(f"corpus: {len(text):,} characters of Python's own documentation, vocabulary "
        f"{len(chars)}; model d={args.d}, layers={args.layers}, seq={args.seq}, "
        f"batch={args.batch}, steps={args.steps}")
  params = init_params(jax.random.PRNGKey(args.seed), len(chars), args.d, args.layers,
                       args.seq)
  n_params = sum(p.size for p in jax.tree.leaves(params))
  print(f"parameters: {n_params:,} ({4 * n_params:,} bytes in float32)")

  runs = {
      "adafactor": adafactor_jax.adafactor(learning_rate=1e-2),
      "adam": optax.adam(learning_rate=3e-3),
  }
  results = {}
  for name, tx in runs.items():
    results[name] = train(name, tx, params, data, args, progress)

  print(f"\n{'optimizer':<10} {'first loss':>10} {'final loss':>10} {'state bytes':>12} "
        f"{'step ms':>8}")
  for name, (losses, nbytes, ms) in results.items():
    final = float(np.mean(losses[-10:]))
    print(f"{name:<10} {losses[0]:>10.3f} {final:>10.3f} {nbytes:>12,} {ms:>8.1f}")

  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib is not installed: no plot (pip install -e '.[examples]')")
  else:
    import pathlib
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (losses, nbytes, ms) in results.items():
      ax.plot(losses, label=f"{name} (state {nbytes / 1e6:.2f} MB, {ms:.0f} ms/step)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/char)")
    ax.set_title("character-level transformer on Python's docstrings")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"plot written to {args.out}")
  return {k: {"losses": v[0], "state_bytes": v[1], "step_ms": v[2]} for k, v in results.items()}


if __name__ == "__main__":
  main(sys.argv[1:])
