"""Optimizer buffers laid out like their parameter: the same mesh axes on the dims they keep.

`init` gives each buffer the sharding that `update` gives it, so that the state's type
(``jax.typeof``: shape, dtype and, on a mesh of Explicit axes, sharding) is the same after
both, as `jax.lax.cond`, `jax.lax.scan` and a jitted step compiled once require:

* a concrete parameter with a `NamedSharding` (a sharded array, or a `jax.ShapeDtypeStruct`
  carrying one): its buffers are placed with that sharding, restricted to the dims they keep;
* a traced parameter (under `jax.jit` or `jax.eval_shape`) whose type carries mesh axes (a mesh
  of Explicit axes, `jax.make_mesh`'s default, under `jax.set_mesh`): its buffers get those
  axes in their type;
* anything else (one device, or a traced parameter on a mesh of Auto axes, whose layout XLA
  chooses): plain zeros.
"""

from __future__ import annotations

from typing import Any
from typing import Optional
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
from jax.typing import DTypeLike


def param_sharding(p: Any) -> Optional[NamedSharding]:
  """The `NamedSharding` that buffers of the parameter `p` follow, or None (see the module)."""
  if isinstance(p, jax.core.Tracer):
    typeof = getattr(jax, "typeof", None)  # (sharding in types: jax >= 0.5)
    sharding = getattr(typeof(p), "sharding", None) if typeof is not None else None
    if isinstance(sharding, NamedSharding) and any(a is not None for a in sharding.spec):
      return sharding
    return None
  sharding = getattr(p, "sharding", None)
  return sharding if isinstance(sharding, NamedSharding) else None


def zeros(p: Any, dtype: DTypeLike, keep: Optional[Sequence[int]] = None) -> jax.Array:
  """Zeros of `dtype` with the shape of the parameter `p` (or of its dims `keep`, in order),
  laid out like `p` on those dims."""
  shape = tuple(p.shape) if keep is None else tuple(p.shape[i] for i in keep)
  sharding = param_sharding(p)
  if sharding is None:
    return jnp.zeros(shape, dtype)
  spec = tuple(sharding.spec) + (None,) * (len(p.shape) - len(sharding.spec))
  if keep is not None:
    spec = tuple(spec[i] for i in keep)
  sharding = NamedSharding(sharding.mesh, PartitionSpec(*spec))
  if isinstance(p, jax.core.Tracer):
    return jnp.zeros(shape, dtype, out_sharding=sharding)
  return jnp.zeros(shape, dtype, device=sharding)


def buffer_dtype(dtype: Optional[DTypeLike], leaf_dtype: DTypeLike) -> jnp.dtype:
  """The dtype of a leaf-shaped buffer (momentum, accumulated gradients, the EMA) asked for as
  `dtype` (None: the leaf's): for a complex leaf, the complex type of that precision, as a real
  buffer would drop the imaginary part (optax's float32 default for momentum does)."""
  if dtype is None:
    return jnp.dtype(leaf_dtype)
  if (jnp.issubdtype(leaf_dtype, jnp.complexfloating)
      and not jnp.issubdtype(dtype, jnp.complexfloating)):
    return jnp.result_type(dtype, jnp.complex64)
  return jnp.dtype(dtype)
