"""EncoderConfig on hand-computed cases: JSON and dict round trips, frozen, validated again."""

import dataclasses
import json

import pytest

from shared import EncoderConfig


def test_config_round_trips_through_json_and_dict():
    cfg = EncoderConfig(
        vocab_size=7,
        d_model=12,
        n_heads=3,
        activation="relu",
        positional="learned",
        type_vocab_size=2,
        embed_norm=True,
        norm_first=True,
        final_norm=True,
    )
    assert EncoderConfig.from_json(cfg.to_json()) == cfg
    assert EncoderConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert cfg.head_dim == 4


def test_config_is_frozen_and_replace_validates_again():
    cfg = EncoderConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 8  # type: ignore[misc]
    assert cfg.replace(n_layers=3).n_layers == 3
    with pytest.raises(ValueError, match="d_model=30 is not divisible by n_heads=4"):
        cfg.replace(d_model=30)
