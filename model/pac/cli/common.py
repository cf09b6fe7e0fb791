"""CLI flags derived from the config dataclasses, so no default is ever repeated in argparse.

Every field of a config section becomes `--<section>.<field>`; its help text is the comment on the
field's line in `pac/config.py` and its default is shown from the dataclass. Resolution order:
dataclass defaults < `--preset` < `--config FILE` < explicit flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import os
import re
import typing
from collections.abc import Sequence
from importlib import resources
from typing import Any

from pac import config as C
from pac.presets import model_config

SECTIONS: dict[str, type] = {
    "model": C.ModelConfig, "objective": C.ObjectiveConfig, "data": C.DataConfig, "generate": C.GenerateConfig,
    "train": C.TrainConfig, "eval": C.EvalConfig, "improve": C.ImproveConfig, "storage": C.StorageConfig,
    "tracking": C.TrackingConfig, "cluster": C.ClusterConfig,
}


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The trailing `# comment` of each field line in the dataclass source, as its help text."""
    docs: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+):[^#]*#\s*(.+)$", line)
        if m:
            docs[m.group(1)] = m.group(2).strip()
    return docs


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    if origin is list:
        return "A,B,..."
    if origin is dict:
        return "K=V,..."
    return getattr(tp, "__name__", str(tp)).upper()


def recipe_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("pac").joinpath("recipes").iterdir()
                  if p.name.endswith(".yaml"))


def config_file(value: str) -> str:
    """`--config`'s file: a path, else the recipe of that name shipped in pac/recipes."""
    if os.path.exists(value) or value not in recipe_names():
        return value  # a missing path is reported by read_overrides, naming it
    return str(resources.files("pac").joinpath(f"recipes/{value}.yaml"))


def add_config_flags(parser: argparse.ArgumentParser, sections: Sequence[str]) -> None:
    """Add `--config`, `--preset`, `--seed` and one flag per field of the named config sections."""
    parser.add_argument("--config", metavar="FILE|RECIPE",
                        help="YAML/JSON file of config overrides (see `pac config`), or a recipe shipped with pac: "
                             f"{', '.join(recipe_names())} (pac/recipes/NAME.yaml)")
    if "model" in sections:
        parser.add_argument("--preset", help="model size preset, see `pac presets` (default: tiny)")
    parser.add_argument("--seed", type=int, help="global random seed (default: 0)")
    for section in sections:
        cls = SECTIONS[section]
        group = parser.add_argument_group(f"{section} options")
        docs = field_docs(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            tp = C.field_types(cls)[f.name]
            if typing.get_origin(tp) is dict and dataclasses.is_dataclass(typing.get_args(tp)[1]):
                continue  # recorded by a run from its data (model.proprio_stats), not a setting
            default = getattr(defaults, f.name)
            help_text = f"{docs.get(f.name, '')} (default: {default!r})".strip()
            group.add_argument(f"--{section}.{f.name}", dest=f"{section}.{f.name}", default=argparse.SUPPRESS,
                               metavar=_type_name(tp), help=help_text.replace("%", "%%"))


def resolve_config(args: argparse.Namespace) -> C.Config:
    """Build the resolved `Config` from defaults, preset, config file and flags (in that order)."""
    file = C.read_overrides(config_file(args.config)) if getattr(args, "config", None) else {}
    flag_preset = getattr(args, "preset", None)
    preset = flag_preset or file.get("preset") or C.Config.preset
    overrides = {k: v for k, v in file.items() if k != "preset"}
    if flag_preset:
        # An explicit --preset replaces the file's model section (a dumped config carries a full one).
        overrides.pop("model", None)
    data = C.merge(C.Config(preset=preset, model=model_config(preset)).to_dict(), overrides)
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".", 1)
            data.setdefault(section, {})[name] = value
    if getattr(args, "seed", None) is not None:
        data["seed"] = args.seed
    return C.Config.from_dict(data)
