"""The one rollout implementation and evaluation reports, on real MuJoCo tasks.

Policies: the registry's scripted experts, a constant-action policy, a tiny untrained network, and a
toy critic whose Q-values are a known function of the action.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from pac.cli import main
from pac.config import Config, ConfigError, DataConfig, EvalConfig, GenerateConfig, ModelConfig, StorageConfig
from pac.envs import RenderingUnavailable, TaskSpec, UnknownTaskError, get_task, make_env
from pac.envs.env import Env, Obs
from pac.envs.experts import make_expert
from pac.envs.policies import Policy
from pac.evaluation import (
    ModelMismatchError,
    NetworkPolicy,
    ScriptedSource,
    TaskPlan,
    check_fit,
    episode_seed,
    evaluate,
    mean_ci95,
    plan_tasks,
    random_source,
    rollout,
    select_by_q,
    t_quantile_975,
    training_eval_hook,
    write_video,
)
from pac.inputs import Observation
from pac.networks import PerceiverActorCritic, build_model, value_support
from pac.presets import model_config
from pac.training.export import save_export


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Batches of a few observations gain nothing from intra-op threads, and on a busy 2-core CI box the
    # thread hand-off costs ~30x (measured 115 ms vs 4 ms per step of the tiny preset).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Constant(Policy):
    """The same raw action every step."""

    name = "constant"

    def __init__(self, value: float) -> None:
        self.value = value

    def act(self, env: Env, obs: Obs) -> np.ndarray:
        return np.full(env.action_dim, self.value, np.float32)


def plain_loop(task: str, factory: Callable[[TaskSpec], Policy], seeds: list[int], steps: int) -> list[dict]:
    """What a rollout must equal: one fresh env and policy per episode, stepped until done."""
    out = []
    for seed in seeds:
        env = make_env(task, seed=seed, episode_steps=steps)
        obs = env.reset(seed=seed)
        policy = factory(get_task(task))
        policy.reset(env, seed)
        proprio, actions, rewards, done = [obs["proprio"]], [], [], False
        while not done:
            action = policy.act(env, obs)
            obs, reward, _, done = env.step(action)
            proprio.append(obs["proprio"])
            actions.append(env.clip(action))
            rewards.append(reward)
        env.close()
        out.append({"return": sum(rewards), "proprio": np.stack(proprio), "actions": np.stack(actions)})
    return out


def tiny_net(seed: int = 0, **model: object) -> PerceiverActorCritic:
    """The tiny preset with a random policy head (zero-initialised heads would make argmax always bin 0)."""
    torch.manual_seed(seed)
    net = build_model(model_config("tiny") if not model else ModelConfig(**model))
    with torch.no_grad():
        net.policy.head.weight.normal_(0.0, 0.5)
    return net


# ------------------------------------------------------------------------------------------- rollout


@pytest.mark.parametrize(("task", "factory"), [
    ("cartpole/balance", make_expert),  # LQR expert reading privileged physics state
    ("point_mass/easy", lambda spec: Constant(0.7)),
])
def test_rollout_reproduces_a_plain_loop(task: str, factory: Callable[[TaskSpec], Policy]) -> None:
    # 3 episodes on 2 envs: the second env finishes and starts episode 2, exercising slot reuse.
    cfg = EvalConfig(episodes=3, num_envs=2, episode_steps=40, video=False)
    ro = rollout(ScriptedSource(factory), task, cfg, record=True, progress=False)
    expected = plain_loop(task, factory, [episode_seed(cfg.seed, task, i) for i in range(3)], 40)
    assert [r.index for r in ro.results] == [0, 1, 2]
    assert ro.returns.tolist() == [e["return"] for e in expected]  # exact: same seeds, same steps, same sums
    for episode, exp in zip(ro.episodes, expected, strict=True):
        episode.validate()
        np.testing.assert_array_equal(episode.proprio, exp["proprio"])
        np.testing.assert_array_equal(episode.actions, exp["actions"])
        assert episode.length == 40 and episode.task == task and episode.instruction == get_task(task).instruction


def test_episode_seeds_are_stable_and_distinct() -> None:
    assert episode_seed(1000, "cartpole/balance", 0) == 810226999  # golden: reports stay comparable across versions
    seeds = {episode_seed(1000, t, i, s) for t in ("cartpole/balance", "point_mass/easy") for i in range(50)
             for s in ("eval", "collect")}
    assert len(seeds) == 200


@pytest.mark.parametrize("greedy", [True, False])
def test_episodes_do_not_depend_on_batching(greedy: bool) -> None:
    """One environment at a time or three together: the same actions, to the bit (the greedy mean decode is
    continuous, so a kernel that rounds differently for a batch of one would show here)."""
    net = tiny_net()
    results = []
    for num_envs in (1, 3):
        cfg = EvalConfig(episodes=3, num_envs=num_envs, episode_steps=15, greedy=greedy, video=False)
        source = NetworkPolicy(net, cfg, critic=False)
        results.append(rollout(source, "reacher/easy", cfg, record=True, progress=False))
    one, batched = results
    for a, b in zip(one.episodes, batched.episodes, strict=True):
        np.testing.assert_array_equal(a.actions, b.actions)
    assert one.returns.tolist() == pytest.approx(batched.returns.tolist(), abs=1e-12)
    # Not a constant: the actions vary within and across episodes.
    assert np.std(np.concatenate([e.actions for e in one.episodes])) > (1e-3 if greedy else 0.1)


@pytest.mark.parametrize("greedy", [True, False])
def test_episodes_are_the_same_whether_environments_step_in_workers_or_here(greedy: bool) -> None:
    """Same seeds, same episodes, action for action, with the environments in 2 worker processes or in-process
    (and the random baseline, which also steps in workers)."""
    net = tiny_net()
    runs = {}
    for workers in (0, 2):
        cfg = EvalConfig(episodes=5, num_envs=3, episode_steps=40, greedy=greedy, video=False, env_workers=workers)
        runs[workers] = [rollout(source, "reacher/easy", cfg, record=True, progress=False)
                         for source in (NetworkPolicy(net, cfg, critic=False), random_source())]
    for here, there in zip(runs[0], runs[2], strict=True):
        assert here.returns.tolist() == there.returns.tolist()
        for a, b in zip(here.episodes, there.episodes, strict=True):
            np.testing.assert_array_equal(a.actions, b.actions)
            np.testing.assert_array_equal(a.proprio, b.proprio)


def test_network_policy_restores_training_mode() -> None:
    net = tiny_net().train()
    cfg = EvalConfig(episodes=1, num_envs=1, episode_steps=3, video=False)
    rollout(NetworkPolicy(net, cfg, critic=False), "cartpole/balance", cfg, progress=False)
    assert net.training


def test_wrong_action_shape_is_named() -> None:
    class Wrong:
        name = "wrong"

        def start(self, slot: int, env: Env, seed: int) -> None:
            pass

        def act(self, slots: list[int], envs: list[Env], obs: list[Obs]) -> np.ndarray:
            return np.zeros((len(slots), 3))

    with pytest.raises(ValueError, match=r"'wrong' returned actions of shape \(2, 3\), expected \(2, 1\)"):
        rollout(Wrong(), "cartpole/balance", EvalConfig(episodes=2, num_envs=2, episode_steps=5, video=False),
                progress=False)


# ------------------------------------------------------------------------------------------- Q-based selection

TARGET = 0.6


class ToyCritic(PerceiverActorCritic):
    """Expected Q = value_max * (1 - mean_d (a_d - TARGET)^2 / 4): highest at a = TARGET in every dimension.

    The Q logits are a narrow bump on the value support at that value, so `expected_value` recovers it.
    Counts `encode` calls to check that candidates share one encoding of the state.
    """

    encodes = 0

    def encode(self, obs: Observation) -> torch.Tensor:
        self.encodes += 1
        return super().encode(obs)

    def q_value(self, actions: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
        m = action_mask[:, None, :].float()
        dist = (((actions - TARGET) ** 2) * m).sum(-1) / m.sum(-1).clamp(min=1)  # (B, K)
        return self.cfg.value_max * (1 - dist / 4)

    def q_logits(self, latents: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
        support = value_support(self.cfg, device=actions.device)
        return -((support - self.q_value(actions, action_mask)[..., None]) ** 2) / (2 * 0.5**2)  # (B, K, atoms)


def test_select_by_q_takes_the_highest_expected_q() -> None:
    torch.manual_seed(0)
    net = ToyCritic(model_config("tiny"))
    obs = Observation.from_numpy([np.zeros(5, np.float32), np.ones(4, np.float32)], ["a", "b"], 48)
    candidates = torch.rand(2, 16, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1  # (B, K, A)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    index, values = select_by_q(net, net.encode(obs), candidates, mask)
    true_q = net.q_value(candidates, mask)
    assert index.tolist() == true_q.argmax(-1).tolist()
    for row in range(2):  # the decoded expected values rank the candidates exactly as the true Q does
        assert torch.argsort(values[row]).tolist() == torch.argsort(true_q[row]).tolist()


def test_q_selection_prefers_higher_q_actions_in_a_rollout() -> None:
    torch.manual_seed(0)
    net = ToyCritic(model_config("tiny"))  # zero policy head: the policy itself is uniform over bins
    steps, episodes = 20, 2
    chosen = {}
    for k in (0, 64):
        cfg = EvalConfig(episodes=episodes, num_envs=2, episode_steps=steps, greedy=False, q_select_samples=k,
                         video=False)
        net.encodes = 0
        ro = rollout(NetworkPolicy(net, cfg, critic=True), "cartpole/balance", cfg, record=True, progress=False)
        chosen[k] = np.concatenate([e.actions[:, 0] for e in ro.episodes])  # bounds [-1, 1]: raw == normalised
        assert net.encodes == steps  # one forward pass per step for both envs, K candidates included
    assert np.abs(chosen[0] - TARGET).mean() > 0.3  # sampling the uniform policy: all over [-1, 1]
    assert np.abs(chosen[64] - TARGET).mean() < 0.05
    assert np.abs(chosen[64] - TARGET).max() < 0.2


# ------------------------------------------------------------------------------------------- reports


def test_t_interval() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 10, 29, 30, 31, 40, 100, 1000):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4)
    mean, ci = mean_ci95([1.0, 2.0, 3.0, 6.0])
    assert mean == 3.0
    half = stats.t.ppf(0.975, 3) * np.std([1, 2, 3, 6], ddof=1) / 2
    assert ci == pytest.approx((3.0 - half, 3.0 + half), abs=1e-3)
    assert mean_ci95([5.0]) == (5.0, None)


def test_report_scores_against_random_and_max() -> None:
    cfg = EvalConfig(episodes=3, num_envs=3, episode_steps=50, video=False)
    report = evaluate(ScriptedSource(make_expert, "expert"), ["cartpole/balance"], cfg, progress=False)
    r = report.tasks["cartpole/balance"]
    random_returns = rollout(random_source(), "cartpole/balance", cfg, progress=False).returns
    assert r.random_return_mean == pytest.approx(random_returns.mean())
    assert r.max_return == 50.0
    assert r.normalized_score == pytest.approx((r.return_mean - random_returns.mean()) / (50 - random_returns.mean()))
    assert 0.5 < r.normalized_score <= 1.0  # the LQR expert keeps the pole up; random does not
    assert r.return_ci95 is not None and r.return_ci95[0] <= r.return_mean <= r.return_ci95[1]
    assert r.success_rate == 1.0 and r.successes == [True] * 3
    assert r.episode_length_mean == 50
    metrics = report.metrics()
    assert metrics["eval/cartpole/balance/normalized_score"] == r.normalized_score
    assert metrics["eval/normalized_score_mean"] == r.normalized_score


def test_same_seed_same_report(tmp_path: Path) -> None:
    net = tiny_net()
    texts = []
    for name, seed in (("a", 1000), ("b", 1000), ("c", 1001)):
        cfg = EvalConfig(episodes=3, num_envs=2, episode_steps=20, greedy=False, videos_per_task=1, video_size=64,
                         seed=seed)
        evaluate(NetworkPolicy(net, cfg, critic=False, name="tiny"), ["point_mass/easy"], cfg,
                 output_dir=tmp_path / name, progress=False)
        texts.append((tmp_path / name / "report.json").read_text())
    assert texts[0] == texts[1]
    assert json.loads(texts[0])["tasks"]["point_mass/easy"]["returns"] != \
        json.loads(texts[2])["tasks"]["point_mass/easy"]["returns"]


def test_outputs_plot_and_videos_decode(tmp_path: Path) -> None:
    cfg = EvalConfig(episodes=2, num_envs=2, episode_steps=20, videos_per_task=2, video_size=64)
    report = evaluate(ScriptedSource(make_expert, "expert"), ["cartpole/balance", "point_mass/easy"], cfg,
                      output_dir=tmp_path, progress=False)
    plot = iio.imread(tmp_path / "scores.png")
    assert plot.ndim == 3 and plot.shape[0] > 100 and plot[..., :3].std() > 10
    doc = json.loads((tmp_path / "report.json").read_text())
    assert set(doc["tasks"]) == {"cartpole/balance", "point_mass/easy"}
    assert "Student-t" in doc["methods"]["return_ci95"] and "random" in doc["methods"]["normalized_score"]
    assert (tmp_path / "results.md").read_text().strip() == report.table()
    videos = [v for t in doc["tasks"].values() for v in t["videos"]]
    assert len(videos) == 4 and all(v.endswith(".mp4") for v in videos)
    for v in videos:
        frames = iio.imread(tmp_path / v)
        assert frames.ndim == 4 and frames.shape[0] >= 2 and frames.shape[1:] == (64, 64, 3)
        assert frames.std() > 5  # an actual scene, not a blank frame


def test_gif_fallback_without_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # importing it now raises ImportError
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    path = write_video(frames, tmp_path / "clip", fps=10)
    assert path.suffix == ".gif"
    decoded = iio.imread(path)
    assert decoded.shape[0] == 5 and decoded.shape[1:3] == (32, 32)


# ------------------------------------------------------------------------------------------- rendering failures


@pytest.fixture
def no_gl(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every new camera fails the way dm_control does without an OpenGL platform.

    In this process only: tests using it step their environments here (`env_workers=0`).
    """
    import dm_control.mujoco  # only here: pac.envs must pick the GL backend before dm_control is first imported

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an OpenGL platform library has not been loaded into this process")

    monkeypatch.setattr(dm_control.mujoco, "Camera", fail)


