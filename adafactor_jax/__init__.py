"""adafactor_jax: composable, exact, memory-lean Adafactor (and Adadelta) for JAX and optax."""

from adafactor_jax._src.adadelta import ScaleByAdadeltaState
from adafactor_jax._src.adadelta import scale_by_adadelta
from adafactor_jax._src.blocks import AddDecayedWeightsState
from adafactor_jax._src.blocks import ScaleByMomentumState
from adafactor_jax._src.blocks import ScaleByScheduleState
from adafactor_jax._src.blocks import add_decayed_weights
from adafactor_jax._src.blocks import clip_by_block_rms
from adafactor_jax._src.blocks import mask_by_path
from adafactor_jax._src.blocks import scale_by_learning_rate
from adafactor_jax._src.blocks import scale_by_momentum
from adafactor_jax._src.blocks import scale_by_param_block_rms
from adafactor_jax._src.config import from_config
from adafactor_jax._src.config import get_config
from adafactor_jax._src.factored import ScaleByFactoredRMSState
from adafactor_jax._src.factored import decay_rate_pow
from adafactor_jax._src.factored import scale_by_factored_rms
from adafactor_jax._src.factoring import FactorRules
from adafactor_jax._src.presets.optax import adadelta
from adafactor_jax._src.presets.optax import adafactor

__version__ = "0.1.0"

__all__ = (
    "AddDecayedWeightsState",
    "FactorRules",
    "ScaleByAdadeltaState",
    "ScaleByFactoredRMSState",
    "ScaleByMomentumState",
    "ScaleByScheduleState",
    "adadelta",
    "adafactor",
    "add_decayed_weights",
    "clip_by_block_rms",
    "decay_rate_pow",
    "from_config",
    "get_config",
    "mask_by_path",
    "scale_by_adadelta",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_momentum",
    "scale_by_param_block_rms",
)
