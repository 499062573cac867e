import os
import sys

os.environ["KERAS_BACKEND"] = "jax"  # the Keras parity tests drive Keras on JAX
sys.path.insert(0, os.path.dirname(__file__))