def test_rendering_failure_hints_at_headless_gl(no_gl: None) -> None:
    cfg = EvalConfig(episodes=1, num_envs=1, episode_steps=5)
    with pytest.raises(RenderingUnavailable, match="MUJOCO_GL=egl") as info:
        rollout(ScriptedSource(make_expert), "cartpole/balance", cfg, progress=False)
    assert "osmesa" in str(info.value) and "--eval.video false" in str(info.value)


def test_evaluation_continues_without_video_when_asked(no_gl: None, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    for cfg in (EvalConfig(episodes=2, num_envs=2, episode_steps=5, video=False),
                EvalConfig(episodes=2, num_envs=2, episode_steps=5, render_errors="skip")):
        with caplog.at_level(logging.WARNING, logger="pac.evaluation"):
            report = evaluate(ScriptedSource(make_expert), ["cartpole/balance"], cfg, output_dir=tmp_path,
                              progress=False)
        assert report.tasks["cartpole/balance"].episodes == 2 and report.tasks["cartpole/balance"].videos == []
        assert (tmp_path / "scores.png").is_file()
    assert "MUJOCO_GL" in caplog.text  # the skip still says how to get videos


# ------------------------------------------------------------------------------------------- bad input


def test_unknown_task_is_a_clear_error() -> None:
    with pytest.raises(UnknownTaskError, match=r"unknown task\(s\) 'cartpole/nope', 'walker/fly'.*cartpole/balance"):
        evaluate(random_source(), ["cartpole/nope", "cartpole/balance", "walker/fly"], EvalConfig(), progress=False)
    with pytest.raises(UnknownTaskError, match="known tasks"):
        plan_tasks(Config(), EvalConfig(tasks=["nope/nope"]))


def test_mismatched_model_names_each_mismatch() -> None:
    small = ModelConfig(max_action_dims=4, max_proprio_dims=16, image_size=32)
    plans = [TaskPlan(get_task("jaco/reach_site")), TaskPlan(get_task("cartpole/balance"), vision=True, image_size=64),
             TaskPlan(get_task("point_mass/easy"), trained=(6, 2))]
    with pytest.raises(ModelMismatchError) as info:
        check_fit(small, plans)
    msg = str(info.value)
    assert "jaco/reach_site has 9 action dimensions, the model at most model.max_action_dims=4" in msg
    assert "jaco/reach_site has 45 proprio dimensions, the model at most model.max_proprio_dims=16" in msg
    assert "cartpole/balance is observed through 64x64 camera frames, the model takes model.image_size=32" in msg
    assert "point_mass/easy now has (proprio, action) dims (4, 2), the model was trained on (6, 2)" in msg
    check_fit(model_config("tiny"), plans[:2])  # the default dimensions fit


def test_tasks_and_vision_default_to_the_training_data(tmp_path: Path) -> None:
    from pac.data.ingest import ingest

    storage = StorageConfig(root=str(tmp_path / "store"))
    # A real training dataset: random episodes, with camera frames for one task.
    with_images = rollout(random_source(), TaskPlan(get_task("cartpole/balance"), vision=True, image_size=32),
                          EvalConfig(episodes=1, num_envs=1, episode_steps=3, video=False), record=True,
                          progress=False).episodes
    without = rollout(random_source(), "point_mass/easy", EvalConfig(episodes=1, num_envs=1, episode_steps=3),
                      record=True, progress=False).episodes
    ref = ingest(with_images + without, "train-data", storage=storage, progress=False)

    model_cfg = Config(data=DataConfig(dataset=str(ref)), storage=storage)
    plans = {p.task: p for p in plan_tasks(model_cfg, EvalConfig())}
    assert set(plans) == {"cartpole/balance", "point_mass/easy"}
    assert plans["cartpole/balance"].vision and plans["cartpole/balance"].image_size == 32
    assert not plans["point_mass/easy"].vision and plans["point_mass/easy"].trained == (4, 2)
    with pytest.raises(ModelMismatchError, match="model.image_size=64"):
        check_fit(model_config("tiny"), list(plans.values()))
    # data.tasks narrows; eval.tasks overrides; eval.vision forces.
    narrowed = plan_tasks(Config(data=DataConfig(dataset=str(ref), tasks=["point_mass/easy"]), storage=storage),
                          EvalConfig(vision="always"))
    assert [(p.task, p.vision) for p in narrowed] == [("point_mass/easy", True)]
    assert [p.task for p in plan_tasks(model_cfg, EvalConfig(tasks=["reacher/easy"]))] == ["reacher/easy"]
    # Without a dataset the config's generate.vision decides.
    assert plan_tasks(Config(data=DataConfig(tasks=["cartpole/balance"]), generate=GenerateConfig(vision=True)),
                      EvalConfig())[0].vision
    with pytest.raises(ConfigError, match="pass --eval.tasks"):
        plan_tasks(Config(), EvalConfig())


# ------------------------------------------------------------------------------------------- the CLI and hooks


def _export(directory: Path, tasks: list[str], **model: object) -> Path:
    cfg = Config(model=dataclasses.replace(model_config("tiny"), **model), data=DataConfig(tasks=tasks))
    torch.manual_seed(0)
    return save_export(build_model(cfg.model).state_dict(), cfg, directory)


FAST = ["--eval.episodes", "2", "--eval.num_envs", "2", "--eval.episode_steps", "15", "--eval.video_size", "64",
        "--tracking.enabled", "false", "--no-progress"]


def test_cli_evaluates_a_tiny_untrained_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = _export(tmp_path / "export", ["cartpole/balance", "point_mass/easy"])
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(export), "--output", str(out), *FAST]) == 0
    stdout = capsys.readouterr().out
    assert "| cartpole/balance | 2 |" in stdout and "| point_mass/easy | 2 |" in stdout
    doc = json.loads((out / "report.json").read_text())
    assert doc["policy"] == str(export) and doc["config"]["episodes"] == 2
    assert [len(t["returns"]) for t in doc["tasks"].values()] == [2, 2]
    assert (out / "scores.png").is_file() and (out / "results.md").is_file()
    assert len(list((out / "videos").glob("*.mp4"))) == 2


