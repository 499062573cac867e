"""The fusion engine: what a building block needs to be fused into a chain.

A building block is written as a *kernel* over `Deferred` leaves, each leaf's update kept as a
lazy formula (`formula`); the chain runtime (`runtime`) runs the kernels of a chain one after
another and computes each leaf's update once, at the end. Reductions of a formula read inputs
offset by zeros XLA cannot fold (`opaque`), and large half-precision ones run in chained chunks
(`chunked`). Why, with the measurements: docs/design/engine.md.
"""

from adafactor_jax._src.engine.chunked import BLOCK_ELEMENTS
from adafactor_jax._src.engine.chunked import Link
from adafactor_jax._src.engine.chunked import largest
from adafactor_jax._src.engine.chunked import mean
from adafactor_jax._src.engine.chunked import total
from adafactor_jax._src.engine.formula import Deferred
from adafactor_jax._src.engine.formula import like_leaf
from adafactor_jax._src.engine.formula import operand
from adafactor_jax._src.engine.opaque import FULL_SIZE
from adafactor_jax._src.engine.opaque import MIN_SIZE_APART
from adafactor_jax._src.engine.opaque import PURPOSES
from adafactor_jax._src.engine.opaque import Seed
from adafactor_jax._src.engine.opaque import floored
from adafactor_jax._src.engine.opaque import offset
from adafactor_jax._src.engine.opaque import opaque_zero
from adafactor_jax._src.engine.opaque import ordered_after
from adafactor_jax._src.engine.opaque import seed_from
from adafactor_jax._src.engine.opaque import shared_seed
from adafactor_jax._src.engine.runtime import Context
from adafactor_jax._src.engine.runtime import Kernel
from adafactor_jax._src.engine.runtime import chain
from adafactor_jax._src.engine.runtime import disabled
from adafactor_jax._src.engine.runtime import in_branch
from adafactor_jax._src.engine.runtime import init_empty
from adafactor_jax._src.engine.runtime import kernel_of
from adafactor_jax._src.engine.runtime import run_inner
from adafactor_jax._src.engine.runtime import run_on_formulas
from adafactor_jax._src.engine.runtime import transformation

__all__ = (
    "BLOCK_ELEMENTS", "Context", "Deferred", "FULL_SIZE", "Kernel", "Link", "MIN_SIZE_APART",
    "PURPOSES", "Seed", "chain", "disabled", "floored", "in_branch", "init_empty", "kernel_of",
    "largest", "like_leaf", "mean", "offset", "opaque_zero", "operand", "ordered_after",
    "run_inner", "run_on_formulas", "seed_from", "shared_seed", "total", "transformation"
)
