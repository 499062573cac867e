"""The Python side of r/train_adafactor.R: the same data, the same training in Python, and the
comparison of the weights that R trained with it."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")


def data():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(32, 8)).astype("float32"), rng.normal(size=(32, 4)).astype("float32"))


def train_in_python():
  import keras

  import adafactor_jax.keras as afk

  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"),
                            keras.layers.Dense(4)])
  model.compile(optimizer=afk.Adafactor(learning_rate=1e-3, gradient_accumulation_steps=2),
                loss="mse")
  x, y = data()
  model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
  return model


def compare(r_weights, r_optimizer_variables) -> dict:
  """R's weights and optimizer variables against Python's, bit for bit."""
  model = train_in_python()
  ours = [np.asarray(w) for w in model.get_weights()]
  theirs = [np.asarray(w) for w in r_weights]
  opt_ours = [np.asarray(v) for v in model.optimizer.variables]
  opt_theirs = [np.asarray(v) for v in r_optimizer_variables]
  equal = (len(ours) == len(theirs) and len(opt_ours) == len(opt_theirs) and
           all(np.array_equal(a, b) for a, b in zip(ours + opt_ours, theirs + opt_theirs)))
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs))
  steps = int(model.optimizer.iterations)
  return {"equal": equal,
          "message": (f"{len(ours)} weights and {len(opt_ours)} optimizer variables "
                      f"{'equal to' if equal else 'DIFFER from'} the Python run's "
                      f"(largest weight difference {diff:.3g}; {steps} applied updates)")}
