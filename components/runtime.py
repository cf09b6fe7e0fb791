"""What a component does at run time, in the project image: run one `pac` command, read back its outputs.

Every KFP component in `pac.components.steps` is a shim over this module, which is a shim over the `pac` CLI:
the pipeline and a person at a terminal run the same code path. Overrides travel as a JSON mapping of config
sections (`{"train": {"steps": 100}}`) and reach the command as its `--config` file, so the library's typed
config validates them and names a bad one; nothing here holds a hyper-parameter default.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pac.config import parse_overrides

__all__ = ["StepError", "parse_overrides", "read_json", "run_pac"]


class StepError(RuntimeError):
    """A pipeline step's `pac` command failed; the message carries its exit status and command line."""


def run_pac(argv: Sequence[str], overrides: str = "") -> None:
    """Run `pac ARGV --config <overrides>` in this process; raise `StepError` unless it succeeds."""
    from pac.cli import main

    data = parse_overrides(overrides)
    with tempfile.TemporaryDirectory(prefix="pac-step-") as tmp:
        config = Path(tmp) / "overrides.json"
        config.write_text(json.dumps(data))
        rc = main([*argv, "--config", str(config)])
    if rc != 0:
        raise StepError(f"`pac {' '.join(argv)}` exited with status {rc} (its output above names the problem)")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
