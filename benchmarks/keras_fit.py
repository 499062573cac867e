"""`model.fit` step time and optimizer bytes: `adafactor_jax.keras.Adafactor` against Keras's.

    python benchmarks/keras_fit.py                        # BERT-base-sized model, JAX backend
    python benchmarks/keras_fit.py --json docs/benchmark_keras_fit.json

A Keras model with BERT-base's parameters (109,482,240: a 30522 x 768 embedding, 12 layers of
four 768 x 768 projections, a 768 x 3072 and a 3072 x 768 dense layer, biases and layer norms),
trained with ``model.fit`` on a tiny batch (2 x 8 tokens) so that the optimizer's step is most of
the train step, with ``adafactor_jax.keras.Adafactor``, ``keras.optimizers.Adafactor`` and
``keras.optimizers.Adam``. Rounds are interleaved (each round fits every model for
``--steps`` steps); a step's time is the interval between two ``on_train_batch_end`` callbacks,
the first round (compilation) left out. Optimizer bytes: ``optimizer.variables``, and those of
the variables of rank >= 2 (the matrices) apart.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import adafactor_jax.keras as afk  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "docs"))
import gen_performance  # noqa: E402  (the docs' table of this benchmark)

_spec = importlib.util.spec_from_file_location(
    "adafactor_jax_benchmark_run", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "run.py"))
run_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_benchmark)  # its machine(): the CPU model, versions

OPTIMIZERS = {
    "adafactor_jax.keras.Adafactor": lambda: afk.Adafactor(learning_rate=1e-3),
    "keras.optimizers.Adafactor": lambda: keras.optimizers.Adafactor(learning_rate=1e-3),
    "keras.optimizers.Adam": lambda: keras.optimizers.Adam(learning_rate=1e-3),
}


def bert_sized(vocab=30522, d=768, ff=3072, layers=12, seq=8):
  """BERT-base's parameter shapes in Keras layers (no attention arithmetic: the projections are
  applied in sequence, which keeps the forward pass cheap and every parameter trained)."""
  tokens = keras.Input((seq,), dtype="int32")
  x = PositionAndType(d)(keras.layers.Embedding(vocab, d)(tokens))
  x = keras.layers.LayerNormalization()(x)
  for _ in range(layers):
    h = x
    for _ in range(4):  # query, key, value, output
      h = keras.layers.Dense(d)(h)
    x = keras.layers.LayerNormalization()(x + h)
    h = keras.layers.Dense(ff, activation="gelu")(x)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(d)(h))
  pooled = keras.layers.Dense(d, activation="tanh")(keras.layers.GlobalAveragePooling1D()(x))
  return keras.Model(tokens, pooled)


class PositionAndType(keras.layers.Layer):
  """BERT's position (512 x d) and token-type (2 x d) embeddings, added to the tokens'."""

  def __init__(self, d, **kwargs):
    super().__init__(**kwargs)
    self.position = self.add_weight(shape=(512, d), initializer="random_normal")
    self.token_type = self.add_weight(shape=(2, d), initializer="random_normal")

  def call(self, x):
    return x + self.position[None, :x.shape[1]] + self.token_type[None, :1]


class StepTimes(keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.times: list[float] = []
    self._last = None

  def on_train_batch_begin(self, batch, logs=None):
    if self._last is None:
      self._last = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    now = time.perf_counter()
    self.times.append(now - self._last)
    self._last = now


def nbytes(variables, min_rank=0) -> int:
  return sum(int(np.prod(v.shape)) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
             for v in variables if len(v.shape) >= min_rank)


def matrix_state_bytes(model) -> int:
  """The bytes of the optimizer variables that belong to the model's variables of rank >= 2:
  r, c (and Keras's velocity) for the Adafactors, both moments for Adam."""
  opt = model.optimizer
  lists = [getattr(opt, a) for a in ("_r", "_c", "_v", "_momentums", "_velocities")
           if hasattr(opt, a)]
  owned = [lst[opt._get_variable_index(var)] for var in model.trainable_variables
           if len(var.shape) >= 2 for lst in lists]
  return nbytes([v for v in owned if v is not None])


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=5, help="steps per model and round")
  ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
  ap.add_argument("--small", action="store_true", help="a small model, for tests")
  ap.add_argument("--json", default="")
  args = ap.parse_args(argv)
  build = (lambda: bert_sized(vocab=1000, d=64, ff=256, layers=2)) if args.small else bert_sized
  rng = np.random.default_rng(0)
  x = rng.integers(0, 1000, size=(2 * args.steps, 8)).astype("int32")
  models, timers = {}, {}
  for name in args.optimizers:
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    y = np.zeros((2 * args.steps,) + tuple(model.output.shape[1:]), "float32")
    models[name], timers[name] = (model, y), StepTimes()
  n_params = models[args.optimizers[0]][0].count_params()
  for r in range(args.rounds + 1):
    for name in args.optimizers:
      model, y = models[name]
      timer = timers[name]
      timer._last = None
      before = len(timer.times)
      model.fit(x, y, batch_size=2, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
      if r == 0:  # compilation
        del timer.times[before:]
  rows = {}
  for name in args.optimizers:
    model, _ = models[name]
    times = timers[name].times
    rows[name] = {"step_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
                  "max_ms": 1e3 * max(times),
                  "optimizer_bytes": nbytes(model.optimizer.variables),
                  "matrix_state_bytes": matrix_state_bytes(model),
                  "steps": len(times)}
  machine = (f"{run_benchmark.machine()}, keras {keras.__version__} "
             f"({keras.backend.backend()}), {time.strftime('%Y-%m-%d')}")
  result = {"kind": "keras_fit", "machine": machine, "params": n_params, "rounds": args.rounds,
            "steps": args.steps, "rows": rows}
  print(f"{machine}; {n_params:,} parameters; {args.rounds} rounds x {args.steps} steps\n")
  print(gen_performance.keras_fit_table(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
