"""The PAC objective: known-answer projection, BC equivalence, policy improvement, eta dual, overfitting."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from pac.config import ConfigError, ObjectiveConfig
from pac.data.synthetic import synthetic_transitions
from pac.inputs import Transition
from pac.networks import PerceiverActorCritic, action_to_bins, build_model, value_support
from pac.objective import (
    Temperature,
    categorical_projection,
    eta_dual_loss,
    improvement_weights,
    pac_loss,
    update_target,
)
from pac.presets import model_config

SUPPORT = torch.linspace(0.0, 4.0, 5)


def one_hot(i: int, n: int = 5) -> torch.Tensor:
    return F.one_hot(torch.tensor([i]), n).float()


@pytest.mark.parametrize("reward,discount,atom,expected", [
    (0.0, 1.0, 2, [0, 0, 1, 0, 0]),            # identity
    (0.5, 1.0, 1, [0, 0.5, 0.5, 0, 0]),        # 1.5 splits between atoms 1 and 2
    (1.0, 0.5, 4, [0, 0, 0, 1, 0]),            # 1 + 0.5 * 4 = 3 lands on atom 3
    (2.25, 0.0, 4, [0, 0, 0.75, 0.25, 0]),     # terminal: only the reward, split 0.75/0.25
    (10.0, 1.0, 0, [0, 0, 0, 0, 1]),           # clipped at the top edge
    (-3.0, 1.0, 1, [1, 0, 0, 0, 0]),           # clipped at the bottom edge
])
def test_categorical_projection_known_answers(reward, discount, atom, expected) -> None:
    out = categorical_projection(torch.tensor([reward]), torch.tensor([discount]), one_hot(atom), SUPPORT)
    torch.testing.assert_close(out, torch.tensor([expected], dtype=torch.float32))


def test_categorical_projection_preserves_mass() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(64, 5, generator=g), -1)
    out = categorical_projection(torch.randn(64, generator=g) * 3, torch.rand(64, generator=g), probs, SUPPORT)
    torch.testing.assert_close(out.sum(-1), torch.ones(64))
    assert (out >= 0).all()


def test_bc_setting_is_exactly_the_behaviour_cloning_nll() -> None:
    torch.manual_seed(0)
    cfg = model_config("tiny")
    net = build_model(cfg)
    torch.nn.init.normal_(net.policy.head.weight, std=0.1)
    batch = synthetic_transitions(cfg, 8)
    loss, metrics = pac_loss(net, None, Temperature(ObjectiveConfig()), batch,
                             ObjectiveConfig(alpha=1.0, beta=0.0, bc_target="onehot"))
    logits = net.policy_logits(net.encode(batch.obs), batch.action.shape[1])
    idx = action_to_bins(batch.action, cfg.action_bins)
    nll = -(F.log_softmax(logits, -1).gather(-1, idx[..., None])[..., 0] * batch.action_mask).sum(-1).mean()
    torch.testing.assert_close(loss, nll)
    assert set(metrics) == {"bc_nll", "entropy", "loss"}


def test_method_names() -> None:
    assert ObjectiveConfig(alpha=1.0, beta=0.0).method == "BC"
    assert ObjectiveConfig(alpha=1.0, beta=1.0).method == "BC+Q"
    assert ObjectiveConfig(alpha=0.5).method == "PAC"


def test_the_default_soft_filter_applies_to_pac_only() -> None:
    """`bc_filter: auto` (the default) is the soft filter for PAC; BC and BC+Q stay the paper's baselines (and BC
    has no critic to rank with); `none` is the paper's exact objective."""
    assert ObjectiveConfig().bc_filter == "auto"
    assert ObjectiveConfig(alpha=0.75).bc_weighting == "soft"
    assert ObjectiveConfig(alpha=1.0, beta=1.0).bc_weighting == "none"
    assert ObjectiveConfig(alpha=1.0, beta=0.0).bc_weighting == "none"
    assert ObjectiveConfig(alpha=0.75, beta=0.0).bc_weighting == "none"
    assert ObjectiveConfig(alpha=0.75).resolved() == ObjectiveConfig(alpha=0.75, bc_filter="soft")
    assert ObjectiveConfig(alpha=1.0, beta=1.0, bc_filter="advantage").filters_bc
    assert ObjectiveConfig(alpha=1.0, beta=1.0, bc_filter="soft").filters_bc
    assert not ObjectiveConfig(alpha=0.75, bc_filter="none").filters_bc
    with pytest.raises(ConfigError, match="needs objective.beta > 0"):
        ObjectiveConfig(alpha=1.0, beta=0.0, bc_filter="advantage")


class ToyCritic(PerceiverActorCritic):
    """A fixed critic: Q(s, a) = 40 - 30 (a_0 - 0.5)^2, as a sharp categorical over the support."""

    def q_logits(self, latents, actions, action_mask):
        value = 40.0 - 30.0 * (actions[..., 0] - 0.5) ** 2  # (B, K)
        support = value_support(self.cfg)
        return -((support - value[..., None]) ** 2) / 2.0  # (B, K, atoms)


