"""The root mean square of a leaf over all dims but its batch dims: Adafactor's update clipping
and parameter scale."""

from __future__ import annotations

import functools
import math
from typing import Callable
from typing import Optional

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from adafactor_jax._src import engine
from adafactor_jax._src import factoring


def block_rms(x: jax.Array, plan: factoring.LeafPlan, dtype: DTypeLike,
              link: Optional[engine.Link] = None) -> jax.Array:
  """RMS of `x` over all dims but the batch dims, computed in `dtype`: a scalar when that is all
  dims, else an array that broadcasts against `x` (keepdims). With `link`, a large
  half-precision `x` is reduced in blocks (`engine.mean`). A bfloat16 `x` is squared in
  bfloat16 (as optax squares in the param dtype), a float16 one in `dtype` (a float16 square
  overflows above 256); the mean is taken in `dtype`.

  Arithmetic on the scalar stays scalar: on arrays of shape ``(1,) * x.ndim`` XLA's simplifier
  takes four more rounds over the whole program to make it scalar again. `engine.Deferred.scale`
  gives it the ``(1,) * x.ndim`` shape (`engine.like_leaf`) only where it meets the leaf before
  the final pass, so that the compiled arithmetic is the blocks' own.
  """
  return rms(lambda reduce, elem: reduce(elem, [x], x.shape, link=link), x.shape, plan, dtype)


def rms(apply: Callable[..., jax.Array], shape: tuple, plan: factoring.LeafPlan,
         dtype: DTypeLike) -> jax.Array:
  """`block_rms` of the array `a` of `shape` for which ``apply(reduce, elem)`` is
  ``reduce(elem(a))`` (as `engine.Deferred.reduce_apart`)."""
  axes = plan.rms_axes(len(shape))
  keepdims = len(axes) < len(shape)
  if math.prod(shape) == 0:
    return jnp.zeros([1] * len(shape) if keepdims else [], dtype)

  def elem(x):
    if jnp.iscomplexobj(x):
      return jnp.real(x * jnp.conj(x)).astype(dtype)
    if x.dtype == jnp.float16:  # squared in `dtype`: a float16 square overflows above 256
      x = x.astype(dtype)
    return (x * x).astype(dtype)

  return jnp.sqrt(apply(functools.partial(engine.mean, axes=axes, keepdims=keepdims), elem))


def plans(rules: Optional[factoring.FactorRules], leaves: list[engine.Deferred],
           ctx: engine.Context) -> list[factoring.LeafPlan]:
  if rules is None:
    return [factoring.UNFACTORED] * len(leaves)
  return [rules.plan(path, d.shape) for path, d in zip(ctx.paths, leaves)]


def rules_of(factor_rule: Optional[factoring.FactorRule]) -> Optional[factoring.FactorRules]:
  return None if factor_rule is None else factoring.as_rules(factor_rule)
