"""Behaviour policies on real physics: experts reach most of the maximum return, random does not.

Fast tier: the hand-written controllers (each episode well under a second). Slow tier: the MPPI
planner (seconds to tens of seconds per episode) and the full measured table.
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
from pac.config import GenerateConfig
from pac.data.generate import ReturnStats, generate_episodes
from pac.envs import TASKS, make_env
from pac.envs.experts import dlqr, linearize, make_expert
from pac.envs.policies import DampedPolicy, NoisyPolicy, RandomPolicy, make_policy

STEPS = 250  # the generator's default time limit: max return 250
BEHAVIOUR = {"expert_prob": 0.5, "noise_std": 0.5, "damped_scale": 0.1, "damped_noise_std": 0.0,
             "damped_expert_prob": 0.0, "expert_noise_std": 0.0}  # make_policy's parameters of every quality


def returns(task_id: str, quality: str, episodes: int, steps: int = STEPS, **behaviour: float) -> np.ndarray:
    env = make_env(task_id, seed=0, episode_steps=steps)
    policy = make_policy(env.spec, quality, **{**BEHAVIOUR, **behaviour})
    out = []
    for i in range(episodes):
        obs = env.reset(seed=100 + i)
        policy.reset(env, seed=i)
        total, done = 0.0, False
        while not done:
            obs, reward, _, done = env.step(policy.act(env, obs))
            total += reward
        out.append(total)
    env.close()
    return np.asarray(out)


# Hand-written experts at >= 80% of the maximum return (measured 90-100%, docs/tasks.md).
@pytest.mark.parametrize("task_id", ["cartpole/balance", "reacher/easy", "reacher/hard", "jaco/reach_site",
                                     "jaco/reach_duplo"])
def test_expert_reaches_80_percent_of_max_return(task_id: str) -> None:
    expert = returns(task_id, "expert", 2)
    assert expert.mean() >= 0.8 * TASKS[task_id].max_return(STEPS), expert
    random = returns(task_id, "random", 2)
    assert random.mean() < 0.6 * expert.mean(), (random, expert)


@pytest.mark.parametrize("task_id", ["cartpole/balance", "cartpole/swingup", "pendulum/swingup", "point_mass/easy",
                                     "reacher/easy", "reacher/hard", "jaco/reach_site"])
def test_expert_actions_are_a_smooth_signal_a_learner_can_copy(task_id: str) -> None:
    """A controller unstable at the control step chatters between its bounds (the reacher's former kd 3 jumped
    by more than half the range on 98% of steps), which no policy of the state can reproduce (issue 26). A
    bang-bang expert switching with the state (the pendulum's pumping, once per swing) is fine."""
    env = make_env(task_id, seed=0, episode_steps=STEPS)
    expert = make_expert(env.spec)
    obs = env.reset(seed=100)
    expert.reset(env, seed=0)
    actions, done = [], False
    while not done:
        actions.append(expert.act(env, obs))
        obs, _, _, done = env.step(actions[-1])
    normalised = 2 * (np.asarray(actions) - env.action_low) / (env.action_high - env.action_low) - 1
    jumps = (np.abs(np.diff(normalised, axis=0)) > 1.0).mean()
    assert jumps < 0.1, (task_id, jumps)


# Physically capped at 250 steps (the swing-up or the weak motors eat most of the episode):
# thresholds sit below the measured means in docs/tasks.md and far above random.
@pytest.mark.parametrize(("task_id", "fraction"), [("cartpole/swingup", 0.4), ("point_mass/easy", 0.4),
                                                   ("pendulum/swingup", 0.25)])
def test_capped_experts_still_far_above_random(task_id: str, fraction: float) -> None:
    expert = returns(task_id, "expert", 4)
    assert expert.mean() >= fraction * STEPS, expert
    assert returns(task_id, "random", 4).mean() < 0.1 * STEPS


def test_noisy_sits_between_random_and_expert() -> None:
    random, noisy, expert = (returns("reacher/hard", q, 4).mean() for q in ("random", "noisy", "expert"))
    assert random < noisy < expert


def test_noisy_policy_extremes() -> None:
    env = make_env("point_mass/easy", seed=0, episode_steps=20)
    obs = env.reset(seed=0)
    expert = make_expert(env.spec)
    expert.reset(env, 0)
    pure = NoisyPolicy(make_expert(env.spec), expert_prob=1.0, noise_std=0.0)
    pure.reset(env, 0)
    np.testing.assert_allclose(pure.act(env, obs), expert.act(env, obs))
    never = NoisyPolicy(make_expert(env.spec), expert_prob=0.0, noise_std=0.0)
    never.reset(env, 0)
    actions = np.array([never.act(env, obs) for _ in range(200)])
    assert np.all(actions >= env.action_low) and np.all(actions <= env.action_high)
    assert actions.std(0).min() > 0.4  # uniform on [-1, 1] has std 0.58
    with pytest.raises(ValueError, match="unknown behaviour quality"):
        make_policy(env.spec, "mediocre", **BEHAVIOUR)


def test_damped_policy_scales_the_expert_towards_the_centre() -> None:
    env = make_env("reacher/easy", seed=0, episode_steps=20)
    obs = env.reset(seed=0)
    expert = make_expert(env.spec)
    expert.reset(env, 0)
    damped = DampedPolicy(make_expert(env.spec), scale=0.1)
    damped.reset(env, 0)
    centre = (env.action_high + env.action_low) / 2
    np.testing.assert_allclose(damped.act(env, obs), centre + 0.1 * (expert.act(env, obs) - centre), rtol=1e-6)
    with pytest.raises(ValueError, match="scale must be in"):
        DampedPolicy(make_expert(env.spec), scale=1.5)


def test_damped_policy_takes_the_experts_action_in_a_share_of_steps() -> None:
    """With `expert_prob` the better action sits beside the damped one in the same state, at that rate."""
    env = make_env("reacher/easy", seed=0, episode_steps=20)
    obs = env.reset(seed=0)
    expert = make_expert(env.spec)
    expert.reset(env, 0)
    best = expert.act(env, obs)
    policy = make_policy(env.spec, "damped", **{**BEHAVIOUR, "damped_expert_prob": 0.4})
    policy.reset(env, 0)
    actions = np.array([policy.act(env, obs) for _ in range(2000)])
    centre = (env.action_high + env.action_low) / 2
    is_best = np.all(np.isclose(actions, best), axis=1)
    assert np.all(is_best | np.all(np.isclose(actions, centre + 0.1 * (best - centre)), axis=1))
    assert is_best.mean() == pytest.approx(0.4, abs=0.04)
    with pytest.raises(ValueError, match="expert_prob must be in"):
        DampedPolicy(make_expert(env.spec), scale=0.1, expert_prob=1.5)


def test_damped_noise_spreads_actions_around_the_damped_action() -> None:
    env = make_env("reacher/easy", seed=0, episode_steps=20)
    obs = env.reset(seed=0)
    damped = make_policy(env.spec, "damped", **BEHAVIOUR)
    damped.reset(env, 0)
    mode = damped.act(env, obs)
    noisy = make_policy(env.spec, "damped", **{**BEHAVIOUR, "damped_noise_std": 0.2})
    noisy.reset(env, 0)
    # The expert is a pure function of the state, so in one state the noise is the only spread.
    actions = np.array([noisy.act(env, obs) for _ in range(2000)])
    half_range = (env.action_high - env.action_low) / 2
    np.testing.assert_allclose(actions.mean(0), mode, atol=0.03 * half_range.max())
    np.testing.assert_allclose(actions.std(0), 0.2 * half_range, rtol=0.1)


def test_a_noisy_expert_spreads_its_actions_around_the_experts_and_keeps_its_return() -> None:
    """`generate.expert_noise_std`: the expert's own action plus Gaussian noise of that fraction of half the range
    (what lets a learner see the expert recover), at the deterministic expert's return."""
    env = make_env("reacher/easy", seed=0, episode_steps=200)
    obs = env.reset(seed=0)
    clean = make_policy(env.spec, "expert", **BEHAVIOUR)
    clean.reset(env, 0)
    half_range = (env.action_high - env.action_low) / 2
    # a state where the expert's action is well inside the bounds (clipping would bias the noisy mean)
    while np.any(np.abs(best := clean.act(env, obs)) > 0.7 * half_range):
        obs, *_ = env.step(best)
    noisy = make_policy(env.spec, "expert", **{**BEHAVIOUR, "expert_noise_std": 0.1})
    noisy.reset(env, 0)
    actions = np.array([noisy.act(env, obs) for _ in range(2000)])
    np.testing.assert_allclose(actions.mean(0), best, atol=0.01 * half_range.max())
    np.testing.assert_allclose(actions.std(0), 0.1 * half_range, rtol=0.1)
    expert = returns("reacher/easy", "expert", 3, 200)
    with_noise = returns("reacher/easy", "expert", 3, 200, expert_noise_std=0.1)
    assert with_noise.mean() >= 0.95 * expert.mean(), (with_noise, expert)


def test_damped_sits_between_random_and_expert_on_reacher() -> None:
    random, damped, expert = (returns("reacher/easy", q, 4).mean() for q in ("random", "damped", "expert"))
    assert random < damped < expert


def test_random_policy_is_seeded() -> None:
    env = make_env("walker/walk", seed=0, episode_steps=5)
    obs = env.reset(seed=0)
    a, b = RandomPolicy(), RandomPolicy()
    a.reset(env, 7)
    b.reset(env, 7)
    np.testing.assert_array_equal(a.act(env, obs), b.act(env, obs))


def test_linearization_predicts_the_simulator_and_lqr_stabilises_it() -> None:
    env = make_env("cartpole/balance", seed=0, episode_steps=5)
    model = env.physics.model.ptr
    a, b = linearize(model, np.zeros(2), n_sub=1)
    # A small perturbation evolves as the linear model says.
    data = mujoco.MjData(model)
    x0, u = np.array([0.01, -0.02, 0.03, 0.01]), np.array([0.05])
    data.qpos[:], data.qvel[:], data.ctrl[:] = x0[:2], x0[2:], u
    mujoco.mj_step(model, data)
    np.testing.assert_allclose(np.concatenate([data.qpos, data.qvel]), a @ x0 + b @ u, atol=1e-5)
    # The upright pole is unstable open-loop and stable under the LQR gain.
    k = dlqr(a, b, np.eye(4), np.eye(1))
    assert np.max(np.abs(np.linalg.eigvals(a))) > 1.0
    assert np.max(np.abs(np.linalg.eigvals(a - b @ k))) < 1.0


def generated_returns(task_id: str, episodes: int) -> dict[str, float]:
    """Mean returns of the generator's own episodes (the seeds behind the table in docs/tasks.md)."""
    cfg = GenerateConfig(tasks=[task_id], qualities=["random", "expert"], episodes_per_policy=episodes)
    stats = ReturnStats(cfg.episode_steps)
    for _ in generate_episodes(cfg, stats=stats, progress=False):
        pass
    return {q: float(np.mean(stats.returns[(task_id, q)])) for q in ("random", "expert")}


@pytest.mark.slow
@pytest.mark.parametrize(("task_id", "fraction"), [("walker/stand", 0.8), ("finger/turn_easy", 0.8),
                                                   ("ball_in_cup/catch", 0.6)])
def test_planner_expert_is_far_above_random(task_id: str, fraction: float) -> None:
    # walker/stand and finger/turn_easy measure >= 90% of the maximum return; ball_in_cup ~80%
    # with one episode at 76%, so its bar sits lower (still far above random, which scores 0).
    means = generated_returns(task_id, 2)
    assert means["expert"] >= fraction * STEPS, means
    assert means["random"] < 0.5 * means["expert"], means
