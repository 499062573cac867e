"""The JAX backend's step of `adafactor_jax.keras.Adafactor`: all variables in one fused call.

Keras's base optimizer has already unscaled, accumulated and clipped the gradients and decayed
the weights when it calls ``_backend_update_step``; what remains is the Adafactor core of
`keras_adafactor` (factored statistics over the last two dims, update clipping, the relative
step, the parameter scale), run as one `engine.chain` over every variable, with the Keras
variables as its state. Only called on the JAX backend (inside ``stateless_apply`` under
``jit`` in ``fit``).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from adafactor_jax._src import clipping
from adafactor_jax._src import engine
from adafactor_jax._src import scaling
from adafactor_jax._src.factored import scale_by_factored_rms


def _value(variable: Any) -> Any:
  return None if variable is None else variable.value


def adafactor_step(opt: Any, grads: list, variables: list, learning_rate: Any) -> None:
  """Updates `variables` and `opt`'s statistics in place (Keras's ``assign``), as
  ``keras.optimizers.Adafactor.update_step`` would one variable at a time."""
  index = [opt._get_variable_index(v) for v in variables]
  params = [v.value for v in variables]
  rows = [opt._r[i] for i in index]
  cols = [opt._c[i] for i in index]
  full = [opt._v[i] for i in index]
  # Keras: rho_t = min(lr, 1 / sqrt(t)) with t = iterations + 1 (applied updates)
  count = jnp.asarray(opt.iterations)
  t = (count + 1).astype(jnp.float32)
  rho = jnp.minimum(jnp.asarray(learning_rate, jnp.float32), 1.0 / jnp.sqrt(t))
  stats_dtype = None if opt._stats_dtype is None else jnp.dtype(opt._stats_dtype)
  core = engine.chain(
      scale_by_factored_rms(factored=True, decay_rate=-opt.beta_2_decay, min_dim_size_to_factor=0,
                            epsilon=opt.epsilon_1, factor_rule="last", stats_dtype=stats_dtype),
      clipping.clip_by_block_rms(opt.clip_threshold),
      scaling.scale_by_learning_rate(rho, flip_sign=False),
      scaling.scale_by_param_block_rms(opt.epsilon_2),
      scaling.scale_by_learning_rate(1.0),  # descent
  )
  state = core.init(params)
  stats = state[0]
  stats = stats._replace(count=count.astype(stats.count.dtype),
                         v_row=[_value(r) for r in rows], v_col=[_value(c) for c in cols],
                         v=[_value(v) for v in full])
  updates, new_state = core.update(list(grads), (stats,) + tuple(state[1:]), params)
  new = new_state[0]
  for var, p, u in zip(variables, params, updates):
    var.assign((p + u).astype(p.dtype))
  for store, values in ((rows, new.v_row), (cols, new.v_col), (full, new.v)):
    for var, value in zip(store, values):
      if var is not None:
        var.assign(value)
