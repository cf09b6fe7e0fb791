"""Configuration: validation names the field, round trips, CLI flags derived from the dataclasses."""

from __future__ import annotations

from pathlib import Path

import pytest
from pac.cli import build_parser
from pac.cli.common import resolve_config
from pac.config import Config, ConfigError, DataConfig, ModelConfig, ObjectiveConfig, TrainConfig, assignments


@pytest.mark.parametrize("make,field", [
    (lambda: ObjectiveConfig(alpha=1.5), "objective.alpha"),
    (lambda: ObjectiveConfig(beta=-1), "objective.beta"),
    (lambda: ObjectiveConfig(eta=0), "objective.eta"),
    (lambda: ObjectiveConfig(epsilon=-0.1), "objective.epsilon"),
    (lambda: ObjectiveConfig(target_update="sometimes"), "objective.target_update"),
    (lambda: ModelConfig(d_model=65, num_heads=4), "model.d_model"),
    (lambda: ModelConfig(value_min=5, value_max=1), "model.value_max"),
    (lambda: ModelConfig(proprio_fourier_bands=-1), "model.proprio_fourier_bands"),
    (lambda: TrainConfig(global_batch_size=10, micro_batch_size=4), "train.global_batch_size"),
    (lambda: TrainConfig(zero_stage=4), "train.zero_stage"),
    (lambda: TrainConfig(offload_optimizer=True, zero_stage=1), "train.offload_optimizer"),
    (lambda: DataConfig(qualities=["expert", "excellent"]), "data.qualities"),
])
def test_validation_names_the_field(make, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make()


def test_dump_and_reload_round_trip(tmp_path: Path) -> None:
    cfg = Config.from_dict({"objective": {"alpha": 0.5}, "data": {"task_weights": {"cartpole/balance": 2.0}}})
    for name in ("c.yaml", "c.json"):
        cfg.dump(tmp_path / name)
        assert Config.load(tmp_path / name) == cfg


def test_unknown_keys_and_wrong_types_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="objective.alhpa"):
        Config.from_dict({"objective": {"alhpa": 0.5}})
    with pytest.raises(ConfigError, match="train.steps"):
        Config.from_dict({"train": {"steps": "many"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        Config.load(bad)


def test_resolution_order_defaults_preset_file_flags(tmp_path: Path) -> None:
    file = tmp_path / "over.yaml"
    file.write_text("objective:\n  alpha: 0.3\ntrain:\n  steps: 7\n")
    args = build_parser().parse_args(["config", "--preset", "tiny-wide", "--config", str(file),
                                      "--train.steps", "9", "--data.tasks", "a/b,c/d"])
    cfg = resolve_config(args)
    assert cfg.preset == "tiny-wide" and cfg.model.d_model == 128  # preset
    assert cfg.objective.alpha == 0.3  # file
    assert cfg.train.steps == 9  # flag beats file
    assert cfg.data.tasks == ["a/b", "c/d"]
    assert cfg.objective.beta == ObjectiveConfig().beta  # default


def test_a_dumped_config_reloads_through_the_cli(tmp_path: Path) -> None:
    cfg = Config.from_dict({"preset": "small-cpu", "train": {"steps": 3}})
    cfg.dump(tmp_path / "run.yaml")
    again = resolve_config(build_parser().parse_args(["config", "--config", str(tmp_path / "run.yaml")]))
    assert again == cfg


def test_assignments_become_typed_config_values() -> None:
    data = assignments(["objective.bc_target_sigma=4", "model.action_decode=argmax", "objective.alpha=0.5"])
    cfg = Config.from_dict(data)
    assert (cfg.objective.bc_target_sigma, cfg.objective.alpha, cfg.model.action_decode) == (4.0, 0.5, "argmax")
    assert cfg.train == Config().train  # nothing else moved


@pytest.mark.parametrize("item", ["objective.alpha", "alpha=0.5", ".alpha=0.5", "objective.=1"])
def test_malformed_assignments_are_named(item: str) -> None:
    with pytest.raises(ConfigError, match=item.replace(".", r"\.")):
        assignments([item])
