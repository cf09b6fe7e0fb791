"""Action choice shared by rollouts, collection and the served model (`pac.networks.acting`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from pac.inputs import Observation
from pac.networks import build_model, decode_greedy
from pac.networks.acting import choose_actions
from pac.presets import model_config


def _net_and_latents(decode: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = build_model(dataclasses.replace(model_config("tiny"), action_decode=decode)).eval()
    obs = Observation.from_numpy([np.zeros(5, np.float32), np.ones(5, np.float32)], ["a", "b"], 48)
    with torch.no_grad():
        return net, net.encode(obs)


@pytest.mark.parametrize("decode", ["argmax", "mean"])
def test_greedy_is_the_models_decoding_rule(decode: str) -> None:
    net, z = _net_and_latents(decode)
    with torch.no_grad():
        got = choose_actions(net, z, 2, greedy=True, temperature=1.0, q_select_samples=0, rngs=[])
        want = decode_greedy(net.policy_logits(z, 2), net.cfg.action_bins, decode)
    torch.testing.assert_close(got, want)


def test_a_critic_that_prefers_the_greedy_action_keeps_the_decoded_action_itself() -> None:
    """With mean decoding the greedy action lies between bin centres; it competes as it is, not snapped to a bin."""
    net, z = _net_and_latents("mean")
    atoms = net.cfg.value_atoms

    def q_logits(latents: torch.Tensor, candidates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*candidates.shape[:2], atoms)
        logits[:, 0, -1] = 50.0  # the first candidate (the greedy action) is worth the most
        return logits

    net.q_logits = q_logits  # type: ignore[method-assign]
    rngs = [np.random.default_rng(s) for s in (1, 2)]
    with torch.no_grad():
        got = choose_actions(net, z, 2, greedy=True, temperature=1.0, q_select_samples=8, rngs=rngs)
        greedy = choose_actions(net, z, 2, greedy=True, temperature=1.0, q_select_samples=0, rngs=[])
    torch.testing.assert_close(got, greedy)


def test_sampled_choices_depend_on_each_rows_own_generator() -> None:
    net, z = _net_and_latents("argmax")
    with torch.no_grad():
        a = choose_actions(net, z, 2, greedy=False, temperature=1.0, q_select_samples=0,
                           rngs=[np.random.default_rng(7), np.random.default_rng(8)])
        b = choose_actions(net, z[1:], 2, greedy=False, temperature=1.0, q_select_samples=0,
                           rngs=[np.random.default_rng(8)])
    torch.testing.assert_close(a[1:], b)
