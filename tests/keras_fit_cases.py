"""`model.fit` with `adafactor_jax.keras.Adafactor`/`Adadelta` against Keras's own, on one backend.

Run by tests/test_keras_optimizers.py: in the test process for the JAX backend, and as
``KERAS_BACKEND=torch|tensorflow python tests/keras_fit_cases.py`` (a backend is fixed when keras
is imported), which prints one JSON line: for each case, the largest difference of a weight
after training, over the largest |weight| of that variable. Both optimizers train the same model
from the same weights on the same batches, with the same arguments.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")
import keras  # noqa: E402

import adafactor_jax.keras as afk  # noqa: E402


def schedule():
  return keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=5, decay_rate=0.7)


# Every argument alone (beside a learning rate where the default one hardly moves the weights),
# then random combinations. Keras's own classes take the same arguments.
ADAFACTOR_CASES: dict[str, dict] = {
    "defaults": {},
    "learning_rate": dict(learning_rate=0.05),
    "schedule": dict(learning_rate=schedule()),
    "callable": dict(learning_rate=lambda: 0.05),
    "beta_2_decay": dict(learning_rate=0.05, beta_2_decay=-0.5),
    "epsilon_1": dict(learning_rate=0.05, epsilon_1=1e-3),
    "epsilon_2": dict(learning_rate=0.05, epsilon_2=0.5),
    "clip_threshold": dict(learning_rate=0.05, clip_threshold=0.1),
    "relative_step": dict(learning_rate=0.05, relative_step=False),
    "weight_decay": dict(learning_rate=0.05, weight_decay=0.1),
    "clipnorm": dict(learning_rate=0.05, clipnorm=0.05),
    "clipvalue": dict(learning_rate=0.05, clipvalue=0.01),
    "global_clipnorm": dict(learning_rate=0.05, global_clipnorm=0.05),
    "use_ema": dict(learning_rate=0.05, use_ema=True, ema_momentum=0.9),
    "ema_overwrite_frequency": dict(learning_rate=0.05, use_ema=True, ema_momentum=0.5,
                                    ema_overwrite_frequency=3),
    "loss_scale_factor": dict(learning_rate=0.05, loss_scale_factor=64.0),
    "gradient_accumulation_steps": dict(learning_rate=0.05, gradient_accumulation_steps=3),
}
ADADELTA_CASES: dict[str, dict] = {
    "defaults": dict(learning_rate=1.0),
    "rho": dict(learning_rate=1.0, rho=0.5),
    "epsilon": dict(learning_rate=1.0, epsilon=1e-3),
    "schedule": dict(learning_rate=schedule()),
    "weight_decay": dict(learning_rate=1.0, weight_decay=0.1),
    "clipnorm": dict(learning_rate=1.0, clipnorm=0.05),
    "use_ema": dict(learning_rate=1.0, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2),
    "gradient_accumulation_steps": dict(learning_rate=1.0, gradient_accumulation_steps=2),
    "combo0": dict(learning_rate=schedule(), rho=0.8, weight_decay=0.05, global_clipnorm=0.1,
                   loss_scale_factor=16.0),
    "combo1": dict(learning_rate=2.0, epsilon=1e-4, clipvalue=0.01, use_ema=True,
                   ema_momentum=0.7, gradient_accumulation_steps=3),
}


def random_combos(seed: int, n: int) -> dict[str, dict]:
  rng = np.random.default_rng(seed)
  out = {}
  for i in range(n):
    kw: dict = dict(learning_rate=float(rng.choice([0.02, 0.05, 0.2])),
                    beta_2_decay=float(rng.choice([-0.8, -0.6])),
                    clip_threshold=float(rng.choice([1.0, 0.3])))
    clip = rng.choice(["clipnorm", "clipvalue", "global_clipnorm", "none"])
    if clip != "none":
      kw[str(clip)] = 0.05
    if rng.random() < 0.5:
      kw["weight_decay"] = 0.05
    if rng.random() < 0.5:
      kw.update(use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=int(rng.integers(2, 4)))
    if rng.random() < 0.5:
      kw["gradient_accumulation_steps"] = int(rng.integers(2, 4))
    if rng.random() < 0.5:
      kw["loss_scale_factor"] = 32.0
    out[f"combo{i}"] = kw
  return out


ADAFACTOR_CASES.update(random_combos(0, 4))


def model_and_data(seed: int = 0):
  """A small MLP with a 3-D kernel (an EinsumDense), a 2-D kernel and biases."""
  keras.utils.set_random_seed(seed)
  model = keras.Sequential([
      keras.Input((6, 8)),
      keras.layers.EinsumDense("btd,dh->bth", output_shape=(6, 16), bias_axes="h", name="proj"),
      keras.layers.Activation("tanh"),
      keras.layers.Flatten(),
      keras.layers.Dense(4, name="head"),
  ])
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(48, 6, 8)).astype("float32")
  y = rng.normal(size=(48, 4)).astype("float32")
  return model, x, y


def train(optimizer, *, epochs: int = 3, exclude=None, model_fn=model_and_data):
  model, x, y = model_fn()
  if exclude:
    optimizer.exclude_from_weight_decay(var_names=exclude)
  model.compile(optimizer=optimizer, loss="mse")
  model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False)
  return model


def weight_error(a, b) -> float:
  """The largest difference of a weight, over the largest |weight| of its variable."""
  return max(float(np.max(np.abs(np.asarray(p) - np.asarray(q))) / max(np.max(np.abs(p)), 1e-30))
             for p, q in zip(a, b))


def parity(ours_cls, keras_cls, cases: dict[str, dict]) -> dict[str, float]:
  errors = {}
  for name, kw in cases.items():
    exclude = ["bias"] if "weight_decay" in kw else None
    theirs = train(keras_cls(**_fresh(kw)), exclude=exclude)
    ours = train(ours_cls(**_fresh(kw)), exclude=exclude)
    errors[name] = weight_error([w.numpy() for w in theirs.weights],
                                [w.numpy() for w in ours.weights])
  return errors


def _fresh(kw: dict) -> dict:
  """A new schedule object per optimizer (a schedule is not shared between two optimizers)."""
  return {k: (schedule() if isinstance(v, keras.optimizers.schedules.LearningRateSchedule)
              else v) for k, v in kw.items()}


def all_parity() -> dict[str, dict[str, float]]:
  return {"Adafactor": parity(afk.Adafactor, keras.optimizers.Adafactor, ADAFACTOR_CASES),
          "Adadelta": parity(afk.Adadelta, keras.optimizers.Adadelta, ADADELTA_CASES)}


if __name__ == "__main__":
  result = {"backend": keras.backend.backend(), "errors": all_parity()}
  sys.stdout.write("RESULT " + json.dumps(result) + "\n")
