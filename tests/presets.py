"""Every optimizer of the package, for the shared contract suite (tests/test_contract.py).

Each entry: name -> (factory taking a learning rate, dict of extra kwargs for the factory).
Add every new preset here; the contract suite then runs it.
"""

import jax.numpy as jnp

import adafactor_jax as af

PRESETS = {
    "adafactor": lambda lr: af.adafactor(lr, min_dim_size_to_factor=8),
    "adafactor_lr_none": lambda lr: af.adafactor(min_dim_size_to_factor=8),
    "adafactor_full": lambda lr: af.adafactor(
        lr, min_dim_size_to_factor=8, momentum=0.9, weight_decay_rate=1e-3,
        dtype_momentum=jnp.bfloat16),
    "adafactor_last": lambda lr: af.adafactor(lr, min_dim_size_to_factor=0, factor_rule="last"),
    "adafactor_rules": lambda lr: af.adafactor(
        lr, factor_rule={"t3": ("batch", "row", "col")}, min_dim_size_to_factor=0),
    "adadelta": lambda lr: af.adadelta(lr),
    "adadelta_lr_none": lambda lr: af.adadelta(weight_decay=1e-3),
}

# Presets whose learning rate can be injected with optax.inject_hyperparams (name of the
# factory, the learning-rate argument, and any other numeric argument to inject).
INJECTABLE = {
    "adafactor": (af.adafactor, dict(learning_rate=0.01, decay_rate=0.8),
                  dict(min_dim_size_to_factor=8)),
    "adadelta": (af.adadelta, dict(learning_rate=0.5, rho=0.9), {}),
}
