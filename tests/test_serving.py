"""The servable policy's input contract (`pac.serving`); serving a logged model end to end is in test_tracking.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pac.serving import PolicyInput


def test_policy_input_validation() -> None:
    with pytest.raises(ValueError, match="action_dims or action_low"):
        PolicyInput(proprio=[1.0])
    with pytest.raises(ValueError, match="both action_low and action_high"):
        PolicyInput(proprio=[1.0], action_low=[0.0])
    with pytest.raises(ValueError, match="disagrees"):
        PolicyInput(proprio=[1.0], action_dims=3, action_low=[0.0], action_high=[1.0])
    with pytest.raises(ValueError, match="at least one value"):
        PolicyInput(proprio=[], action_dims=1)
    assert PolicyInput(proprio=[1.0], action_low=[0.0, 0.0], action_high=[1.0, 1.0]).num_action_dims == 2


def test_models_logged_before_the_serving_module_still_find_their_policy() -> None:
    # Their entry point (written into the model directory at logging time) says `from pac.tracking import PacPolicy`.
    old_entry_point = ("from pac.tracking import PacPolicy; import pac.serving; "
                       "assert PacPolicy is pac.serving.PacPolicy")
    subprocess.run([sys.executable, "-c", old_entry_point], check=True)
