"""Action targets and greedy decoding over the per-dimension action bins (issue 26, item 3)."""

from __future__ import annotations

import pytest
import torch
from pac.networks import action_targets, action_to_bins, bins_to_action, cross_entropy, decode_greedy

BINS = 11  # centres -1.0, -0.8, ..., 1.0


@pytest.mark.parametrize("kind", ["onehot", "twohot", "hlgauss"])
def test_targets_are_distributions_centred_on_the_action(kind: str) -> None:
    actions = torch.tensor([-1.0, -0.45, 0.0, 0.33, 1.0])
    t = action_targets(actions, BINS, kind)
    assert t.shape == (5, BINS)
    torch.testing.assert_close(t.sum(-1), torch.ones(5))
    assert (t >= 0).all()
    mean = (t * bins_to_action(torch.arange(BINS), BINS)).sum(-1)
    if kind == "twohot":  # exact: the mass is split so that the mean is the value
        torch.testing.assert_close(mean, actions)
    else:  # within a bin of the value; hlgauss's tails at the bounds fold inward
        assert (mean - actions).abs().max() <= 0.1 + 1e-6


def test_twohot_splits_by_closeness_and_hlgauss_spreads_to_neighbours() -> None:
    t = action_targets(torch.tensor([-0.45]), BINS, "twohot")[0]  # between -0.6 (bin 2) and -0.4 (bin 3)
    assert t[2].item() == pytest.approx(0.25) and t[3].item() == pytest.approx(0.75)
    g = action_targets(torch.tensor([0.0]), BINS, "hlgauss", sigma=0.75)[0]
    assert g.argmax().item() == 5 and g[4].item() == g[6].item() > 0.2


def test_cross_entropy_ignores_dimensions_the_embodiment_lacks() -> None:
    logits = torch.zeros(2, 3, BINS)  # uniform: every dimension costs log(BINS)
    targets = action_targets(torch.zeros(2, 3), BINS, "hlgauss")
    mask = torch.tensor([[True, True, False], [True, False, False]])
    c = torch.log(torch.tensor(float(BINS)))
    torch.testing.assert_close(cross_entropy(logits, targets, mask), torch.stack([2 * c, c]))


def test_greedy_rules_decode_a_two_bin_distribution_differently() -> None:
    logits = torch.full((1, 1, BINS), -30.0)
    logits[0, 0, 6], logits[0, 0, 7] = 0.0, -0.5  # mass on 0.2 (62%) and 0.4 (38%)
    argmax = decode_greedy(logits, BINS, "argmax").item()
    mean = decode_greedy(logits, BINS, "mean").item()
    top = decode_greedy(logits, BINS, "topk", k=3).item()
    assert argmax == pytest.approx(0.2)
    assert 0.2 < mean < 0.4 and top == pytest.approx(mean, abs=1e-5)
    logits[0, 0, 0] = -0.2  # a far second mode at -1: the mean is dragged, the neighbourhood of the mode is not
    assert decode_greedy(logits, BINS, "mean").item() < 0.0
    assert decode_greedy(logits, BINS, "topk", k=3).item() == pytest.approx(top, abs=1e-5)
    with pytest.raises(ValueError, match="unknown decoding rule 'median'"):
        decode_greedy(logits, BINS, "median")


@pytest.mark.parametrize("mu", [0.0, 20.0, 255.0])
def test_bins_round_trip_and_keep_the_bounds_and_zero(mu: float) -> None:
    index = torch.arange(101)
    centres = bins_to_action(index, 101, mu)
    assert torch.equal(action_to_bins(centres, 101, mu), index)
    assert centres[0] == -1 and centres[-1] == 1 and centres[50] == 0  # saturated and resting actions are exact
    assert torch.all(centres[1:] > centres[:-1])


def test_mu_law_bins_resolve_small_actions_a_uniform_bin_cannot() -> None:
    small = torch.tensor([0.003, -0.007, 0.012])  # a balancing expert's typical actions (docs/learner.md)
    uniform = bins_to_action(action_to_bins(small, 101), 101)
    warped = bins_to_action(action_to_bins(small, 101, 20.0), 101, 20.0)
    assert (uniform - small).abs().max() > 0.005  # 0.02-wide bins: 0.003 -> 0, 0.012 -> 0.02
    assert (warped - small).abs().max() < 0.002
    width = bins_to_action(torch.tensor([51]), 101, 20.0) - bins_to_action(torch.tensor([50]), 101, 20.0)
    assert width < 0.02 / 5


@pytest.mark.parametrize("kind", ["twohot", "hlgauss"])
def test_smoothed_targets_decode_back_to_the_action_on_warped_bins(kind: str) -> None:
    actions = torch.tensor([-0.5, -0.004, 0.0, 0.03, 0.9])
    targets = action_targets(actions, 101, kind, 0.75, mu=20.0)
    decoded = decode_greedy(torch.log(targets.clamp_min(1e-12)), 101, "mean", mu=20.0)
    # the mean of the centres under a distribution centred (in warped units) on the action: close, not exact
    assert torch.allclose(decoded, actions, atol=0.01 if kind == "hlgauss" else 0.03)