def test_cli_bad_input_is_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_gl: None) -> None:
    export = _export(tmp_path / "export", ["cartpole/balance"])
    out = str(tmp_path / "eval")
    assert main(["evaluate", "--model", str(export), "--output", out, "--eval.tasks", "cartpole/nope", *FAST]) == 1
    err = capsys.readouterr().err
    assert "unknown task(s) 'cartpole/nope'" in err and "jaco/reach_site" in err and "Traceback" not in err

    narrow = _export(tmp_path / "narrow", ["jaco/reach_site"], max_action_dims=4)
    assert main(["evaluate", "--model", str(narrow), "--output", out, *FAST]) == 1
    assert "model.max_action_dims=4" in capsys.readouterr().err

    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--output", out, *FAST]) == 1
    assert "missing" in capsys.readouterr().err

    # no_gl (in this process: the environments step here): videos fail with the hint, unless turned off.
    here = [*FAST, "--eval.env_workers", "0"]
    assert main(["evaluate", "--model", str(export), "--output", out, *here]) == 1
    assert "MUJOCO_GL=egl" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(export), "--output", out, "--eval.video", "false", *here]) == 0


def test_training_eval_hook(tmp_path: Path) -> None:
    cfg = Config(model=model_config("tiny"), data=DataConfig(tasks=["point_mass/easy"]),
                 eval=EvalConfig(episodes=2, num_envs=2, episode_steps=10, video_size=64))
    hook = training_eval_hook(cfg, output_dir=tmp_path)
    metrics = hook(tiny_net(), 7)
    assert set(metrics) == {"point_mass/easy/return_mean", "point_mass/easy/normalized_score",
                            "point_mass/easy/episode_length", "point_mass/easy/success_rate", "normalized_score_mean"}
    assert json.loads((tmp_path / "step_000007" / "report.json").read_text())["step"] == 7
    assert list((tmp_path / "step_000007" / "videos").glob("*.mp4"))
    with pytest.raises(ModelMismatchError):  # checked when the hook is built, i.e. before training starts
        training_eval_hook(Config(model=ModelConfig(max_proprio_dims=8), data=DataConfig(tasks=["jaco/reach_site"])))


