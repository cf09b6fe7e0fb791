"""Where finetuning starts from: consolidated weights from an export (local or s3://) or MLflow."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch

from pac.config import Config
from pac.storage import open_store, resolve_uri
from pac.training.export import CONFIG, WEIGHTS, ExportError, load_export

_MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def load_weights(uri: str, cfg: Config) -> dict[str, torch.Tensor]:
    """The network state dict at `uri`, checked to fit `cfg.model` (a named mismatch otherwise).

    `uri`: an export directory (local path, or a name/`s3://` URI in the store, as `pac train` writes
    under `<train.output>/export`), or an MLflow model URI (`models:/NAME@champion`, `runs:/...`).
    """
    if uri.startswith(_MLFLOW_SCHEMES):
        from pac.tracking import load_policy

        net, source_cfg = load_policy(uri, cfg.tracking)
    else:
        store = open_store(resolve_uri(uri, cfg.storage), cfg.storage)
        local = store.local_path("")
        if local is not None:
            net, source_cfg = load_export(local)
        else:
            with tempfile.TemporaryDirectory(prefix="pac-init-") as tmp:
                for name in (WEIGHTS, CONFIG):
                    store.get_file(name, Path(tmp) / name)
                net, source_cfg = load_export(tmp)
    if source_cfg.model != cfg.model:
        diff = [f.name for f in dataclasses.fields(cfg.model)
                if getattr(cfg.model, f.name) != getattr(source_cfg.model, f.name)]
        raise ExportError(f"{uri} holds a model of preset {source_cfg.preset!r}; this run is preset {cfg.preset!r} "
                          f"(fields differ: {', '.join(diff)}). Use --preset {source_cfg.preset}")
    return net.state_dict()
