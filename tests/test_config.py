"""adafactor_jax._src.config: presets remember their arguments; get_config / from_config."""

import json

import jax.numpy as jnp
import pytest

import adafactor_jax as af

pytestmark = pytest.mark.unit


def test_round_trip_through_json_with_masks_dtypes_and_tuples():
  tx = af.adafactor(0.1, weight_decay_rate=1e-3, dtype_momentum=jnp.bfloat16, momentum=0.9,
                    weight_decay_mask=af.mask_by_path(include=["kernel"], exclude="bias"),
                    factor_rule={"t3": ("batch", "row", "col")})
  config = json.loads(json.dumps(af.get_config(tx)))
  again = af.from_config(config)
  assert again.preset_name == "adafactor"
  args = again.preset_args
  assert args["dtype_momentum"] == jnp.bfloat16
  assert repr(args["weight_decay_mask"]) == "mask_by_path(include=['kernel'], exclude='bias')"
  assert args["factor_rule"] == {"t3": ("batch", "row", "col")}
  assert af.get_config(again) == af.get_config(tx)


@pytest.mark.parametrize("make", [af.keras_adafactor, af.torch_adafactor, af.hf_adafactor,
                                  af.big_vision_adafactor, af.adadelta, af.keras_adadelta])
def test_every_preset_records_its_name_and_defaults(make):
  config = af.get_config(make(0.01) if make is not af.hf_adafactor else make())
  assert config["name"] == make.__name__
  assert config["config"]["skip_nonfinite"] is False


def test_a_schedule_cannot_be_serialised():
  with pytest.raises(ValueError, match="is a callable"):
    af.get_config(af.adafactor(lambda t: 0.1))
