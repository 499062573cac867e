"""XLA_FLAGS for the subprocesses that simulate several CPU devices, set before jax is imported.

On a loaded 2-core machine (CI runs two test workers beside each subprocess) a device thread of
a simulated mesh can wait for a core longer than XLA:CPU's collective rendezvous allows (40 s;
then it aborts the process: "Termination timeout ... Expected 4 threads to join the rendezvous,
but only 3 of them arrived on time"). Where jaxlib takes the flag, the timeout is raised.
"""

import importlib.metadata
import os

# The first jaxlib known here to take --xla_cpu_collective_call_terminate_timeout_seconds (0.7.2,
# the floor, does not: XLA aborts on a flag it does not know).
_TIMEOUT_FLAG_SINCE = (0, 10, 2)


def _version(package: str) -> tuple[int, ...]:
  parts = importlib.metadata.version(package).split(".")[:3]
  return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts)


def patient_collectives() -> str:
  """The XLA_FLAGS that raise the collective rendezvous timeout, where jaxlib takes them."""
  if _version("jaxlib") < _TIMEOUT_FLAG_SINCE:
    return ""
  return " --xla_cpu_collective_call_terminate_timeout_seconds=900"


def simulate_cpu_devices(n: int) -> None:
  """Sets XLA_FLAGS for `n` simulated CPU devices (call before importing jax)."""
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + patient_collectives()
                             + f" --xla_force_host_platform_device_count={n}")
