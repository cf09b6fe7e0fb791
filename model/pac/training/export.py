"""Consolidated weights as safetensors plus the resolved config: the hand-off format to evaluation,
collection, finetuning and the MLflow model. Loading never unpickles anything.

Layout of an export directory:
    model.safetensors   the network's state dict (fp32)
    config.json         the resolved `Config` the network was trained with
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pac.config import Config, ConfigError, field_types
from pac.networks import PerceiverActorCritic, build_model

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class ExportError(ValueError):
    """An export directory is missing, corrupt or does not fit the expected model."""


def save_export(state_dict: dict[str, torch.Tensor], cfg: Config, directory: str | Path) -> Path:
    """Write weights (as fp32, contiguous) and config; the config is written last so a reader that
    finds it also finds complete weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in state_dict.items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"preset": cfg.preset, "sha256": weights_digest(tensors)})
    tmp.replace(directory / WEIGHTS)
    (directory / (CONFIG + ".tmp")).write_text(json.dumps(cfg.to_dict(), indent=2))
    (directory / (CONFIG + ".tmp")).replace(directory / CONFIG)
    return directory


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_export(directory: str | Path, device: str | torch.device = "cpu") -> tuple[PerceiverActorCritic, Config]:
    """Rebuild the network from an export directory; errors name the file and the mismatch."""
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG, directory / WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ExportError(f"{p} does not exist: not a PAC export directory (expected {CONFIG} + {WEIGHTS})")
    try:
        raw = json.loads(cfg_path.read_bytes())
    except ValueError as e:  # not JSON, or not UTF-8
        raise ExportError(f"{cfg_path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ExportError(f"{cfg_path} must hold a JSON object (a PAC config), not {type(raw).__name__}")
    try:
        cfg = Config.from_dict(drop_retired(upgrade_legacy(raw, str(directory)), str(directory)))
    except ConfigError as e:
        raise ExportError(f"{cfg_path} is not a valid PAC config: {e}") from e
    try:
        state = load_file(str(w_path), device=str(device))
        with safe_open(str(w_path), framework="pt") as f:
            saved = (f.metadata() or {}).get("sha256")
    except (SafetensorError, OSError) as e:
        raise ExportError(f"{w_path} is corrupt or truncated: {e}") from e
    # The header parses whatever the tensor bytes hold; the digest saved beside them catches flipped bits there
    # (exports written before it was recorded have none and load unchecked).
    if saved is not None and saved != weights_digest(state):
        raise ExportError(f"{w_path} does not match the checksum it was exported with: the weights were damaged "
                          "after export; refusing them")
    net = build_model(cfg.model, device)
    load_state_dict_checked(net, state, str(w_path), cfg.preset)
    return net, cfg


def upgrade_legacy(data: dict[str, Any], source: str) -> dict[str, Any]:
    """An export config written before state normalisation (issue 26), read as the network it describes.

    Such a config names neither `model.proprio_encoder` nor `model.proprio_norm`; its network has the
    per-scalar proprio encoder and was trained on raw states, so it is loaded that way (and says so) rather
    than with today's defaults, which its weights do not fit. One written before `model.proprio_squash` existed
    read its (standardised) states through symlog, and keeps doing so.
    """
    model = data.get("model")
    if not isinstance(model, dict):
        return data
    if "proprio_norm" in model and "proprio_squash" not in model:
        # Written before model.proprio_squash existed: its network was trained on symlog-squashed states.
        return {**data, "model": {**model, "proprio_squash": "symlog"}}
    if "proprio_norm" in model:
        return data
    log.warning("%s predates state normalisation: it reads raw states through the per-scalar encoder, as it was "
                "trained (retrain or finetune it to get per-task statistics)", source)
    return {**data, "model": {**model, "proprio_encoder": "scalar", "proprio_norm": "none", "proprio_squash": "symlog",
                              "action_decode": "argmax"}}


def drop_retired(data: dict[str, Any], source: str) -> dict[str, Any]:
    """An export config without the settings this pac no longer has, outside `model` (each named in a warning).

    Only `model` describes the network its weights fit, and an unknown key there stays an error. The other sections
    say how it was trained and how it acts by default; a setting removed since (an objective option tried and
    retired, say) must not make every model trained with it unloadable from the registry.
    """
    sections = field_types(Config)
    out: dict[str, Any] = {}
    dropped = []
    for key, value in data.items():
        if key not in sections:
            dropped.append(key)
        elif key != "model" and isinstance(value, dict) and dataclasses.is_dataclass(sections[key]):
            known = field_types(sections[key])
            dropped += [f"{key}.{k}" for k in value if k not in known]
            out[key] = {k: v for k, v in value.items() if k in known}
        else:
            out[key] = value
    if dropped:
        log.warning("%s was exported by a pac with setting(s) this one does not have: %s; ignored (they do not change "
                    "the network)", source, ", ".join(dropped))
    return out


def load_state_dict_checked(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str, preset: str) -> None:
    """`load_state_dict` with an error that names the source and the first mismatching tensors."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "",
            ", ".join(f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:3]),
        ]))
        raise ExportError(f"{source} does not fit a model of preset {preset!r} (was it saved from another "
                          f"preset?): {detail}")
    net.load_state_dict(state)