def test_registered_model_evaluates_and_logs_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient
    from pac.config import TrackingConfig
    from pac.tracking import Tracker

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the embedded store: ./outputs/mlruns
    export = _export(tmp_path / "export", ["cartpole/balance"])
    tracker = Tracker(TrackingConfig(system_metrics=False))
    try:
        tracker.start(Config(), run_name="train")
        uri = tracker.log_model(export, register=True, alias="champion")
        tracker.end()
        args = ["evaluate", "--model", uri, "--output", str(tmp_path / "eval"), *FAST, "--tracking.enabled", "true",
                "--tracking.system_metrics", "false"]
        assert main(args) == 0
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
        mlflow.set_tracking_uri(None)
    assert "MLflow run" in capsys.readouterr().out
    client = MlflowClient(tracker.uri)
    runs = client.search_runs([client.get_experiment_by_name("pac").experiment_id],
                              filter_string="tags.`pac.job` = 'evaluate'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert "eval/cartpole/balance/normalized_score" in run.data.metrics
    assert run.data.params["eval.episodes"] == "2"
    names = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/report.json", "eval/results.md", "eval/scores.png", "eval/videos"} <= names
    assert [a.path for a in client.list_artifacts(run.info.run_id, "eval/videos")] == \
        ["eval/videos/cartpole_balance_ep000.mp4"]
