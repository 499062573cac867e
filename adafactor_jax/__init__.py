"""adafactor_jax: composable, exact, memory-lean Adafactor (and Adadelta) for JAX and optax."""

from adafactor_jax._src.accumulation import AccumulateGradientsState
from adafactor_jax._src.accumulation import accumulate_gradients
from adafactor_jax._src.adadelta import ScaleByAdadeltaState
from adafactor_jax._src.adadelta import scale_by_adadelta
from adafactor_jax._src.clipping import clip_by_block_rms
from adafactor_jax._src.clipping import clip_by_global_norm
from adafactor_jax._src.clipping import clip_by_global_norm_nan_on_nonfinite
from adafactor_jax._src.clipping import clip_by_leaf_norm
from adafactor_jax._src.clipping import clip_by_value
from adafactor_jax._src.config import from_config
from adafactor_jax._src.config import get_config
from adafactor_jax._src.ema import EmaParamsState
from adafactor_jax._src.ema import ema_params
from adafactor_jax._src.ema import finalize_variable_values
from adafactor_jax._src.engine import chain
from adafactor_jax._src.factored import ScaleByFactoredRMSState
from adafactor_jax._src.factored import decay_rate_pow
from adafactor_jax._src.factored import scale_by_factored_rms
from adafactor_jax._src.factoring import FactorRules
from adafactor_jax._src.loss_scaling import StaticLossScaleState
from adafactor_jax._src.loss_scaling import scale_loss
from adafactor_jax._src.loss_scaling import static_loss_scale
from adafactor_jax._src.masks import mask_by_path
from adafactor_jax._src.persistence import load_state
from adafactor_jax._src.persistence import save_state
from adafactor_jax._src.presets.big_vision import big_vision_adafactor
from adafactor_jax._src.presets.hf import hf_adafactor
from adafactor_jax._src.presets.keras import keras_adadelta
from adafactor_jax._src.presets.keras import keras_adafactor
from adafactor_jax._src.presets.optax import adadelta
from adafactor_jax._src.presets.optax import adafactor
from adafactor_jax._src.presets.torch import torch_adafactor
from adafactor_jax._src.reliability import SkipNonFiniteState
from adafactor_jax._src.reliability import skip_nonfinite
from adafactor_jax._src.reliability import skipped_steps
from adafactor_jax._src.scaling import ScaleByMomentumState
from adafactor_jax._src.scaling import ScaleByScheduleState
from adafactor_jax._src.scaling import relative_step_size
from adafactor_jax._src.scaling import scale_by_learning_rate
from adafactor_jax._src.scaling import scale_by_momentum
from adafactor_jax._src.scaling import scale_by_param_block_rms
from adafactor_jax._src.sharding import state_shardings
from adafactor_jax._src.weight_decay import AddDecayedWeightsState
from adafactor_jax._src.weight_decay import DecoupledWeightDecayState
from adafactor_jax._src.weight_decay import add_decayed_weights
from adafactor_jax._src.weight_decay import with_decoupled_weight_decay

__version__ = "0.1.0"

__all__ = (
    "AccumulateGradientsState",
    "AddDecayedWeightsState",
    "DecoupledWeightDecayState",
    "EmaParamsState",
    "FactorRules",
    "ScaleByAdadeltaState",
    "ScaleByFactoredRMSState",
    "ScaleByMomentumState",
    "ScaleByScheduleState",
    "SkipNonFiniteState",
    "StaticLossScaleState",
    "accumulate_gradients",
    "adadelta",
    "adafactor",
    "add_decayed_weights",
    "big_vision_adafactor",
    "chain",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "clip_by_global_norm_nan_on_nonfinite",
    "clip_by_leaf_norm",
    "clip_by_value",
    "decay_rate_pow",
    "ema_params",
    "finalize_variable_values",
    "from_config",
    "get_config",
    "hf_adafactor",
    "keras_adadelta",
    "keras_adafactor",
    "load_state",
    "mask_by_path",
    "relative_step_size",
    "save_state",
    "scale_by_adadelta",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_momentum",
    "scale_by_param_block_rms",
    "scale_loss",
    "skip_nonfinite",
    "skipped_steps",
    "state_shardings",
    "static_loss_scale",
    "torch_adafactor",
    "with_decoupled_weight_decay",
)
