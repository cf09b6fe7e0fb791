"""Where evaluation, collection and finetuning get a trained network: an export (local path or a
name/`s3://` URI in the store, as `pac train` writes under `<train.output>/export`) or an MLflow model
URI (`models:/NAME@champion`, `models:/NAME/3`, `runs:/...`)."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from pac.config import Config
from pac.networks import PerceiverActorCritic
from pac.storage import StorageNotFoundError, open_store, resolve_uri
from pac.training.export import CONFIG, WEIGHTS, ExportError, load_export

_MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
RUN_INFO = "run.json"  # written beside an export by the training loop: the MLflow run that produced it


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(_MLFLOW_SCHEMES)


def load_model(uri: str, cfg: Config) -> tuple[PerceiverActorCritic, Config]:
    """The network at `uri` (eval mode, CPU) and the config it was trained with."""
    if is_mlflow_uri(uri):
        from pac.tracking import load_policy

        return load_policy(uri, cfg.tracking)
    store = open_store(resolve_uri(uri, cfg.storage), cfg.storage)
    local = store.local_path("")
    if local is not None:
        net, source_cfg = load_export(local)
    else:
        with tempfile.TemporaryDirectory(prefix="pac-model-") as tmp:
            for name in (WEIGHTS, CONFIG):
                store.get_file(name, Path(tmp) / name)
            net, source_cfg = load_export(tmp)
    return net.eval(), source_cfg


def source_run_id(uri: str, cfg: Config) -> str | None:
    """The MLflow run that produced the model at `uri`, if known (a finetuning run's parent)."""
    if is_mlflow_uri(uri):
        if uri.startswith("runs:/"):
            return uri.removeprefix("runs:/").split("/", 1)[0]
        if uri.startswith("models:/"):
            from pac.tracking import model_version_run_id

            return model_version_run_id(uri, cfg.tracking)
        return None
    store = open_store(resolve_uri(uri, cfg.storage), cfg.storage)
    try:
        return json.loads(store.get_bytes(RUN_INFO)).get("run_id")
    except StorageNotFoundError:
        return None


def load_weights(uri: str, cfg: Config) -> tuple[dict[str, torch.Tensor], Config]:
    """The network state dict at `uri`, checked to fit `cfg.model` (a named mismatch otherwise), and the
    config it was trained with."""
    net, source_cfg = load_model(uri, cfg)
    # The state statistics are the data's, not the architecture's: the finetune inherits the source's.
    diff = [f.name for f in dataclasses.fields(cfg.model)
            if f.name != "proprio_stats" and getattr(cfg.model, f.name) != getattr(source_cfg.model, f.name)]
    if diff:
        raise ExportError(f"{uri} holds a model of preset {source_cfg.preset!r}; this run is preset {cfg.preset!r} "
                          f"(fields differ: {', '.join(diff)}). Use --preset {source_cfg.preset}")
    return net.state_dict(), source_cfg
