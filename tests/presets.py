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
    "keras_adafactor": lambda lr: af.keras_adafactor(lr),
    "keras_adafactor_full": lambda lr: af.keras_adafactor(
        lr, weight_decay=1e-3, clipnorm=1.0, use_ema=True, ema_overwrite_frequency=2,
        loss_scale_factor=8.0, exclude_from_weight_decay=["b"]),
    "keras_adadelta": lambda lr: af.keras_adadelta(lr),
    "keras_adadelta_full": lambda lr: af.keras_adadelta(
        lr, weight_decay=1e-3, global_clipnorm=1.0, use_ema=True, ema_momentum=0.9),
    "torch_adafactor": lambda lr: af.torch_adafactor(lr),
    "torch_adafactor_full": lambda lr: af.torch_adafactor(
        lr, beta2_decay=-0.6, eps=(1e-3, 1e-2), d=1.5, weight_decay=0.1, maximize=True),
    "hf_adafactor": lambda lr: af.hf_adafactor(),
    "hf_adafactor_full": lambda lr: af.hf_adafactor(
        lr, relative_step=False, beta1=0.9, weight_decay=1e-2, clip_threshold=0.5),
    "big_vision_adafactor": lambda lr: af.big_vision_adafactor(lr),
    "big_vision_adafactor_full": lambda lr: af.big_vision_adafactor(
        lr, min_dim_size_to_factor=8, clipping_threshold=1.0, weight_decay=1e-3,
        weight_decay_mask=af.mask_by_path(include="w")),
    "adafactor_t5x": lambda lr: af.adafactor(
        lr, factor_rule={"t3": ("batch", "row", "col")}, min_dim_size_to_factor=8,
        multiply_by_parameter_scale={"^b$": False, ".*": True}, max_parameter_scale=1.0,
        global_norm_clip_threshold=1.0, weight_decay_rate=0.5, weight_decay_rate_lr_exponent=1.0),
}

# Every preset under optax.inject_hyperparams: the factory, the numeric arguments injected (the
# learning rate first), and the static ones (integers that decide shapes or schedules, dtypes).
INJECTABLE = {
    "adafactor": (af.adafactor, dict(learning_rate=0.01, decay_rate=0.8, clipping_threshold=1.0,
                                      momentum=0.9, weight_decay_rate=1e-3, eps=1e-30),
                  dict(min_dim_size_to_factor=8)),
    "adadelta": (af.adadelta, dict(learning_rate=0.5, rho=0.9, eps=1e-6, weight_decay=0.0), {}),
    # f32 momentum: a bf16 buffer turns the last-ulp differences between an injected and a
    # constant learning rate into bf16 roundings.
    "big_vision_adafactor": (af.big_vision_adafactor,
                             dict(learning_rate=0.01, beta2_cap=0.999, momentum=0.9,
                                  weight_decay=1e-3),
                             dict(min_dim_size_to_factor=8, dtype_momentum=jnp.float32)),
    "keras_adafactor": (af.keras_adafactor,
                        dict(learning_rate=0.01, beta_2_decay=-0.8, epsilon_1=1e-30,
                             epsilon_2=1e-3, clip_threshold=1.0, weight_decay=1e-3,
                             ema_momentum=0.9),
                        dict(use_ema=True, ema_overwrite_frequency=3)),
    "keras_adafactor_accumulation": (af.keras_adafactor,
                                     dict(learning_rate=0.01, clipnorm=1.0),
                                     dict(gradient_accumulation_steps=2)),
    "keras_adadelta": (af.keras_adadelta,
                       dict(learning_rate=0.5, rho=0.95, epsilon=1e-7, weight_decay=1e-3,
                            loss_scale_factor=4.0), {}),
    "torch_adafactor": (af.torch_adafactor, dict(lr=0.01, beta2_decay=-0.8, d=1.0,
                                                 weight_decay=0.0), {}),
    "hf_adafactor": (af.hf_adafactor, dict(lr=0.01, clip_threshold=1.0, decay_rate=-0.8,
                                           beta1=0.9, weight_decay=1e-3),
                     dict(relative_step=False)),
}


# The options of the state-type contract (tests/test_contract.py, tests/state_types_check.py):
# every preset above, and the options they do not cover (accumulation, skipping, stats dtypes,
# masked weight decay, schedules).
OPTIONS = {
    **PRESETS,
    "adafactor_masked_decay_param_dtype_stats": lambda lr: af.adafactor(
        lr, min_dim_size_to_factor=8, weight_decay_rate=1e-3,
        weight_decay_mask=af.mask_by_path(exclude="^b$"), stats_dtype=None),
    "adafactor_bf16_stats_skip_nonfinite": lambda lr: af.adafactor(
        lr, min_dim_size_to_factor=8, momentum=0.9, stats_dtype=jnp.bfloat16,
        skip_nonfinite=True),
    "adafactor_schedules": lambda lr: af.adafactor(
        lambda t: lr / (1.0 + t), min_dim_size_to_factor=8, weight_decay_rate=lambda t: 1e-4,
        momentum=0.5),
    "adadelta_masked_decay_bf16_stats": lambda lr: af.adadelta(
        lr, weight_decay=1e-3, weight_decay_mask=af.mask_by_path(include="w"),
        stats_dtype=jnp.bfloat16),
    "keras_adafactor_accumulation": lambda lr: af.keras_adafactor(
        lr, gradient_accumulation_steps=2, use_ema=True, weight_decay=1e-3, clipvalue=0.5),
    "keras_adadelta_accumulation": lambda lr: af.keras_adadelta(
        lr, gradient_accumulation_steps=3, global_clipnorm=1.0, skip_nonfinite=True),
    "torch_adafactor_schedule": lambda lr: af.torch_adafactor(lambda t: lr, weight_decay=0.01),
}
