"""Typed configuration: the single home of every hyper-parameter default.

Everything that behaves is built from these dataclasses. CLI flags are derived from them
(`pac.cli`), YAML presets hold overrides only, and KFP components, helm values and the
generated DeepSpeed config repeat none of these defaults. Each dataclass validates itself in
`__post_init__` and names the offending field in its error message.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# Camera resolution shared by the simulator (what episodes store) and the vision encoder.
IMAGE_SIZE = 64
BEHAVIOUR_QUALITIES = ("random", "noisy", "damped", "expert")  # what `pac.envs.policies` can generate
EPISODE_QUALITIES = (*BEHAVIOUR_QUALITIES, "policy", "unknown")  # + collected by a trained policy, or not known


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what to do."""


def _check(ok: bool, name: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {msg}")


@dataclass
class ProprioStats:
    """One task's state normalisation: the training data's per-dimension mean and standard deviation."""

    mean: list[float]
    std: list[float]

    def __post_init__(self) -> None:
        _check(len(self.mean) == len(self.std), "model.proprio_stats",
               f"mean has {len(self.mean)} dims and std {len(self.std)}")
        _check(all(s >= 0 for s in self.std), "model.proprio_stats", "std must be >= 0")


@dataclass
class ModelConfig:
    """Perceiver-IO actor-critic dimensions (see PAC.md, Figure 2)."""

    d_model: int = 64  # width of input tokens, latents and queries
    num_latents: int = 16  # learnable latent queries z_0
    num_blocks: int = 2  # M self-attention blocks over the latents
    num_heads: int = 4
    mlp_ratio: int = 4
    decoder_layers: int = 1  # cross-attention layers in each decoder
    max_proprio_dims: int = 96  # longest state vector the proprio encoder takes (shorter ones are padded and masked)
    # vector: the whole padded state vector -> MLP -> `proprio_tokens` tokens (as JAT); scalar: one token per
    # scalar (value embedding + learned position). vector learns the arm (BC on mixed data 0.14 where scalar stays
    # at 0.00) and is close on the suite's tasks (0.61 / 0.59 vs 0.63 / 0.66 on three tasks, two seeds); docs/learner.md
    proprio_encoder: Literal["vector", "scalar"] = "vector"
    proprio_tokens: int = 4  # tokens the vector encoder emits
    # sin/cos of each (standardised) state value at periods 8, 4, ..., 8/2^(bands-1); 0: the value only.
    # 0 for the vector encoder (bands cost it the arm, 0.49 -> 0.00, measured before the initialisation fix); 8 is
    # the scalar encoder's best (docs/learner.md)
    proprio_fourier_bands: int = 0
    # task: standardise each task's state with its training data's mean and std (the manifest's statistics, as
    # TD3+BC and IQL do), recorded below when a run starts and kept through finetuning; none: raw values
    proprio_norm: Literal["task", "none"] = "task"
    # symlog: sign(x) log(1 + |x|) before the encoder, made for raw states (velocities reach tens); on standardised
    # states it bends the tails where a closed-loop policy extrapolates. none with the HL-Gauss/mean head below:
    # BC fidelity 0.65 / 0.55 (two seeds) against 0.29 / 0.16 for the former defaults (docs/learner.md)
    proprio_squash: Literal["symlog", "none"] = "none"
    # task -> statistics, filled by the training run (not a setting: the data decides it)
    proprio_stats: dict[str, ProprioStats] = field(default_factory=dict)
    max_action_dims: int = 16  # policy queries; embodiments with fewer dims are masked
    action_bins: int = 101  # per-dimension bins over [-1, 1] (normalised action bounds)
    # 0: bins uniform over [-1, 1] (the paper's); mu > 0: uniform in the mu-law warp of the action, dense around 0
    # (bin width near 0: 2/(bins-1) * ln(1+mu)/mu) and sparse towards the bounds, which stay exact bins
    action_bin_mu: float = 0.0
    # the greedy policy's action per dimension: argmax (the likeliest bin), mean (of the bin distribution) or
    # topk (mean over the `action_decode_k` bins around the likeliest); sampling always uses the categorical.
    # mean: a chattering (bang-bang) or sub-bin expert decodes to a smooth action (docs/learner.md)
    action_decode: Literal["argmax", "mean", "topk"] = "mean"
    action_decode_k: int = 5
    value_atoms: int = 101  # categorical Q support
    value_min: float = 0.0
    value_max: float = 100.0  # rewards in [0, 1] with discount 0.99 bound returns by 100
    image_size: int = IMAGE_SIZE
    image_channels: int = 3
    patch_size: int = 8
    max_text_tokens: int = 48  # byte-level tokens of the task instruction

    def __post_init__(self) -> None:
        for name in ("d_model", "num_latents", "num_blocks", "num_heads", "mlp_ratio", "decoder_layers",
                     "max_proprio_dims", "proprio_tokens", "max_action_dims", "image_channels", "patch_size",
                     "max_text_tokens"):
            _check(getattr(self, name) >= 1, f"model.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.d_model % self.num_heads == 0, "model.d_model",
               f"{self.d_model} is not divisible by model.num_heads={self.num_heads}")
        _check(self.proprio_encoder in ("vector", "scalar"), "model.proprio_encoder",
               f"must be 'vector' or 'scalar', got {self.proprio_encoder!r}")
        _check(self.proprio_norm in ("task", "none"), "model.proprio_norm",
               f"must be 'task' or 'none', got {self.proprio_norm!r}")
        _check(self.proprio_squash in ("symlog", "none"), "model.proprio_squash",
               f"must be 'symlog' or 'none', got {self.proprio_squash!r}")
        _check(self.action_decode in ("argmax", "mean", "topk"), "model.action_decode",
               f"must be 'argmax', 'mean' or 'topk', got {self.action_decode!r}")
        _check(self.action_decode_k >= 1, "model.action_decode_k", f"must be >= 1, got {self.action_decode_k}")
        _check(self.action_bin_mu >= 0, "model.action_bin_mu",
               f"must be >= 0 (0: uniform bins), got {self.action_bin_mu}")
        _check(self.proprio_fourier_bands >= 0, "model.proprio_fourier_bands",
               f"must be >= 0, got {self.proprio_fourier_bands}")
        _check(self.action_bins >= 2, "model.action_bins", f"need at least 2 bins, got {self.action_bins}")
        _check(self.value_atoms >= 2, "model.value_atoms", f"need at least 2 atoms, got {self.value_atoms}")
        _check(self.value_max > self.value_min, "model.value_max",
               f"must exceed model.value_min ({self.value_max} <= {self.value_min})")
        _check(self.image_size % self.patch_size == 0, "model.image_size",
               f"{self.image_size} is not divisible by model.patch_size={self.patch_size}")


@dataclass
class ObjectiveConfig:
    """KL-regularised offline actor-critic objective (PAC.md, "Objective").

    alpha=1, beta=0 is BC; alpha=1, beta>0 is BC+Q; alpha<1 is PAC.
    """

    alpha: float = 0.75  # weight of KL(b || pi); the improvement adds <= 1-alpha to an action (docs/quality.md)
    beta: float = 1.0  # weight of the distributional critic cross-entropy
    # the BC term's target over action bins: onehot (the data's bin), twohot (split between the two bins around
    # the value) or hlgauss (a Gaussian of `bc_target_sigma` bin widths); see pac.networks.action_targets
    # hlgauss at 2 bin widths: with mean decoding the decoded action tracks the data's continuous action
    # (0.75 widths reached 0.38, 2 widths 0.65 on the same 3 tasks and seeds; docs/learner.md)
    bc_target: Literal["onehot", "twohot", "hlgauss"] = "hlgauss"
    bc_target_sigma: float = 2.0
    # which data actions the BC term imitates (our extension, not the paper's): all of them, or only those the
    # critic ranks above the policy's own value, A(s, a) = Q(s, a) - mean_k Q(s, a'_k) > 0 (CRR's binary filter,
    # Wang et al. 2020). Needs a critic (beta > 0). On data whose most frequent action is the worse one it moves
    # the objective's fixed point off the data's mode (tests/training/test_train_integration.py, docs/quality.md).
    # soft: weight min(1, exp(A/eta)) with the improvement's temperature, the binary filter as eta -> 0: where
    # the critic's action differences are noise next to eta (balancing near an equilibrium) it stays near BC
    # instead of dropping half the data at random (BC+Q learns no eta: it uses objective.eta). auto (default):
    # the soft filter for PAC (alpha < 1, beta > 0), none for BC and BC+Q, which stay the paper's baselines; on
    # the mixed benchmark it took PAC from 0.234 to 0.339 over four seeds (docs/quality.md). none is the paper's
    # exact objective
    bc_filter: Literal["none", "advantage", "soft", "auto"] = "auto"
    eta: float = 1.0  # temperature of the improved policy (initial value when learned; exports record the learned one)
    learn_eta: bool = True  # MPO-style dual on eta with KL bound epsilon
    epsilon: float = 0.1  # KL bound of the eta dual
    eta_min: float = 1e-3
    eta_lr_scale: float = 100.0  # eta's step size / train.lr; at 10 the dual lagged Q's spread, KL 2-5x epsilon
    num_action_samples: int = 20  # a' ~ pi_theta' per state for the improvement term and the critic target
    uniform_mix: float = 0.0  # mix of uniform into the sampling policy (guards entropy collapse)
    n_step: int = 20  # longer returns carry more of an action's consequences on sub-optimal data (docs/quality.md)
    discount: float = 0.99
    target_update: Literal["polyak", "periodic"] = "polyak"
    polyak_tau: float = 0.02  # target half-life ~35 steps; 0.005 left the critic near its init (docs/quality.md)
    target_period: int = 200  # steps between copies when target_update == "periodic"

    @property
    def trains_critic(self) -> bool:
        """Whether the Q decoder learns (beta > 0): only then may acting use the critic's ranking."""
        return self.beta > 0

    def __post_init__(self) -> None:
        _check(0.0 <= self.alpha <= 1.0, "objective.alpha", f"must be in [0, 1], got {self.alpha}")
        _check(self.beta >= 0.0, "objective.beta", f"must be >= 0, got {self.beta}")
        _check(self.bc_target in ("onehot", "twohot", "hlgauss"), "objective.bc_target",
               f"must be 'onehot', 'twohot' or 'hlgauss', got {self.bc_target!r}")
        _check(self.bc_target_sigma > 0, "objective.bc_target_sigma", f"must be > 0, got {self.bc_target_sigma}")
        _check(self.bc_filter in ("none", "advantage", "soft", "auto"), "objective.bc_filter",
               f"must be 'none', 'advantage', 'soft' or 'auto', got {self.bc_filter!r}")
        _check(self.bc_filter not in ("advantage", "soft") or self.beta > 0, "objective.bc_filter",
               f"{self.bc_filter!r} ranks data actions with the critic: it needs objective.beta > 0")
        _check(self.eta > 0.0, "objective.eta", f"must be > 0, got {self.eta}")
        _check(self.epsilon > 0.0, "objective.epsilon", f"must be > 0, got {self.epsilon}")
        _check(0.0 < self.eta_min <= self.eta, "objective.eta_min", f"must be in (0, eta], got {self.eta_min}")
        _check(self.eta_lr_scale > 0.0, "objective.eta_lr_scale", f"must be > 0, got {self.eta_lr_scale}")
        _check(self.num_action_samples >= 1, "objective.num_action_samples",
               f"must be >= 1, got {self.num_action_samples}")
        _check(0.0 <= self.uniform_mix < 1.0, "objective.uniform_mix", f"must be in [0, 1), got {self.uniform_mix}")
        _check(self.n_step >= 1, "objective.n_step", f"must be >= 1, got {self.n_step}")
        _check(0.0 < self.discount <= 1.0, "objective.discount", f"must be in (0, 1], got {self.discount}")
        _check(self.target_update in ("polyak", "periodic"), "objective.target_update",
               f"must be 'polyak' or 'periodic', got {self.target_update!r}")
        _check(0.0 < self.polyak_tau <= 1.0, "objective.polyak_tau", f"must be in (0, 1], got {self.polyak_tau}")
        _check(self.target_period >= 1, "objective.target_period", f"must be >= 1, got {self.target_period}")

    @property
    def bc_weighting(self) -> Literal["none", "advantage", "soft"]:
        """How the BC term weights data actions: `bc_filter` with auto resolved (soft for PAC, else none)."""
        if self.bc_filter != "auto":
            return self.bc_filter
        return "soft" if self.alpha < 1.0 and self.beta > 0 else "none"

    def resolved(self) -> ObjectiveConfig:
        """This objective with `bc_filter: auto` replaced by what it means at this alpha and beta."""
        return dataclasses.replace(self, bc_filter=self.bc_weighting)

    @property
    def filters_bc(self) -> bool:
        """Whether the BC term weights data actions by their advantage (`bc_filter`)."""
        return self.bc_weighting != "none"

    @property
    def learns_eta(self) -> bool:
        """Whether training moves eta: the dual runs only beside the improvement term (alpha < 1)."""
        return self.learn_eta and self.alpha < 1.0

    @property
    def method(self) -> str:
        """The paper's name for this setting: BC, BC+Q or PAC."""
        if self.alpha < 1.0:
            return "PAC"
        return "BC+Q" if self.beta > 0 else "BC"


@dataclass
class DataConfig:
    """Which dataset to train on and how to sample it."""

    dataset: str = ""  # dataset URI: local path or s3://bucket/prefix[@version]
    tasks: list[str] = field(default_factory=list)  # empty: every task in the dataset
    task_weights: dict[str, float] = field(default_factory=dict)  # empty: proportional to transitions
    cache_dir: str = ""  # local cache for downloaded shards; empty: <storage.root>/cache, ~/.cache/pac if root is s3://
    shards_in_memory: int = 4  # bounds memory on datasets larger than RAM
    shard_mb: float = 64.0  # ingestion: target size of one shard file (episodes are never split across shards)
    mix_with: dict[str, float] = field(default_factory=dict)  # more datasets -> sampling weight (data.dataset: 1)
    # (the datasets of data.mix_with are taken whole: self-collected data is all "policy")
    qualities: list[str] = field(default_factory=list)  # only episodes with these labels, e.g. expert; empty: all

    def __post_init__(self) -> None:
        _check(set(self.qualities) <= set(EPISODE_QUALITIES), "data.qualities",
               f"choose from {', '.join(EPISODE_QUALITIES)}; got {self.qualities}")
        for uri, w in self.mix_with.items():
            _check(w > 0.0, f"data.mix_with[{uri}]", f"must be > 0, got {w}")
        for task, w in self.task_weights.items():
            _check(w >= 0.0, f"data.task_weights[{task}]", f"must be >= 0, got {w}")
        _check(self.shards_in_memory >= 1, "data.shards_in_memory", f"must be >= 1, got {self.shards_in_memory}")
        _check(self.shard_mb > 0, "data.shard_mb", f"must be > 0, got {self.shard_mb}")


@dataclass
class GenerateConfig:
    """Behaviour-data generation on the simulated task suite (`pac data generate`)."""

    tasks: list[str] = field(default_factory=lambda: ["cartpole/balance", "point_mass/easy"])
    episodes_per_policy: int = 4  # per task and per quality level
    qualities: list[str] = field(default_factory=lambda: ["random", "noisy", "expert"])
    # quality -> episodes per task, for the qualities it names (a mix such as 30% random / 40% degraded / 30% expert)
    quality_episodes: dict[str, int] = field(default_factory=dict)
    workers: int = 0  # processes simulating runs of <= 10 episodes of a (task, quality) side by side; 0: one per core
    episode_steps: int = 250  # time limit per episode (control steps)
    vision: bool = False  # also store camera pixels
    image_size: int = IMAGE_SIZE  # side of the stored camera frames in pixels
    seed: int = 0  # episode seeds derive from this, the task, the quality and the episode index
    noisy_expert_prob: float = 0.5  # 'noisy' policy: probability a step uses the expert (else uniform random)
    noisy_action_std: float = 0.5  # 'noisy' policy: Gaussian noise on expert actions, fraction of half the range
    damped_scale: float = 0.1  # 'damped' policy: the expert's actions scaled by this towards the range's centre
    damped_noise_std: float = 0.0  # 'damped' policy: Gaussian noise on its actions, fraction of half the range
    damped_expert_prob: float = 0.0  # 'damped' policy: probability a step takes the expert's own action instead
    # 'expert' policy: Gaussian noise on the expert's actions, a fraction of half the range (0: deterministic). A
    # deterministic expert repeats one path, and a learner that copies it never sees a state off that path: small
    # noise shows it how the expert recovers (DART, Laskey et al. 2017; D4RL's experts are sampled policies). 0.1
    # costs the experts <= 2% of their return and lifts BC from 0.51 to 1.00 on cartpole/swingup (docs/learner.md)
    expert_noise_std: float = 0.0

    def episodes(self, quality: str) -> int:
        """Episodes per task of one quality level."""
        return self.quality_episodes.get(quality, self.episodes_per_policy)

    def __post_init__(self) -> None:
        _check(self.episodes_per_policy >= 1, "generate.episodes_per_policy",
               f"must be >= 1, got {self.episodes_per_policy}")
        _check(self.episode_steps >= 2, "generate.episode_steps", f"must be >= 2, got {self.episode_steps}")
        _check(bool(self.tasks), "generate.tasks", "name at least one task (see `pac tasks`)")
        _check(bool(self.qualities) and set(self.qualities) <= set(BEHAVIOUR_QUALITIES),
               "generate.qualities", f"choose from {', '.join(BEHAVIOUR_QUALITIES)}; got {self.qualities}")
        _check(set(self.quality_episodes) <= set(self.qualities), "generate.quality_episodes",
               f"names qualities not in generate.qualities {self.qualities}: "
               f"{sorted(set(self.quality_episodes) - set(self.qualities))}")
        _check(all(n >= 1 for n in self.quality_episodes.values()), "generate.quality_episodes",
               f"every count must be >= 1, got {self.quality_episodes}")
        _check(self.workers >= 0, "generate.workers", f"must be >= 0, got {self.workers}")
        _check(self.image_size >= 8, "generate.image_size", f"must be >= 8, got {self.image_size}")
        _check(0.0 <= self.noisy_expert_prob <= 1.0, "generate.noisy_expert_prob",
               f"must be in [0, 1], got {self.noisy_expert_prob}")
        _check(0.0 <= self.damped_scale <= 1.0, "generate.damped_scale", f"must be in [0, 1], got {self.damped_scale}")
        _check(self.noisy_action_std >= 0.0, "generate.noisy_action_std", f"must be >= 0, got {self.noisy_action_std}")
        _check(self.damped_noise_std >= 0.0, "generate.damped_noise_std", f"must be >= 0, got {self.damped_noise_std}")
        _check(0.0 <= self.damped_expert_prob <= 1.0, "generate.damped_expert_prob",
               f"must be in [0, 1], got {self.damped_expert_prob}")
        _check(self.expert_noise_std >= 0.0, "generate.expert_noise_std", f"must be >= 0, got {self.expert_noise_std}")


@dataclass
class TrainConfig:
    """Optimisation, DeepSpeed engine and checkpointing."""

    steps: int = 200
    global_batch_size: int = 64
    # per rank; accumulation = global / (micro * world_size). 0: global / world_size, no accumulation, so one
    # config runs at any world size (pin it when a rank's memory needs accumulation)
    micro_batch_size: int = 0
    lr: float = 1e-3  # 3e-4 left BC at 0.02 of a point-mass expert after 1,000 steps, 1e-3 at 0.40 (docs/learner.md)
    weight_decay: float = 0.01
    warmup_steps: int = 20
    # constant: BC reached 0.58 / 0.75 of a point-mass expert (seeds 1, 2; held-out episodes) where cosine decay
    # reached 0.35 / 0.55 in the same 1,000 steps (docs/learner.md)
    lr_schedule: Literal["cosine", "constant"] = "constant"
    grad_clip: float = 1.0
    zero_stage: int = 0
    # auto: bf16 where the hardware computes it natively (CUDA, or a CPU with AMX / AVX512-BF16) and the model is
    # at least 512 wide, else fp32 -- emulated bf16 is several times slower (docs/benchmarks.md), and for the tiny
    # presets even native bf16 was slower than fp32 (docs/learner.md)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    activation_checkpointing: bool = False
    offload_optimizer: bool = False
    offload_params: bool = False
    checkpoint_every: int = 100
    keep_checkpoints: int = 2  # newest checkpoints kept in the store; older ones are deleted after a save
    eval_every: int = 0  # 0 disables the periodic evaluation hook
    log_every: int = 10
    output: str = "outputs/run"  # run directory: local path or s3://bucket/prefix
    init_from: str = ""  # weights to start from (finetuning): checkpoint dir, safetensors export or models:/ URI
    resume: bool = True  # continue from the newest checkpoint in `output` when there is one

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "train.steps", f"must be >= 1, got {self.steps}")
        _check(self.global_batch_size >= 1, "train.global_batch_size", f"must be >= 1, got {self.global_batch_size}")
        _check(self.micro_batch_size >= 0, "train.micro_batch_size",
               f"must be >= 1, or 0 to derive it from the ranks, got {self.micro_batch_size}")
        _check(self.micro_batch_size == 0 or self.global_batch_size % self.micro_batch_size == 0,
               "train.global_batch_size",
               f"{self.global_batch_size} is not divisible by train.micro_batch_size={self.micro_batch_size}")
        _check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(self.lr_schedule in ("cosine", "constant"), "train.lr_schedule",
               f"must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        _check(self.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 disables), got {self.grad_clip}")
        _check(self.zero_stage in (0, 1, 2, 3), "train.zero_stage",
               f"unknown ZeRO stage {self.zero_stage}; use 0, 1, 2 or 3")
        _check(self.precision in ("auto", "bf16", "fp32"), "train.precision",
               f"must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        _check(not self.offload_optimizer or self.zero_stage >= 2, "train.offload_optimizer",
               "optimizer offload needs train.zero_stage >= 2")
        _check(not self.offload_params or self.zero_stage == 3, "train.offload_params",
               "parameter offload needs train.zero_stage == 3")
        for name in ("checkpoint_every", "log_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 1, f"train.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.eval_every >= 0, "train.eval_every", f"must be >= 0, got {self.eval_every}")


