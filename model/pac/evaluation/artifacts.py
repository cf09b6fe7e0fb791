"""What an evaluation leaves for people: videos, the score plot, results.md and an HTML page."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from pac.evaluation.reports import EvalReport
from pac.evaluation.rollout import TaskRollout

log = logging.getLogger(__name__)


class Tracker(Protocol):
    """What evaluation needs from `pac.tracking.Tracker` (an MLflow run)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def write_video(frames: np.ndarray, path: str | Path, fps: float) -> Path:
    """Encode frames (F, H, W, 3) uint8 as H.264 MP4 (imageio-ffmpeg), or as GIF when ffmpeg is unavailable.

    Args:
        frames: the video.
        path: target path; its suffix is replaced by `.mp4` or `.gif`.
        fps: playback rate.

    Returns:
        The written file.
    """
    import imageio.v2 as imageio

    path = Path(path)
    try:
        import imageio_ffmpeg  # noqa: F401  (the MP4 writer's backend; absent -> GIF)

        out = path.with_suffix(".mp4")
        imageio.mimwrite(out, list(frames), fps=fps, codec="libx264", pixelformat="yuv420p", quality=7,
                         macro_block_size=16)
        return out
    except (ImportError, RuntimeError, OSError) as e:
        log.warning("MP4 encoding unavailable (%s); writing a GIF instead", e)
    out = path.with_suffix(".gif")
    imageio.mimwrite(out, list(frames), duration=1000.0 / fps, loop=0)
    return out


def plot_scores(report: EvalReport, path: str | Path) -> Path:
    """Bar plot of the normalised score per task with 95% CI error bars (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = list(report.tasks.values())
    scores = np.array([t.normalized_score for t in tasks])
    low = np.array([t.normalized_score - t.normalized_ci95[0] if t.normalized_ci95 else 0.0 for t in tasks])
    high = np.array([t.normalized_ci95[1] - t.normalized_score if t.normalized_ci95 else 0.0 for t in tasks])
    # An object-oriented Figure with its own canvas: no pyplot global state, no display backend needed.
    fig = Figure(figsize=(max(4.0, 1.0 * len(tasks) + 2.0), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(tasks))
    ax.bar(x, scores, yerr=np.stack([low, high]), capsize=4, color="tab:blue", alpha=0.8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(x, [t.task for t in tasks], rotation=30, ha="right")
    ax.set_ylabel("normalised score (0 random, 1 max)")
    title = f"{report.policy}" + (f" @ step {report.step}" if report.step is not None else "")
    ax.set_title(title if len(title) <= 60 else "..." + title[-57:], fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def write_outputs(report: EvalReport, rollouts: Mapping[str, TaskRollout], output_dir: str | Path) -> dict[str, Path]:
    """Write report.json, results.md, scores.png and the videos; fill `report.files` and the task video lists."""
    out = Path(output_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for task, ro in rollouts.items():
        for r in ro.results:
            if r.frames is not None:
                written = write_video(r.frames, out / "videos" / f"{_slug(task)}_ep{r.index:03d}", r.fps)
                report.tasks[task].videos.append(str(written.relative_to(out)))
                files[f"video:{task}:{r.index}"] = written
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (out / "results.md").write_text(report.table() + "\n")
    files["report"], files["table"] = out / "report.json", out / "results.md"
    files["plot"] = plot_scores(report, out / "scores.png")
    report.files = files
    return files


def html_report(output_dir: str | Path) -> str:
    """One self-contained HTML page of an evaluation directory (`write_outputs`): the table and the plot
    embedded, for viewers that show a single file (the Kubeflow UI's HTML artifact)."""
    import base64
    import html

    out = Path(output_dir)
    report = EvalReport.load(out / "report.json")
    plot = ""
    if (out / "scores.png").is_file():
        data = base64.b64encode((out / "scores.png").read_bytes()).decode()
        plot = f'<img alt="normalised score per task" src="data:image/png;base64,{data}">'
    rows = "".join(
        f"<tr><td>{html.escape(t)}</td><td>{r.episodes}</td><td>{r.return_mean:.1f}</td>"
        f"<td>{r.normalized_score:.3f}</td><td>{'n/a' if r.success_rate is None else f'{r.success_rate:.0%}'}</td></tr>"
        for t, r in report.tasks.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>PAC evaluation</title></head><body>"
            f"<h1>Evaluation of {html.escape(report.policy)}</h1>"
            f"<p>mean normalised score <b>{report.mean_normalized_score:.3f}</b></p>"
            f"<table border='1' cellpadding='4'><tr><th>task</th><th>episodes</th><th>return</th>"
            f"<th>normalised</th><th>success</th></tr>{rows}</table>{plot}</body></html>")
