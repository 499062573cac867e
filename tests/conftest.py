import os
import sys

os.environ["KERAS_BACKEND"] = "jax"  # the Keras parity tests drive Keras on JAX
sys.path.insert(0, os.path.dirname(__file__))

# The suite's core (``pytest --core``): what needs nothing but jax, jaxlib, optax and numpy (with
# pytest and hypothesis) and reads no compiled program, so that it runs with any release of them,
# the declared floors included (.ci/run). Left out: these modules, and tests marked ``hlo`` or
# ``references``.
NOT_CORE = {
    "test_keras_parity.py": "Keras",
    "test_keras_optimizers.py": "Keras, PyTorch and TensorFlow",
    "test_torch_hf_parity.py": "PyTorch and transformers",
    "test_frameworks.py": "Flax, Haiku and Equinox",
    "test_examples.py": "matplotlib and tqdm; benchmarks that read the compiled HLO",
    "test_optax_conformance.py": "the test files shipped with optax 0.2.8, and scikit-learn",
}


def pytest_addoption(parser):
  parser.addoption("--core", action="store_true",
                   help="run only the suite's core: no reference library beyond jax, optax and "
                        "numpy, no test that reads one XLA version's compiled program")


def _core_only(config) -> bool:
  """``--core``, or the fast tier (``-m unit``), which needs the runtime dependencies only."""
  return config.getoption("--core") or "unit" in (config.getoption("markexpr") or "")


def pytest_ignore_collect(collection_path, config):
  if _core_only(config) and collection_path.name in NOT_CORE:
    return True
  return None


def pytest_collection_modifyitems(config, items):
  if not _core_only(config):
    return
  keep, drop = [], []
  for item in items:
    (drop if item.get_closest_marker("hlo") or item.get_closest_marker("references")
     else keep).append(item)
  if drop:
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
