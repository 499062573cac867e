"""Save and resume `model.fit` with `adafactor_jax.keras` optimizers, in fresh processes.

    python tests/keras_resume_check.py straight OUT_DIR OPTIMIZER   # 4 epochs, saving after 2
    python tests/keras_resume_check.py resume OUT_DIR OPTIMIZER     # loads, then 2 more epochs

``straight`` trains 2 epochs, saves ``m.keras`` and ``w.weights.h5``, trains 2 more and writes
the weights and optimizer variables to ``straight.npz``; ``resume`` (another process) loads
``m.keras`` with ``keras.saving.load_model`` and trains 2 epochs (``resume.npz``), and loads
``w.weights.h5`` into a newly built model and trains 2 epochs (``resume_h5.npz``). All three must
be equal bit for bit.
"""

from __future__ import annotations

import os
import sys

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")
import keras  # noqa: E402

import adafactor_jax.keras as afk  # noqa: E402

OPTIMIZERS = {
    "adafactor": lambda: afk.Adafactor(learning_rate=0.05, weight_decay=0.01, use_ema=True,
                                       ema_overwrite_frequency=3, gradient_accumulation_steps=2),
    "adadelta": lambda: afk.Adadelta(learning_rate=1.0, clipnorm=0.5),
}


def data():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(32, 8)).astype("float32"), rng.normal(size=(32, 4)).astype("float32"))


def new_model(optimizer):
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"),
                            keras.layers.Dense(4)])
  model.compile(optimizer=optimizer, loss="mse")
  return model


def fit(model, epochs):
  x, y = data()
  model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False)


def dump(model, path):
  arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
  arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)})
  np.savez(path, **arrays)


def main(mode: str, out: str, name: str) -> None:
  if mode == "straight":
    model = new_model(OPTIMIZERS[name]())
    fit(model, 2)
    model.save(os.path.join(out, "m.keras"))
    model.save_weights(os.path.join(out, "w.weights.h5"))
    fit(model, 2)
    dump(model, os.path.join(out, "straight.npz"))
  else:
    model = keras.saving.load_model(os.path.join(out, "m.keras"))
    assert type(model.optimizer) is type(OPTIMIZERS[name]()), type(model.optimizer)
    fit(model, 2)
    dump(model, os.path.join(out, "resume.npz"))
    model = new_model(OPTIMIZERS[name]())
    model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(out, "w.weights.h5"))
    fit(model, 2)
    dump(model, os.path.join(out, "resume_h5.npz"))


if __name__ == "__main__":
  main(*sys.argv[1:4])