@dataclass
class EvalConfig:
    """Simulated evaluation (`pac evaluate`), also used by training and collection."""

    tasks: list[str] = field(default_factory=list)  # empty: the tasks the model was trained on
    episodes: int = 4  # per task
    num_envs: int = 4  # environments stepped together per task (batched inference)
    # processes stepping them side by side (-1: one per core; 0: in the evaluating process). 0 by default: on
    # the measured suite tasks a control step costs less than the round trip to a worker (docs/benchmarks.md).
    # Sources that read the simulator (the scripted experts) always step in-process. Results do not depend on it.
    env_workers: int = 0
    env_timeout_s: float = 300.0  # an environment worker silent this long fails the rollout (hung physics)
    # intra-op threads of the policy's forward during a rollout (0: leave torch's setting). A step's batch is a
    # few observations: a second thread only adds hand-offs (tiny preset, 4 envs: 487 -> 1,333 steps/s with one
    # thread under OMP_WAIT_POLICY=PASSIVE; docs/benchmarks.md)
    policy_threads: int = 1
    episode_steps: int = 250
    greedy: bool = True  # argmax bins; False samples with `temperature`
    temperature: float = 1.0
    # >0: score this many sampled actions (and the greedy one) with the Q decoder, take the best; only for models
    # whose critic was trained (objective.beta > 0). Off by default: it lost to the greedy decode on the main job's
    # data and won on the quality benchmark's (docs/quality.md)
    q_select_samples: int = 0
    epsilon: float = 0.0  # per-step probability of a uniform random action (exploration when collecting)
    vision: Literal["auto", "always", "never"] = "auto"  # camera input; auto: where the training data had images
    videos_per_task: int = 1
    video: bool = True
    video_size: int = 240  # side of video frames in pixels (a multiple of 16, the H.264 macroblock)
    render_errors: Literal["fail", "skip"] = "fail"  # no OpenGL for videos: fail with a hint, or skip videos
    seed: int = 1000

    def __post_init__(self) -> None:
        for name in ("episodes", "num_envs", "episode_steps"):
            _check(getattr(self, name) >= 1, f"eval.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.temperature > 0, "eval.temperature", f"must be > 0, got {self.temperature}")
        _check(self.env_workers >= -1, "eval.env_workers", f"must be >= -1 (-1: one per core), got {self.env_workers}")
        _check(self.env_timeout_s > 0, "eval.env_timeout_s", f"must be > 0, got {self.env_timeout_s}")
        _check(self.policy_threads >= 0, "eval.policy_threads", f"must be >= 0, got {self.policy_threads}")
        _check(self.q_select_samples >= 0, "eval.q_select_samples", f"must be >= 0, got {self.q_select_samples}")
        _check(0.0 <= self.epsilon <= 1.0, "eval.epsilon", f"must be in [0, 1], got {self.epsilon}")
        _check(self.vision in ("auto", "always", "never"), "eval.vision",
               f"must be 'auto', 'always' or 'never', got {self.vision!r}")
        _check(self.videos_per_task >= 0, "eval.videos_per_task", f"must be >= 0, got {self.videos_per_task}")
        _check(self.video_size >= 16 and self.video_size % 16 == 0, "eval.video_size",
               f"must be a positive multiple of 16, got {self.video_size}")
        _check(self.render_errors in ("fail", "skip"), "eval.render_errors",
               f"must be 'fail' or 'skip', got {self.render_errors!r}")


@dataclass
class ImproveConfig:
    """Self-improvement rounds (`pac improve`): collect with the policy -> ingest -> finetune -> evaluate."""

    iterations: int = 2
    collect_episodes: int = 8  # per robot task and round
    finetune_steps: int = 200  # optimizer steps per round
    finetune_lr: float | None = None  # peak learning rate of each round (None: train.lr)
    finetune_alpha: float | None = None  # objective.alpha of each round (None: objective.alpha)
    collect_temperature: float | None = None  # sample the collecting policy at this temperature (None: act as eval)
    collected_weight: float = 1.0  # sampling weight of the self-collected data (the original data has 1)
    dataset: str = "self-collected"  # dataset name the rounds publish new versions of

    def __post_init__(self) -> None:
        for name in ("iterations", "collect_episodes", "finetune_steps"):
            _check(getattr(self, name) >= 1, f"improve.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.collected_weight > 0, "improve.collected_weight", f"must be > 0, got {self.collected_weight}")
        _check(self.finetune_lr is None or self.finetune_lr > 0, "improve.finetune_lr",
               f"must be > 0 (or unset), got {self.finetune_lr}")
        _check(self.finetune_alpha is None or 0.0 <= self.finetune_alpha <= 1.0, "improve.finetune_alpha",
               f"must be in [0, 1] (or unset), got {self.finetune_alpha}")
        _check(self.collect_temperature is None or self.collect_temperature > 0, "improve.collect_temperature",
               f"must be > 0 (or unset), got {self.collect_temperature}")
        _check(bool(self.dataset), "improve.dataset", "must not be empty")


@dataclass
class StorageConfig:
    """Object store. Credentials never live here: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY come from the
    environment (a Kubernetes Secret in the cluster)."""

    root: str = "pac-store"  # where relative dataset/run names live: local directory or s3://bucket/prefix
    endpoint: str = ""  # S3 endpoint host:port; empty: $AWS_ENDPOINT_URL, else required for s3:// URIs
    secure: bool = True  # TLS to the endpoint
    region: str = ""
    retries: int = 5
    part_size_mb: int = 16  # multipart chunk size for large shards

    def __post_init__(self) -> None:
        _check(self.retries >= 0, "storage.retries", f"must be >= 0, got {self.retries}")
        _check(self.part_size_mb >= 5, "storage.part_size_mb", f"S3 multipart parts must be >= 5 MB, "
               f"got {self.part_size_mb}")


@dataclass
class TrackingConfig:
    """MLflow tracking and model registry."""

    enabled: bool = True
    uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else a local sqlite store under outputs/mlruns
    experiment: str = "pac"
    registered_model: str = "pac-policy"
    system_metrics: bool = True
    check_timeout_s: float = 10.0  # pre-flight check: seconds to wait for the tracking server, no retries
    # metrics are sent from a background thread; through a server outage this many points are kept (then the
    # oldest are dropped), and the end of a run waits this long for the rest to go out
    max_buffered_metrics: int = 100_000
    flush_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        _check(bool(self.experiment), "tracking.experiment", "must not be empty")
        _check(bool(self.registered_model), "tracking.registered_model", "must not be empty")
        _check(self.check_timeout_s > 0, "tracking.check_timeout_s", f"must be > 0, got {self.check_timeout_s}")
        _check(self.max_buffered_metrics >= 1, "tracking.max_buffered_metrics",
               f"must be >= 1, got {self.max_buffered_metrics}")
        _check(self.flush_timeout_s >= 0, "tracking.flush_timeout_s", f"must be >= 0, got {self.flush_timeout_s}")


@dataclass
class ClusterConfig:
    """Where training runs: in this process (nodes == 1), or as a Kubeflow Trainer job over several nodes."""

    nodes: int = 1  # training nodes; > 1 submits a TrainJob from inside the cluster (pac.cluster)
    gpus_per_node: int = 0  # accelerators per node (0: CPU nodes, one process per node)
    namespace: str = ""  # where the TrainJob goes; empty: the submitting pod's own namespace
    runtime: str = "pac-torch-distributed"  # the TrainingRuntime (manifests/base) that runs torchrun on each node
    image: str = ""  # the training pods' image; empty: pac-k8s:<package version> (pac.image_ref)
    cpu_per_node: str = "8"
    memory_per_node: str = "32Gi"
    accelerator: str = "nvidia.com/gpu"  # the resource name gpus_per_node requests
    # a job whose pods are still unscheduled after this long is deleted and the step fails naming why
    schedule_timeout_s: float = 900.0
    poll_s: float = 5.0  # status polling interval while the job runs

    def __post_init__(self) -> None:
        _check(self.nodes >= 1, "cluster.nodes", f"must be >= 1, got {self.nodes}")
        _check(self.gpus_per_node >= 0, "cluster.gpus_per_node", f"must be >= 0, got {self.gpus_per_node}")
        _check(bool(self.runtime), "cluster.runtime", "must name a TrainingRuntime")
        _check(self.schedule_timeout_s > 0, "cluster.schedule_timeout_s",
               f"must be > 0, got {self.schedule_timeout_s}")
        _check(self.poll_s > 0, "cluster.poll_s", f"must be > 0, got {self.poll_s}")


@dataclass
class Config:
    """Everything a PAC run needs, resolved. A checkpoint carries this, MLflow gets it flattened once."""

    preset: str = "tiny"  # model size preset (`pac presets`); `model` holds its resolved dimensions
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    improve: ImproveConfig = field(default_factory=ImproveConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, for MLflow params."""
        return flatten(self.to_dict())

    def dump(self, path: str | Path) -> None:
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if path.suffix == ".json" else yaml.safe_dump(
            self.to_dict(), sort_keys=False)
        path.write_text(text)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from a (partial) mapping; a `model` section overrides the named preset's dimensions."""
        from pac.presets import model_config  # presets import this module

        data = dict(data)
        preset = data.get("preset", cls.preset)
        if not isinstance(preset, str):
            raise ConfigError(f"preset: expected a preset name, got {preset!r}")
        model = data.get("model", {})
        if not isinstance(model, dict):
            raise ConfigError(f"model: expected a mapping, got {model!r}")
        data["model"] = merge(dataclasses.asdict(model_config(preset)), model)
        return build(cls, data, "")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_dict(read_overrides(path))


def read_overrides(path: str | Path) -> dict[str, Any]:
    """Read a YAML/JSON file of (possibly partial) config values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_overrides(text: str) -> dict[str, Any]:
    """Config overrides given as JSON text (a pipeline parameter): a mapping of sections; "" for none."""
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ConfigError(f"config overrides are not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config overrides must be a JSON mapping of config sections, got {type(data).__name__}")
    return data


def assignments(items: Iterable[str]) -> dict[str, Any]:
    """`SECTION.FIELD=VALUE` strings (a benchmark's `--set` flags) -> a mapping of sections for `Config.from_dict`,
    which converts and validates the values (the string "4" becomes a float where the field is one).

    Raises:
        ConfigError: naming the item that is not of that form.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not (eq and dot and section and name):
            raise ConfigError(f"{item!r}: expected SECTION.FIELD=VALUE, e.g. objective.bc_target_sigma=4")
        out = merge(out, {section: {name: value}})
    return out


def pipeline_overrides(*, preset: str, tasks: str, train_steps: int, alpha: float, zero_stage: int, nodes: int,
                       gpus_per_node: int, overrides: str) -> str:
    """The pipeline's parameters merged into its JSON overrides, validated by the typed config; returns JSON.

    A field set both by a parameter (changed from its default) and in `overrides` to another value is an
    error: neither silently wins.

    Raises:
        ConfigError: naming the field that is invalid or given twice.
    """
    data = parse_overrides(overrides)
    defaults = Config()
    params = {("preset",): preset, ("generate", "tasks"): [t for t in tasks.split(",") if t],
              ("train", "steps"): train_steps, ("objective", "alpha"): alpha, ("train", "zero_stage"): zero_stage,
              ("cluster", "nodes"): nodes, ("cluster", "gpus_per_node"): gpus_per_node}
    for path, value in params.items():
        section = data if len(path) == 1 else data.setdefault(path[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"{path[0]}: expected a mapping of fields in the overrides, got {section!r}")
        default = getattr(defaults, path[0]) if len(path) == 1 else getattr(getattr(defaults, path[0]), path[1])
        name = ".".join(path)
        if path[-1] in section and section[path[-1]] != value and value != default:
            raise ConfigError(f"{name} is given twice: {value!r} as a pipeline parameter and "
                              f"{section[path[-1]]!r} in the overrides")
        section.setdefault(path[-1], value)
    Config.from_dict(data)  # every field validated, the message naming it
    return json.dumps(data, sort_keys=True)


# Mapping-valued fields: values, not config sections (they replace rather than merge, and stay whole when flattened).
_LEAF_MAPPINGS = ("task_weights", "mix_with", "proprio_stats", "quality_episodes")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and k not in _LEAF_MAPPINGS:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in _LEAF_MAPPINGS:
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Check/convert a parsed value to the annotated type, naming the field on failure."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return build(tp, value, name + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name}: must be one of {list(args)}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        return coerce(value, next(a for a in args if a is not type(None)), name)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = dict(kv.split("=", 1) for kv in value.split(",") if kv) if value else {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return {str(k): coerce(v, args[1], f"{name}[{k}]") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    return value


def build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a mapping; unknown keys are errors naming the key."""
    fields = field_types(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"known: {', '.join(prefix + k for k in fields)}")
    kwargs = {k: coerce(v, fields[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e
