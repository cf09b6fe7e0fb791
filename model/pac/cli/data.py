"""`pac data ...`: dataset commands (ingest, check-store, upgrade, inspect, generate).

Each subcommand is one function decorated with `@subcommand` that adds its parser to the `data`
group; adding a command is appending one such function to this module.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pac.cli.common import add_config_flags, resolve_config
from pac.config import EPISODE_QUALITIES

if TYPE_CHECKING:
    from pac.data.dataset import Dataset
    from pac.data.manifest import Manifest

AddSubcommand = Callable[[argparse._SubParsersAction], None]
F = TypeVar("F", bound=AddSubcommand)

SUBCOMMANDS: list[AddSubcommand] = []
_SPARK = " ▁▂▃▄▅▆▇█"


def subcommand(add: F) -> F:
    """Register a function that adds one `pac data <name>` subparser (sets `func` via `set_defaults`)."""
    SUBCOMMANDS.append(add)
    return add


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: ingest, upgrade, inspect, generate",
                       description="Versioned, immutable episode datasets on local disk or S3 (see docs/data.md).")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    for add in SUBCOMMANDS:
        add(data_sub)


def add_output_flags(p: argparse.ArgumentParser) -> None:
    """`--uri-file` and `--no-progress`, shared by the commands that publish a version."""
    p.add_argument("--uri-file", metavar="PATH", help="also write the version's URI to this file (pipeline output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@subcommand
def add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest", help="validate episodes and publish them as a new dataset version",
        description="Read episodes from Minari datasets or .npz/HDF5 episode files, validate every one, write "
                    "checksummed shards and publish the next version NAME/vNNNN (the manifest is written last: "
                    "a failed ingest leaves no visible version). Prints the versioned dataset URI.")
    p.add_argument("--source", action="append", required=True, metavar="SPEC",
                   help="minari:DATASET_ID, minari:/path/to/dataset, an episode file (.npz/.h5/.hdf5) or a directory "
                        "of them; repeat for several sources")
    p.add_argument("--dataset", required=True, metavar="NAME",
                   help="dataset name (under storage.root) or URI, e.g. control or s3://bucket/datasets/control")
    p.add_argument("--task", default="", metavar="ID",
                   help="task id for every episode (required for Minari; accepted even if not in `pac tasks`)")
    p.add_argument("--instruction", default="", help="instruction text for every episode (default: from the file, "
                                                     "else the registry's)")
    p.add_argument("--quality", default="", choices=["", *EPISODE_QUALITIES], help="quality label for every episode")
    p.add_argument("--append", action="store_true",
                   help="the new version also contains all episodes of the latest one")
    add_output_flags(p)
    add_config_flags(p, ["data", "storage"])
    p.set_defaults(func=ingest_command)


def ingest_command(args: argparse.Namespace) -> int:
    from pac.data.ingest import ingest, registry_tasks
    from pac.data.sources import Overrides, open_source

    cfg = resolve_config(args)
    over = Overrides(task=args.task, instruction=args.instruction, quality=args.quality)
    opened = [open_source(spec, over) for spec in args.source]
    allowed = registry_tasks() | ({args.task} if args.task else set())
    ref = ingest(itertools.chain.from_iterable(it for it, _ in opened), args.dataset, storage=cfg.storage,
                 data=cfg.data, allowed_tasks=allowed, sources=[rec for _, rec in opened], append=args.append,
                 progress=not args.no_progress)
    if args.uri_file:
        Path(args.uri_file).write_text(str(ref))
    print(ref)
    return 0


@subcommand
def add_check_store(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-store", help="check the object store is reachable and writable; optionally create the bucket",
        description="Check that storage.root (or --root) can be listed and written with the credentials in the "
                    "environment, waiting up to --wait seconds for the endpoint to come up. The helm chart's "
                    "bucket-initialisation Job runs it with --create-bucket, its `helm test` hook without.")
    p.add_argument("--root", help="the store to check (default: storage.root), e.g. s3://pac/store")
    p.add_argument("--create-bucket", action="store_true", help="create the s3:// root's bucket if it is missing")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="keep retrying an unreachable endpoint this long (a server still starting)")
    add_config_flags(p, ["storage"])
    p.set_defaults(func=check_store_command)


def check_store_command(args: argparse.Namespace) -> int:
    import time

    from pac.s3 import S3Store
    from pac.storage import StorageUnreachableError, open_store

    cfg = resolve_config(args)
    store = open_store(args.root or cfg.storage.root, cfg.storage)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            if args.create_bucket and isinstance(store, S3Store):
                store.create_bucket()
            store.check(write=True)
            break
        except StorageUnreachableError as e:
            if time.monotonic() >= deadline:
                raise
            print(f"waiting for the object store: {e}", file=sys.stderr)
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    print(f"ok: {store.url()} is reachable, listable and writable")
    return 0


@subcommand
def add_upgrade(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upgrade", help="publish a dataset version again with the summaries this pac keeps (no data copied)",
        description="Read back the shards whose manifest entry predates a summary this pac keeps (each episode's "
                    "quality label, per-quality state statistics for training on data.qualities) and publish the "
                    "next version naming the same shards with those summaries added; every other statistic stays "
                    "as it was. Prints the new version's URI, or the given one when nothing is missing.")
    p.add_argument("dataset", metavar="DATASET_URI", help="name, path or s3:// URI, optionally @vNNNN / @latest")
    add_output_flags(p)
    add_config_flags(p, ["data", "storage"])
    p.set_defaults(func=upgrade_command)


def upgrade_command(args: argparse.Namespace) -> int:
    from pac.data.dataset import default_cache_dir, open_dataset
    from pac.data.ingest import upgrade

    cfg = resolve_config(args)
    ref = upgrade(args.dataset, storage=cfg.storage, cache_dir=default_cache_dir(cfg.data, cfg.storage),
                  progress=not args.no_progress)
    if ref is None:
        uri = open_dataset(args.dataset, cfg.storage).uri
        print(f"{uri} already has every summary; nothing published", file=sys.stderr)
    else:
        uri = str(ref)
    if args.uri_file:
        Path(args.uri_file).write_text(uri)
    print(uri)
    return 0


@subcommand
def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="summarise a dataset: versions, counts, per-task returns, qualities",
        description="Print a dataset's published versions and, for the selected one (NAME@vNNNN, default the "
                    "latest), its counts, per-task return statistics with a histogram, quality labels and sources.")
    p.add_argument("dataset", metavar="DATASET_URI", help="name, path or s3:// URI, optionally @vNNNN / @latest")
    p.add_argument("--json", action="store_true", help="print the version's manifest (with derived statistics)")
    p.add_argument("--verify", action="store_true",
                   help="also check every shard's sha256 (downloads s3:// shards into data.cache_dir)")
    add_config_flags(p, ["data", "storage"])
    p.set_defaults(func=inspect_command)


def inspect_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pac.data.dataset import default_cache_dir, list_versions, open_dataset

    cfg = resolve_config(args)
    ds = open_dataset(args.dataset, cfg.storage)
    if args.json:
        print(ds.manifest.to_json())
    else:
        others = {v: open_dataset(f"{ds.ref.uri}@{v}", cfg.storage).manifest if v != ds.ref.version else ds.manifest
                  for v in list_versions(ds.ref.uri, cfg.storage)}
        print(describe(ds, others))
    if args.verify:
        cache = default_cache_dir(cfg.data, cfg.storage)
        for info in tqdm(ds.manifest.shards, desc="verify", unit="shard", file=sys.stderr):
            ds.local_shard(info, cache)
        print(f"verified {len(ds.manifest.shards)} shards of {ds.uri}: sha256 OK", file=sys.stderr)
    return 0


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def sparkline(counts: list[float]) -> str:
    """Histogram counts as block characters (empty bins blank, the largest bin a full block)."""
    top = max(counts, default=0)
    return "".join(_SPARK[0] if c == 0 else _SPARK[max(1, round(c / top * (len(_SPARK) - 1)))] for c in counts)


def describe(ds: Dataset, versions: dict[int, Manifest]) -> str:
    """A readable summary of a dataset version and the list of all versions (what `pac data inspect` prints)."""
    from pac.data.dataset import version_dir

    m = ds.manifest
    lines = [f"dataset {ds.ref.uri}", "versions:"]
    for v, other in sorted(versions.items()):
        c = other.counts
        note = f"  (appends {version_dir(other.parent)})" if other.parent else ""
        mark = "*" if v == m.version else " "
        lines.append(f" {mark} {version_dir(v)}  {other.created}  {c['episodes']:,} episodes  {c['transitions']:,} "
                     f"transitions  {c['shards']} shards  {_bytes(c['bytes'])}{note}")
    c = m.counts
    lines += ["", ds.uri, f"  schema {m.schema_version}, created {m.created}",
              f"  {c['episodes']:,} episodes, {c['transitions']:,} transitions, {c['tokens']:,} tokens, "
              f"{c['shards']} shards ({_bytes(c['bytes'])})",
              "  qualities: " + ", ".join(f"{q} {n:,}" for q, n in sorted(m.qualities.items()))]
    lines += ["  source: " + " ".join(f"{k}={v}" for k, v in src.items()) for src in m.sources]
    lines += ["", f"  {'task':<22} {'episodes':>8} {'transitions':>11} {'P':>3} {'A':>2}  {'return mean ± std':>19}  "
                  f"{'min':>8} {'histogram':<10} {'max':<8}  qualities"]
    for task, st in m.tasks.items():
        ms = f"{st.return_mean:.2f} ± {st.return_std:.2f}"
        quals = ", ".join(f"{q} {n}" for q, n in sorted(st.qualities.items()))
        lines.append(f"  {task:<22} {st.episodes:>8,} {st.transitions:>11,} {st.proprio_dim:>3} {st.action_dim:>2}  "
                     f"{ms:>19}  {st.return_min:>8.2f} {sparkline(st.return_histogram['counts']):<10} "
                     f"{st.return_max:<8.2f}  {quals}")
        images = f"  images {'x'.join(map(str, st.image_shape))}" if st.image_shape else ""
        lines.append(f"  {'':<22} instruction: {st.instruction!r}{images}")
    return "\n".join(lines)


@subcommand
def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="simulate behaviour policies on the task suite and publish the episodes as a dataset version",
        description="Run the random, noisy, damped and expert behaviour policies (generate.qualities) on the tasks "
                    "(generate.tasks, see `pac tasks`) for generate.episodes_per_policy episodes each (per quality: "
                    "generate.quality_episodes), on generate.workers processes, stream the episodes into the next "
                    "version of --dataset, and print a per-task return table with histograms. Seeds are derived from "
                    "generate.seed, task, quality and episode index (deterministic, whatever the worker count). "
                    "The realistic benchmark: `pac data generate --config benchmark --dataset benchmark` "
                    "(100 episodes x 1000 steps per task, 30% random / 40% degraded / 30% expert).")
    p.add_argument("--dataset", required=True, metavar="NAME",
                   help="dataset name (under storage.root) or URI, e.g. control or s3://bucket/datasets/control")
    p.add_argument("--append", action="store_true",
                   help="the new version also contains all episodes of the latest one")
    p.add_argument("--force", action="store_true",
                   help="generate even when the latest version already holds this configuration's episodes")
    add_output_flags(p)
    add_config_flags(p, ["generate", "data", "storage"])
    p.set_defaults(func=generate_command)


def generate_command(args: argparse.Namespace) -> int:
    from pac.workflow import generate_dataset

    ref, stats = generate_dataset(resolve_config(args), args.dataset, append=args.append, reuse=not args.force,
                                  progress=not args.no_progress)
    if stats is None:
        print(f"{ref} already holds the episodes of this configuration; nothing generated (--force "
              "generates a new version anyway)", file=sys.stderr)
    else:
        print(stats.table(), file=sys.stderr)
    if args.uri_file:
        Path(args.uri_file).write_text(str(ref))
    print(ref)
    return 0
