"""`pac presets` and `pac config`: inspect model sizes and resolved configurations."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from pac.cli.common import SECTIONS, add_config_flags, resolve_config
from pac.presets import PRESETS, model_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list model size presets with parameter counts",
                       description="List the named model size presets: parameter count and key dimensions.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=presets)

    p = sub.add_parser("config", help="print the resolved configuration (YAML)",
                       description="Resolve defaults < --preset < --config FILE < flags and print the result; "
                                   "the output can be saved and passed back with --config.")
    add_config_flags(p, list(SECTIONS))
    p.add_argument("--output", "-o", help="write to this file (.yaml or .json) instead of stdout")
    p.set_defaults(func=show_config)


def presets(args: argparse.Namespace) -> int:
    from pac.networks import count_parameters  # torch import only when needed

    rows = []
    for name in PRESETS:
        cfg = model_config(name)
        rows.append({"name": name, "parameters": count_parameters(cfg), "d_model": cfg.d_model,
                     "num_latents": cfg.num_latents, "num_blocks": cfg.num_blocks, "num_heads": cfg.num_heads})
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'preset':<10} {'parameters':>14} {'d_model':>8} {'latents':>8} {'blocks':>7} {'heads':>6}")
    for r in rows:
        print(f"{r['name']:<10} {r['parameters']:>14,} {r['d_model']:>8} {r['num_latents']:>8} "
              f"{r['num_blocks']:>7} {r['num_heads']:>6}")
    return 0


def show_config(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.output:
        cfg.dump(args.output)
        print(f"wrote {args.output}")
    else:
        yaml.safe_dump(cfg.to_dict(), sys.stdout, sort_keys=False)
    return 0
