"""Every named size preset has the parameter count it claims (counted on the meta device)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from pac.cli import main
from pac.config import ConfigError
from pac.networks import count_parameters
from pac.presets import PRESETS, model_config

EXPECTED = {  # preset -> parameters, asserted to 0.5%
    "tiny": 366_282, "tiny-wide": 1_497_930, "small-cpu": 2_122_474,
    "XS": 37_694_666, "S": 98_463_946, "M": 224_956_618, "L": 504_944_842, "XL": 1_098_301_642,
}
LADDER = ["XS", "S", "M", "L", "XL"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_count(name: str) -> None:
    assert count_parameters(model_config(name)) == pytest.approx(EXPECTED[name], rel=5e-3)


def test_cpu_presets_are_small_and_the_ladder_spans_30m_to_1b() -> None:
    assert set(EXPECTED) == set(PRESETS)
    for name in ("tiny", "tiny-wide", "small-cpu"):
        assert EXPECTED[name] <= 2_500_000
    counts = [EXPECTED[n] for n in LADDER]
    assert 25e6 <= counts[0] <= 40e6 and 0.9e9 <= counts[-1] <= 1.1e9
    steps = [math.log(b / a) for a, b in itertools.pairwise(counts)]
    assert all(0.5 < s < 1.3 for s in steps), f"ladder not roughly log-spaced: {steps}"


def test_unknown_preset_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*tiny"):
        model_config("huge")


def test_pac_presets_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["parameters"] for r in rows} == pytest.approx(EXPECTED, rel=5e-3)
