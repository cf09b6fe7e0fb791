"""The KL-regularised offline actor-critic objective of PAC (Springenberg et al., 2024).

Equation numbers refer to `shared/PAC.md` ("Objective"):

    L(theta) = -E_D[ (1-alpha) E_{a'~pi_theta'}[ w(a', s_t) log pi_theta(a'|s_t) ]      (improvement)
                     + alpha log pi_theta(a_t|s_t)                                      (BC)
                     + beta E_{q~Gamma_theta'} log p_theta(q|s_t, a_t) ]                (critic)
    w(a', s) = exp(Q_theta(s, a')/eta) / E_{a'~pi_theta'}[ exp(Q_theta(s, a')/eta) ]

alpha=1, beta=0 is BC; alpha=1, beta>0 is BC+Q; alpha<1 is PAC: one code path for all three.
The temperature eta is learned through the MPO dual g(eta) = eta*epsilon + eta*E_s log E_a' exp(Q/eta)
(PAC.md, "Ours"), or fixed. Pure torch: no I/O, no distributed code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pac.config import ModelConfig, ObjectiveConfig
from pac.inputs import Observation, Transition
from pac.networks import (
    PerceiverActorCritic,
    action_targets,
    cross_entropy,
    entropy,
    expected_value,
    log_prob,
    sample_actions,
)
from pac.networks import value_support as make_support


class Temperature(nn.Module):
    """eta > eta_min, parameterised through softplus so gradient steps cannot make it non-positive.

    eta = softplus(eta_lr_scale * raw) + eta_min: Adam moves `raw` by about the learning rate per step
    whatever the gradient's size, so the scale multiplies the dual's step size (MPO learns its dual
    variables ~100x faster than the policy). `pac_loss` divides the dual loss by the same scale, which
    keeps raw's gradient, hence the global gradient norm that clipping sees, as without it.
    """

    def __init__(self, cfg: ObjectiveConfig) -> None:
        super().__init__()
        self.eta_min = cfg.eta_min
        self.scale = cfg.eta_lr_scale
        init = cfg.eta - cfg.eta_min
        # softplus^-1(init), stable for large init
        raw = init + math.log(-math.expm1(-init)) if init > 0 else -20.0
        # Shape (1,), not a scalar: DeepSpeed's broadcast views parameters as bytes, which 0-d tensors refuse.
        self.raw = nn.Parameter(torch.tensor([raw / self.scale], dtype=torch.float32), requires_grad=cfg.learn_eta)

    def forward(self) -> torch.Tensor:
        return (F.softplus(self.raw.float() * self.scale) + self.eta_min).squeeze(0)


class PACLearner(nn.Module):
    """The trainable parameters of the objective: the network theta and the temperature eta.

    Its `forward` is the loss, so a training engine calls one root module per micro-batch (ZeRO-3
    gathers parameters through module hooks; the loss must run inside the root module's forward).
    """

    def __init__(self, model_cfg: ModelConfig, cfg: ObjectiveConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = PerceiverActorCritic(model_cfg)
        self.temperature = Temperature(cfg)

    def forward(self, batch: Transition, target: PerceiverActorCritic | None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return pac_loss(self.net, target, self.temperature, batch, self.cfg, generator)


def categorical_projection(reward: torch.Tensor, discount: torch.Tensor, next_probs: torch.Tensor,
                           support: torch.Tensor) -> torch.Tensor:
    """Project the n-step target distribution R + gamma^n * Z' onto the fixed support (C51 projection).

    Args:
        reward: (B,) n-step discounted returns.
        discount: (B,) bootstrap discounts (0 after a terminal).
        next_probs: (B, atoms) probabilities of the bootstrapped value distribution.
        support: (atoms,) increasing, evenly spaced atoms.

    Returns:
        (B, atoms) target probabilities; mass beyond the edges is clipped onto the edge atoms.
    """
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (support.numel() - 1)
    tz = (reward[:, None] + discount[:, None] * support[None]).clamp(v_min, v_max)  # (B, atoms)
    pos = (tz - v_min) / delta
    lower = pos.floor().clamp(0, support.numel() - 1)
    upper = (lower + 1).clamp(max=support.numel() - 1)
    w_upper = pos - lower  # 0 when tz sits on an atom (all mass to `lower`)
    out = torch.zeros_like(next_probs)
    out.scatter_add_(1, lower.long(), next_probs * (1 - w_upper))
    out.scatter_add_(1, upper.long(), next_probs * w_upper)
    return out


def improvement_weights(q: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """w(a', s) = softmax over the sampled actions of Q/eta: (B, K) -> (B, K)."""
    return F.softmax(q / eta, dim=1)


def eta_dual_loss(q: torch.Tensor, eta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """MPO dual g(eta) = eta*epsilon + eta * mean_s log mean_a' exp(Q(s,a')/eta); Q is treated as constant.

    Q is centred per state first: a per-state shift changes g by a constant, not its gradient in eta,
    and keeps the exponent (and the logged loss) small.
    """
    k = q.shape[1]
    q = q.detach()
    q = q - q.max(dim=1, keepdim=True).values
    return eta * epsilon + eta * (torch.logsumexp(q / eta, dim=1) - math.log(k)).mean()


def pac_loss(net: PerceiverActorCritic, target: PerceiverActorCritic | None, temperature: Temperature,
             batch: Transition, cfg: ObjectiveConfig,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PAC loss on a batch of n-step transitions.

    Args:
        net: the online network theta.
        target: the target network theta' (unused, may be None, for pure BC).
        temperature: eta.
        batch: transitions with normalised actions.
        cfg: alpha, beta, epsilon, number of sampled actions, uniform mix.
        generator: RNG for the action samples (None: torch's global RNG).

    Returns:
        (loss, metrics) where metrics are detached scalars.
    """
    mcfg = net.cfg
    a_dims = batch.action.shape[1]
    mask = batch.action_mask
    z = net.encode(batch.obs)  # (B, N, D)
    logits = net.policy_logits(z, a_dims)  # (B, A, bins)
    targets = action_targets(batch.action, mcfg.action_bins, cfg.bc_target, cfg.bc_target_sigma,
                             mcfg.action_bin_mu)  # (B, A, bins)
    nll = cross_entropy(logits, targets, mask)  # (B,)
    metrics: dict[str, torch.Tensor] = {"bc_nll": nll.mean().detach(),
                                        "entropy": entropy(logits, mask).mean().detach()}
    improve = cfg.alpha < 1.0
    if not improve and cfg.beta == 0.0:
        loss = cfg.alpha * nll.mean()
        metrics["loss"] = loss.detach()
        return loss, metrics
    if target is None:
        raise ValueError(f"{cfg.method} needs a target network (alpha={cfg.alpha}, beta={cfg.beta})")

    sample_now = improve or cfg.filters_bc  # both score the policy's own actions at s_t
    support = make_support(mcfg, z.device)
    k = cfg.num_action_samples
    with torch.no_grad():
        if sample_now:  # the target encodes s_t and s_{t+n} in one pass: each layer runs once over 2B rows
            z_now_target, z_next = target.encode(Observation.cat([batch.obs, batch.next_obs])).chunk(2)
        else:
            z_next = target.encode(batch.next_obs)
        # Bootstrapped target distribution Gamma_theta'(q | s_t, a_t): next actions from the target policy,
        # the mixture of their target value distributions, projected through R + gamma^n z.
        _, next_actions = sample_actions(target.policy_logits(z_next, a_dims), k, uniform_mix=cfg.uniform_mix,
                                         generator=generator, mu=mcfg.action_bin_mu)
        next_probs = F.softmax(target.q_logits(z_next, next_actions, mask).float(), -1).mean(1)  # (B, atoms)
        target_probs = categorical_projection(batch.reward.float(), batch.discount.float(), next_probs, support)

    q_logits = net.q_logits(z, batch.action[:, None], mask)[:, 0].float()  # (B, atoms)
    q_loss = -(target_probs * F.log_softmax(q_logits, -1)).sum(-1).mean()
    q_data = expected_value(q_logits.detach(), support)
    metrics.update(q_loss=q_loss.detach(), q_mean=q_data.mean(), q_std=q_data.std(unbiased=False),
                   target_q_mean=(target_probs * support).sum(-1).mean())

    if sample_now:
        with torch.no_grad():
            # a' ~ pi_theta'(.|s_t), scored by the online critic Q_theta against the same state encoding.
            idx, sampled = sample_actions(target.policy_logits(z_now_target, a_dims), k,
                                          uniform_mix=cfg.uniform_mix, generator=generator,
                                          mu=mcfg.action_bin_mu)
            q_sampled = expected_value(net.q_logits(z.detach(), sampled, mask), support)  # (B, K)
    eta = temperature()
    metrics["eta"] = eta.detach()
    bc_weight = torch.ones_like(nll)
    if cfg.filters_bc:  # imitate the data actions the critic ranks above the policy's value (ObjectiveConfig)
        advantage = q_data - q_sampled.mean(1)
        if cfg.bc_weighting == "soft":
            bc_weight = torch.exp(advantage.clamp(max=0.0) / eta.detach())
        else:
            bc_weight = (advantage > 0).float()
        metrics["bc_kept"] = bc_weight.mean()
    loss = cfg.alpha * (bc_weight * nll).mean() + cfg.beta * q_loss

    if improve:
        with torch.no_grad():
            w = improvement_weights(q_sampled, eta.detach())
        improve_loss = -(w * log_prob(logits, idx, mask)).sum(1).mean()
        loss = loss + (1 - cfg.alpha) * improve_loss
        metrics.update(improve_loss=improve_loss.detach(),
                       kl_weights=(w * torch.log(w * k + 1e-12)).sum(1).mean(),
                       q_sampled_std=q_sampled.std(1, unbiased=False).mean())
        if temperature.raw.requires_grad:
            dual = eta_dual_loss(q_sampled, eta, cfg.epsilon)
            loss = loss + dual / temperature.scale  # see Temperature: a faster dual, same gradient norm
            metrics["eta_loss"] = dual.detach()
    metrics["loss"] = loss.detach()
    return loss, metrics


@torch.no_grad()
def update_target(online: Iterable[torch.Tensor], target: Iterable[torch.Tensor], step: int,
                  cfg: ObjectiveConfig) -> None:
    """Move target parameters towards the online ones: Polyak averaging, or a copy every `target_period` steps.

    Takes tensors rather than modules so a sharded engine can pass its local partitions.
    """
    if cfg.target_update == "polyak":
        for o, t in zip(online, target, strict=True):
            t.lerp_(o.to(t.dtype), cfg.polyak_tau)
    elif step % cfg.target_period == 0:
        for o, t in zip(online, target, strict=True):
            t.copy_(o)
