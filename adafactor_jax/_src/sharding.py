"""`state_shardings`: the sharding of every optimizer-state leaf, derived from the params'.

How it is derived: the state is built abstractly (`jax.eval_shape` of ``tx.init``, nothing is
allocated) from params whose types carry their mesh axes (the params' mesh, with its axes made
Explicit), so that each leaf's sharding is the one ``init`` itself gives it on such a mesh (see
`layout`):

* the row and column statistics of a factored leaf keep the parameter's mesh axes on exactly the
  dims they keep, so a statistic is never replicated along a dim that is sharded in the
  parameter, and the step reduces the sharded dims with small all-reduces instead of gathering;
* full-size buffers (second moments, momentum, EMA and accumulation buffers, also inside
  `optax.masked`, `optax.MultiSteps`, `optax.inject_hyperparams`) are sharded like their param;
  so is any subtree whose leaves sit at the params' key paths with the params' shapes (a
  transformation from elsewhere whose ``init`` makes plain zeros);
* everything else (step counters, injected hyperparameters) is replicated.
"""

from __future__ import annotations

from typing import Any
from typing import Optional

import jax
from jax import tree_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from adafactor_jax._src import tree as tree_lib
from adafactor_jax._src import validation


def _leaves_with_paths(node: Any) -> list[tuple[str, Any]]:
  return [(tree_lib.path_str(p), x) for p, x in
          tree_util.tree_flatten_with_path(node, is_leaf=tree_lib.is_none)[0] if x is not None]


def state_shardings(tx: Any, params: Any) -> Any:
  """Returns the `NamedSharding` of every leaf of ``tx.init(params)``'s state.

  Args:
    tx: any optimizer or transformation of this package (also wrapped in ``optax.chain``,
      ``optax.masked``, ``optax.MultiSteps``, ``optax.inject_hyperparams``).
    params: the params, as arrays or `jax.ShapeDtypeStruct`, every leaf carrying a
      `NamedSharding`.

  Returns:
    A pytree with the state's structure: a `NamedSharding` per array leaf (``None`` where the
    state holds ``None``). Row/column statistics keep the parameter's mesh axes on the dims they
    keep; full-size buffers are sharded like their parameter; counters are replicated. Use it as
    ``out_shardings`` of ``jax.jit(tx.init)`` and as the target of a sharded checkpoint restore.

  Raises:
    ValueError: a parameter has no `NamedSharding`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import NamedSharding, PartitionSpec as P
    >>> import adafactor_jax
    >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
    >>> w = jax.ShapeDtypeStruct((256, 512), jnp.float32,
    ...                          sharding=NamedSharding(mesh, P("data", "model")))
    >>> tx = adafactor_jax.adafactor(1e-2)
    >>> s = adafactor_jax.state_shardings(tx, {"w": w})
    >>> tuple(s[0].v_row["w"].spec), tuple(s[0].v_col["w"].spec), tuple(s[0].count.spec)
    (('data',), ('model',), ())
    >>> state = jax.jit(tx.init, out_shardings=s)({"w": jnp.zeros((256, 512))})
  """
  validation.check_transformation("state_shardings: tx", tx)
  by_path: dict[str, tuple[tuple[int, ...], NamedSharding]] = {}
  mesh = None
  for path, p in tree_util.tree_flatten_with_path(params)[0]:
    sharding = getattr(p, "sharding", None)
    if not isinstance(sharding, NamedSharding):
      raise ValueError(
          f"state_shardings: the param {tree_lib.path_str(path)!r} has no NamedSharding (got "
          f"{sharding!r}); place the params with jax.device_put(..., NamedSharding(mesh, spec)) "
          "or pass jax.ShapeDtypeStruct(shape, dtype, sharding=...).")
    by_path[tree_lib.path_str(path)] = (tuple(p.shape), sharding)
    mesh = mesh or sharding.mesh
  if mesh is None:
    return jax.eval_shape(tx.init, params)
  replicated = NamedSharding(mesh, PartitionSpec())
  state = _typed_init(tx, params, mesh)

  def like_params(node: Any) -> bool:
    leaves = _leaves_with_paths(node)
    return bool(leaves) and all(
        path in by_path and tuple(x.shape) == by_path[path][0] for path, x in leaves)

  def typed(x: jax.ShapeDtypeStruct) -> Optional[NamedSharding]:
    """The leaf's sharding as ``init`` typed it, on the params' mesh (None: replicated)."""
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding) and any(a is not None for a in sharding.spec):
      return NamedSharding(mesh, sharding.spec)
    return None

  def assign(node: Any) -> Any:
    if node is None:
      return None
    if like_params(node):  # before the leaf test: a single bare param has the key path ''
      return tree_util.tree_map_with_path(
          lambda p, x: typed(x) or by_path[tree_lib.path_str(p)][1], node)
    if isinstance(node, jax.ShapeDtypeStruct):
      return typed(node) or replicated
    children, treedef = tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    return jax.tree.unflatten(treedef, [assign(c) for c in children])

  return assign(state)


def _typed_init(tx: Any, params: Any, mesh: Any) -> Any:
  """``jax.eval_shape(tx.init, params)`` with the params' mesh axes in their types (the mesh's
  axes made Explicit), so that each leaf of the state carries the sharding ``init`` gives it.

  Without such types (a JAX without sharding in types, params on several meshes, or an
  ``init`` that cannot be traced with them) the leaves carry none: full-size buffers are then
  still found by their key paths and shapes (`state_shardings`), the statistics are replicated.
  """
  plain = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  try:
    explicit = jax.sharding.AbstractMesh(
        tuple(mesh.axis_sizes), tuple(mesh.axis_names),
        axis_types=(jax.sharding.AxisType.Explicit,) * len(mesh.axis_names))
    typed = jax.tree.map(lambda p: jax.ShapeDtypeStruct(
        p.shape, p.dtype, sharding=NamedSharding(explicit, p.sharding.spec)), params)
    with jax.sharding.use_abstract_mesh(explicit):
      return jax.eval_shape(tx.init, typed)
  except Exception:  # noqa: BLE001 - see the docstring: the state without sharded types
    return jax.eval_shape(tx.init, plain)
