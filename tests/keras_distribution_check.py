"""`adafactor_jax.keras.Adafactor` under `keras.distribution` on 8 simulated CPU devices (JAX).

    python tests/keras_distribution_check.py

Trains the same model with ours and with ``keras.optimizers.Adafactor`` under ``DataParallel``
(8 devices) and ``ModelParallel`` (a (2, 4) mesh, kernels sharded over "model"), and prints one
JSON line: the weight differences, and for each kernel the mesh axes of its row and column
statistics next to the kernel's.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["KERAS_BACKEND"] = "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import keras_fit_cases as cases  # noqa: E402

import adafactor_jax.keras as afk  # noqa: E402


def model_and_data():
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh",
                                                                  name="hidden"),
                            keras.layers.Dense(4, name="head")])
  rng = np.random.default_rng(0)
  return (model, rng.normal(size=(64, 8)).astype("float32"),
          rng.normal(size=(64, 4)).astype("float32"))


def spec(value) -> list:
  return [None if a is None else str(a) for a in value.sharding.spec]


def run(distribution) -> dict:
  keras.distribution.set_distribution(distribution)
  kw = dict(learning_rate=0.05, weight_decay=0.01)
  theirs = cases.train(keras.optimizers.Adafactor(**kw), model_fn=model_and_data)
  ours = cases.train(afk.Adafactor(**kw), model_fn=model_and_data)
  opt = ours.optimizer
  layouts = {}
  for var in ours.trainable_variables:
    i = opt._get_variable_index(var)
    if opt._r[i] is not None:
      layouts[var.path] = {"kernel": spec(var.value), "row": spec(opt._r[i].value),
                           "col": spec(opt._c[i].value)}
  return {"error": cases.weight_error([w.numpy() for w in theirs.weights],
                                      [w.numpy() for w in ours.weights]),
          "layouts": layouts}


def main() -> None:
  devices = keras.distribution.list_devices()
  assert len(devices) == 8, devices
  result = {"data_parallel": run(keras.distribution.DataParallel(devices=devices))}
  mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
  layout_map = keras.distribution.LayoutMap(mesh)
  layout_map[".*hidden/kernel"] = (None, "model")
  layout_map[".*head/kernel"] = ("model", None)
  result["model_parallel"] = run(keras.distribution.ModelParallel(layout_map=layout_map,
                                                                  batch_dim_name="batch"))
  sys.stdout.write("RESULT " + json.dumps(result) + "\n")


if __name__ == "__main__":
  main()
