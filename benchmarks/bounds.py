"""Where a step's time goes: device (kernel) time from a profiler trace, and a physical bound.

Used by ``benchmarks/run.py --device-time``:

* `device_time`: runs a step under ``jax.profiler.trace`` and reads the trace
  (``jax.profiler.ProfileData``): the device's busy time per step (the time covered by what ran
  on the accelerator's streams) and the kernels' count. XLA:CPU's trace has neither (its
  kernels run on the host's threads, not all recorded): on the CPU the step's wall time stands
  for its device time.
* `copy_bandwidth`: the bytes per second that a copy moves (read + write) on the device: an
  in-place XLA pass over 256 MB (on the CPU, it runs on all cores, as the steps' passes do), and
  on the CPU NumPy's memcpy too; the faster of them.
* `step_bytes`: the bytes a step must move at least, per optimizer: Adam reads the gradient,
  reads and writes both moments and the params (7 arrays of the param dtype: 28 bytes per float32
  parameter); an Adafactor reads a factored leaf's gradient three times (the statistics, the
  update RMS, the update) and its params twice (their RMS, the update) and writes them once (6
  arrays), and an unfactored leaf's second moment once more each way (in the statistics' dtype).
  Row and column statistics are negligible and not counted.

The physical bound of a step is ``step_bytes / copy_bandwidth``; a step achieves the fraction
``bound / device time`` of it.
"""

from __future__ import annotations

import glob
import math
import os
import statistics
import tempfile
import time
from typing import Any
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from adafactor_jax._src.factoring import FactorRules
from adafactor_jax._src.tree import flatten_params


def busy_ns(intervals: list[tuple[float, float]]) -> float:
  """The time covered by the (start, duration) `intervals`, overlaps counted once (two streams
  can run at once)."""
  total, end = 0.0, float("-inf")
  for start, duration in sorted(intervals):
    stop = start + duration
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def kernel_events(profile: Any) -> tuple[list[str], float]:
  """The names of the kernels in a `jax.profiler.ProfileData` and the device's busy time in ns:
  what ran on an accelerator's streams, the time it covered (`busy_ns`: the gaps between
  kernels, where the device waits for a launch, are not busy time). An XLA:CPU trace has no
  such lines: its kernels run on the host's threads, and the trace neither times nor lists all
  of them (a small program runs inline on the caller's thread, unrecorded); there the result is
  no kernels and NaN, and the step's wall time stands for its device time."""
  names: list[str] = []
  intervals: list[tuple[float, float]] = []
  for plane in profile.planes:
    if not plane.name.startswith("/device:") or plane.name.startswith("/device:CPU"):
      continue
    for line in plane.lines:
      # "Stream #N(...)": what ran; the derived lines ("XLA Ops", "XLA Modules") repeat it
      if line.name.startswith("Stream"):
        for e in line.events:
          names.append(e.name)
          intervals.append((e.start_ns, e.duration_ns))
  return names, (busy_ns(intervals) if intervals else float("nan"))


def trace(step: Callable[[], Any], steps: int) -> Any:
  """A `jax.profiler.ProfileData` of `steps` calls of `step()` (after one untraced call), or
  None where the profiler wrote no trace."""
  from jax.profiler import ProfileData
  step()  # warm: compiled, buffers placed
  trace_dir = tempfile.mkdtemp(prefix="adafactor_jax_trace_")
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      step()
  paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  return ProfileData.from_file(paths[0]) if paths else None


def device_time(step: Callable[[], Any], steps: int = 5) -> tuple[float, float]:
  """Device milliseconds per step and kernels per step of `step()` (which waits for its
  result), from a profiler trace of `steps` calls (`kernel_events`); NaN and NaN on the CPU."""
  profile = trace(step, steps)
  names, busy = kernel_events(profile) if profile is not None else ([], float("nan"))
  if math.isnan(busy):
    return float("nan"), float("nan")
  return 1e-6 * busy / steps, len(names) / steps


def describe(profile: Any, events: int = 4) -> str:
  """The planes and lines of a trace, with each line's event count and first event names: what
  `kernel_events` reads, to check it on a new device or jaxlib."""
  out = []
  for plane in profile.planes:
    out.append(plane.name)
    for line in plane.lines:
      names = [e.name for e in line.events]
      out.append(f"  {line.name}: {len(names)} events, e.g. {names[:events]}")
  return "\n".join(out)


def _median_seconds(fn: Callable[[], Any], reps: int) -> float:
  fn()  # warm: compiled, pages touched
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def copy_bandwidth(nbytes: int = 256 << 20, reps: int = 7) -> dict[str, float]:
  """Bytes per second that a copy moves (read + write), median of `reps`, as a dict:

  * ``"xla"``: an elementwise pass of XLA over `nbytes` of float32 on the default device that
    reads its input and writes it in place (the input donated, as the benchmark's steps donate
    their params and state), so no fresh buffer is faulted in (a pass into a new 256 MB output
    runs at a sixth of this on the CPU: the kernel's page faults, not the memory, set it).
  * ``"memcpy"`` (CPU only): NumPy's copy (memcpy) between two preallocated buffers.
  * ``"bandwidth"``: the larger of the two: the bound is the tighter for it.
  """
  step = jax.jit(lambda a: a * 0.5 + 1.0, donate_argnums=0)  # a + 0 would compile to no copy
  buf = [jnp.ones(nbytes // 4, jnp.float32)]

  def xla_pass():
    buf[0] = step(buf[0])
    buf[0].block_until_ready()

  out = {"xla": 2 * nbytes / _median_seconds(xla_pass, reps)}
  if jax.default_backend() == "cpu":
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    out["memcpy"] = 2 * nbytes / _median_seconds(lambda: np.copyto(dst, src), reps)
  out["bandwidth"] = max(out.values())
  return out


def step_bytes(shapes: Any, kind: str, factor_rule: Any = "largest",
               stats_itemsize: int | None = 4) -> int:
  """The bytes a step of `kind` ("adam" or "adafactor") must move over the tree `shapes`
  (`jax.ShapeDtypeStruct`s), with the factoring `factor_rule` ("largest", "last" or explicit
  rules; `min_dim_size_to_factor` 128). `stats_itemsize` None: the statistics in the param
  dtype (optax)."""
  rules = FactorRules(factor_rule)
  total = 0
  for path, leaf in flatten_params(shapes)[0]:
    size, itemsize = int(np.prod(leaf.shape)), jnp.dtype(leaf.dtype).itemsize
    if kind == "adam":
      total += 7 * size * itemsize
    elif kind == "adafactor":
      total += 6 * size * itemsize
      if not rules.plan(path, leaf.shape).factored:
        total += 2 * size * (stats_itemsize or itemsize)
    else:
      raise ValueError(f"kind must be 'adam' or 'adafactor', got {kind!r}")
  return total


if __name__ == "__main__":
  # ``python benchmarks/bounds.py``: this device's copy bandwidth, and what its trace of a small
  # step holds and what `kernel_events` reads from it
  print(jax.devices())
  print({k: f"{v / 1e9:.1f} GB/s" for k, v in copy_bandwidth().items()})
  x = jnp.ones((1024, 1024))
  small = jax.jit(lambda a: (jnp.sin(a) @ a).sum(0))
  profile = trace(lambda: small(x).block_until_ready(), 2)
  print(describe(profile))
  names, busy = kernel_events(profile)
  print(f"kernel_events: {len(names)} kernels in 2 steps {names[:8]}, busy {busy / 1e3:.1f} us")