def test_pure_rl_moves_probability_towards_the_highest_q_action() -> None:
    torch.manual_seed(0)
    cfg = model_config("tiny")
    net = ToyCritic(cfg)
    obj = ObjectiveConfig(alpha=0.0, beta=0.0, eta=1.0, learn_eta=False, num_action_samples=32)
    batch = synthetic_transitions(cfg, 16, action_dims=(1,))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    best_bin = int(action_to_bins(torch.tensor(0.5), cfg.action_bins))

    def mass_near_best() -> float:
        with torch.no_grad():
            p = torch.softmax(net.policy_logits(net.encode(batch.obs), 1), -1)[:, 0]  # (B, bins)
        return float(p[:, best_bin - 5 : best_bin + 6].sum(-1).mean())

    before = mass_near_best()
    for _ in range(40):
        loss, _ = pac_loss(net, net, Temperature(obj), batch, obj)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mass_near_best()
    assert before == pytest.approx(11 / cfg.action_bins, abs=1e-3)  # uniform start
    assert after > 0.5, f"mass near the best action only {after:.3f}"


def test_the_soft_filter_lies_between_the_binary_filter_and_bc() -> None:
    """`bc_filter: soft` weights each data action by min(1, exp(A/eta)): the binary filter as eta -> 0, BC as
    eta grows, and in between it keeps at least what the binary filter keeps."""
    torch.manual_seed(0)
    cfg = model_config("tiny")
    net = ToyCritic(cfg)
    batch = synthetic_transitions(cfg, 64, action_dims=(1,))

    def kept(bc_filter: str, eta: float) -> float:
        obj = ObjectiveConfig(alpha=0.75, bc_filter=bc_filter, eta=eta, eta_min=1e-6, learn_eta=False)
        _, metrics = pac_loss(net, net, Temperature(obj), batch, obj, torch.Generator().manual_seed(0))
        return float(metrics["bc_kept"])

    binary = kept("advantage", 1.0)
    assert 0.0 < binary < 1.0  # the toy critic ranks some data actions above the policy's samples, not all
    assert kept("soft", 1e-5) == pytest.approx(binary, abs=1e-6)
    assert binary < kept("soft", 1.0) < kept("soft", 10.0) < 1.0
    assert kept("soft", 1e6) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ConfigError, match="needs objective.beta > 0"):
        ObjectiveConfig(alpha=1.0, beta=0.0, bc_filter="soft")


def test_improvement_weights_prefer_high_q() -> None:
    w = improvement_weights(torch.tensor([[0.0, 1.0, 3.0]]), torch.tensor(1.0))
    assert torch.argmax(w) == 2 and w.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("spread,direction", [(20.0, +1), (0.01, -1)])
def test_eta_dual_moves_eta_in_the_right_direction(spread: float, direction: int) -> None:
    """KL(w || uniform) above epsilon raises eta (flatter weights); below epsilon lowers it."""
    cfg = ObjectiveConfig(eta=1.0, epsilon=0.1)
    temp = Temperature(cfg)
    q = torch.linspace(0, spread, 16)[None].repeat(4, 1)
    before = float(temp().detach())
    opt = torch.optim.SGD(temp.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        eta_dual_loss(q, temp(), cfg.epsilon).backward()
        opt.step()
    assert (float(temp().detach()) - before) * direction > 0


def test_temperature_is_initialised_and_stays_positive() -> None:
    assert float(Temperature(ObjectiveConfig(eta=2.5))().detach()) == pytest.approx(2.5, rel=1e-5)
    t = Temperature(ObjectiveConfig(eta=1.0))
    with torch.no_grad():
        t.raw.fill_(-100.0)
    assert float(t().detach()) >= ObjectiveConfig().eta_min
    assert not Temperature(ObjectiveConfig(learn_eta=False)).raw.requires_grad


def test_eta_lr_scale_speeds_up_the_dual_under_adam() -> None:
    """Adam moves `raw` by ~lr per step whatever the gradient's size; the scale multiplies eta's step size."""
    q = torch.linspace(0, 0.05, 16)[None].repeat(4, 1)  # nearly flat Q: the dual wants a much smaller eta

    def eta_after(scale: float, steps: int = 50) -> float:
        cfg = ObjectiveConfig(eta=1.0, epsilon=0.1, eta_lr_scale=scale)
        temp = Temperature(cfg)
        assert float(temp().detach()) == pytest.approx(1.0, rel=1e-5)  # same start whatever the scale
        opt = torch.optim.Adam(temp.parameters(), lr=1e-3)
        for _ in range(steps):
            opt.zero_grad()
            (eta_dual_loss(q, temp(), cfg.epsilon) / scale).backward()
            opt.step()
        return float(temp().detach())

    slow, fast = eta_after(1.0), eta_after(10.0)
    assert fast < slow < 1.0
    assert (1.0 - fast) > 5 * (1.0 - slow)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (1.0, 1.0), (0.5, 1.0)], ids=["BC", "BC+Q", "PAC"])
