"""`state_shardings`: the sharding of every optimizer-state leaf, derived from the params'.

How it is derived: the state is built abstractly (`jax.eval_shape` of ``tx.init``, nothing is
allocated) and walked from the root.

* The factored statistics (`ScaleByFactoredRMSState`) carry each leaf's factoring plan in their
  static tree structure: the row statistic keeps every dim of the parameter but the col dims,
  and takes the parameter's mesh axes on exactly the dims it keeps; likewise the column
  statistic. So a statistic is never replicated along a dim that is sharded in the parameter,
  and the step reduces the sharded dims with small all-reduces instead of gathering.
* Any other subtree whose leaves sit at the params' key paths with the params' shapes (second
  moments, momentum, EMA and accumulation buffers, also inside `optax.masked`,
  `optax.MultiSteps`, `optax.inject_hyperparams`) is sharded exactly like the params.
* Everything else (step counters, injected hyperparameters) is replicated.
"""

from __future__ import annotations

from typing import Any

import jax
from jax import tree_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from adafactor_jax._src import tree as tree_lib
from adafactor_jax._src import validation
from adafactor_jax._src.factored import ScaleByFactoredRMSState
from adafactor_jax._src.factored import stats_tree


def _full_spec(sharding: NamedSharding, ndim: int) -> tuple:
  spec = tuple(sharding.spec)
  return spec + (None,) * (ndim - len(spec))


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
    >>> s[0].v_row["w"].spec, s[0].v_col["w"].spec, s[0].count.spec
    (P('data',), P('model',), P())
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
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  state = jax.eval_shape(tx.init, abstract)

  def like_params(node: Any) -> bool:
    leaves = _leaves_with_paths(node)
    return bool(leaves) and all(
        path in by_path and tuple(x.shape) == by_path[path][0] for path, x in leaves)

  def factored(node: ScaleByFactoredRMSState) -> ScaleByFactoredRMSState:
    plans = node.plans.plans
    merged = stats_tree(node)
    treedef = jax.tree.structure(merged)
    paths = [tree_lib.path_str(p) for p, _ in tree_util.tree_flatten_with_path(merged)[0]]
    rows, cols, vs = [], [], []
    for path, plan, r, v in zip(paths, plans, treedef.flatten_up_to(node.v_row),
                                treedef.flatten_up_to(node.v)):
      shape, sharding = by_path[path]
      spec = _full_spec(sharding, len(shape))
      if r is not None:
        rows.append(NamedSharding(sharding.mesh, PartitionSpec(
            *[a for i, a in enumerate(spec) if i not in plan.col_dims])))
        cols.append(NamedSharding(sharding.mesh, PartitionSpec(
            *[a for i, a in enumerate(spec) if i not in plan.row_dims])))
        vs.append(None)
      else:
        rows.append(None)
        cols.append(None)
        vs.append(sharding if v is not None else None)
    return ScaleByFactoredRMSState(
        count=replicated, v_row=treedef.unflatten(rows), v_col=treedef.unflatten(cols),
        v=treedef.unflatten(vs), plans=node.plans)

  def assign(node: Any) -> Any:
    if node is None:
      return None
    if isinstance(node, ScaleByFactoredRMSState):
      return factored(node)
    if like_params(node):  # before the leaf test: a single bare param has the key path ''
      return tree_util.tree_map_with_path(
          lambda p, x: by_path[tree_lib.path_str(p)][1], node)
    if isinstance(node, jax.ShapeDtypeStruct):
      return replicated
    children, treedef = tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    return treedef.unflatten([assign(c) for c in children])

  return assign(state)