def test_tiny_preset_overfits_a_tiny_batch(alpha: float, beta: float) -> None:
    torch.manual_seed(0)
    cfg = model_config("tiny")
    net = build_model(cfg)
    target = copy.deepcopy(net)
    # one-hot targets: the BC term is then the data's NLL, whose floor is 0 (a smoothed target's cross-entropy
    # cannot fall below the target's own entropy)
    obj = ObjectiveConfig(alpha=alpha, beta=beta, num_action_samples=8, polyak_tau=0.05, bc_target="onehot")
    temp = Temperature(obj)
    batch = synthetic_transitions(cfg, 16, discount=0.0)  # terminal: fixed critic targets to fit
    opt = torch.optim.Adam([*net.parameters(), *temp.parameters()], lr=1e-3)
    history = []
    for step in range(150):
        loss, m = pac_loss(net, target, temp, batch, obj)
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_target(net.parameters(), target.parameters(), step, obj)
        history.append({k: float(v) for k, v in m.items()})
    first, last = history[0], history[-1]
    assert last["bc_nll"] < 0.5 * first["bc_nll"], (first, last)
    if beta > 0:
        assert last["q_loss"] < 0.5 * first["q_loss"], (first, last)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)


def test_update_target_polyak_and_periodic() -> None:
    online, target = [torch.ones(3)], [torch.zeros(3)]
    update_target(online, target, 1, ObjectiveConfig(target_update="polyak", polyak_tau=0.25))
    torch.testing.assert_close(target[0], torch.full((3,), 0.25))
    cfg = ObjectiveConfig(target_update="periodic", target_period=10)
    update_target(online, target, 7, cfg)
    torch.testing.assert_close(target[0], torch.full((3,), 0.25))
    update_target(online, target, 10, cfg)
    torch.testing.assert_close(target[0], torch.ones(3))


def test_pac_without_target_network_is_refused() -> None:
    cfg = model_config("tiny")
    with pytest.raises(ValueError, match="needs a target network"):
        pac_loss(build_model(cfg), None, Temperature(ObjectiveConfig()), synthetic_transitions(cfg, 2),
                 dataclasses.replace(ObjectiveConfig(), alpha=0.5))


def bandit_batch(step: int, good_frac: float, size: int = 64) -> Transition:
    """One-step episodes in random states: action +0.5 pays 10, the data's more frequent -0.5 pays 0."""
    base = synthetic_transitions(model_config("tiny"), size, proprio_dims=(4,), action_dims=(1,), seed=step)
    good = torch.rand(size, generator=torch.Generator().manual_seed(10_000 + step)) < good_frac
    action = torch.where(good, 0.5, -0.5)[:, None]
    return Transition(base.obs, action, base.action_mask, good.float() * 10.0, torch.zeros(size), base.next_obs)


def mass_on_the_paying_action(alpha: float, beta: float, bc_filter: str = "auto", good_frac: float = 0.3,
                              steps: int = 300) -> float:
    """Train the full objective (critic, target network, eta dual) on the bandit; the policy's mean mass on a > 0."""
    torch.manual_seed(0)
    cfg = model_config("tiny")
    net = build_model(cfg)
    target = copy.deepcopy(net)
    obj = dataclasses.replace(ObjectiveConfig(), alpha=alpha, beta=beta, bc_filter=bc_filter)
    temp = Temperature(obj)
    opt = torch.optim.Adam([*net.parameters(), *temp.parameters()], lr=1e-3)
    for step in range(steps):
        loss, _ = pac_loss(net, target, temp, bandit_batch(step, good_frac), obj)
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_target(net.parameters(), target.parameters(), step, obj)
    held_out = bandit_batch(10**6, good_frac, 256)
    with torch.no_grad():
        probs = torch.softmax(net.policy_logits(net.encode(held_out.obs), 1), -1)[:, 0]
    return float(probs[:, cfg.action_bins // 2 + 1:].sum(-1).mean())


def test_pac_moves_mass_to_the_action_its_critic_prefers_only_as_far_as_alpha_allows() -> None:
    """The paper's objective has the fixed point pi = alpha * b + (1 - alpha) * pi_imp (docs/quality.md, "ceiling");
    the default soft filter lifts that cap.

    The data takes the paying action 30% of the time. BC+Q copies that; the paper's PAC at alpha 0.25 makes the
    paying action the mode (its fixed point under the KL bound: 0.78); at alpha 0.75 its BC term caps it below the
    data's mode (0.37), whatever the critic knows. The default (soft filter) imitates the unpaying data actions
    less, so at the same alpha the paying action becomes the mode.
    """
    bcq, paper, paper_rl = (mass_on_the_paying_action(alpha, 1.0, "none") for alpha in (1.0, 0.75, 0.25))
    assert bcq == pytest.approx(0.3, abs=0.06)
    assert bcq + 0.04 < paper < 0.5
    assert paper_rl > 0.6
    assert mass_on_the_paying_action(0.75, 1.0) > 0.5
