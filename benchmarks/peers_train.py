"""Train one d3rlpy peer on one task's episodes and save its policy as TorchScript (runs in the peers' venv).

This file imports d3rlpy, never `pac`: d3rlpy pins its own gymnasium and is a benchmark-only dependency in its
own environment (`benchmarks/peers-setup`). `benchmarks/peers.py` writes the episodes (`--data`, an .npz of
float arrays only), runs this script with the peers' interpreter, and evaluates the saved policy with the
project's own rollout. Algorithms at d3rlpy's default hyper-parameters, states standardised by d3rlpy's
`StandardObservationScaler` (as the TD3+BC and IQL papers do):

    bc      behaviour cloning (deterministic, MSE)
    pbc     %BC: BC on the top 30% of episodes by return
    td3bc   TD3+BC (Fujimoto & Gu 2021)
    iql     implicit Q-learning (Kostrikov et al. 2022)

    .venv-peers/bin/python benchmarks/peers_train.py --data task.npz --algo iql --steps 20000 --seed 0 \\
        --output policy.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ALGOS = ("bc", "pbc", "td3bc", "iql")
TOP_FRACTION = 0.3  # %BC keeps this fraction of episodes, best returns first
CRITICS = ("td3bc", "iql")  # the peers with a Q function to probe


def episode_slices(episode_ends: np.ndarray) -> list[slice]:
    """Transition ranges of the episodes, from their cumulative end indices."""
    starts = np.concatenate([[0], episode_ends[:-1]])
    return [slice(int(s), int(e)) for s, e in zip(starts, episode_ends, strict=True)]


def load(path: Path, algo: str) -> dict[str, np.ndarray]:
    """The episodes of `path` as flat transition arrays; %BC keeps its top episodes by return."""
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    slices = episode_slices(data["episode_ends"])
    if algo == "pbc":
        returns = np.array([data["rewards"][s].sum() for s in slices])
        keep = np.argsort(-returns, kind="stable")[: max(1, round(TOP_FRACTION * len(slices)))]
        slices = [slices[i] for i in sorted(keep)]
    cat = {k: np.concatenate([data[k][s] for s in slices]) for k in ("observations", "actions", "rewards",
                                                                   "terminals", "timeouts")}
    return cat


def make_algo(algo: str, seed: int) -> object:
    import d3rlpy

    d3rlpy.seed(seed)
    scaler = d3rlpy.preprocessing.StandardObservationScaler()
    if algo in ("bc", "pbc"):
        return d3rlpy.algos.BCConfig(observation_scaler=scaler).create(device="cpu:0")
    if algo == "td3bc":
        return d3rlpy.algos.TD3PlusBCConfig(observation_scaler=scaler).create(device="cpu:0")
    if algo == "iql":
        return d3rlpy.algos.IQLConfig(observation_scaler=scaler).create(device="cpu:0")
    raise ValueError(f"unknown algorithm {algo!r}; choose from {', '.join(ALGOS)}")


def check_export(path: Path, algo: object, observations: np.ndarray) -> None:
    """The saved graph must act as the trained algorithm does on raw states (its scaler inside), or the
    evaluation would measure something else."""
    import torch

    exported = torch.jit.load(str(path)).eval()
    with torch.no_grad():
        got = exported(torch.from_numpy(observations)).numpy()
    want = algo.predict(observations)  # type: ignore[attr-defined]
    if not np.allclose(got, want, atol=1e-4):
        raise RuntimeError(f"{path}: the TorchScript policy disagrees with the trained algorithm (max difference "
                           f"{np.abs(got - want).max():.3g}); this d3rlpy version may export without its scaler")


def probe_critic(algo: object, observations: np.ndarray, actions: np.ndarray, samples: int = 32,
                 seed: int = 0) -> dict[str, float]:
    """`benchmarks/quality.py`'s critic probe for a d3rlpy critic, on the expert's states and actions.

    `critic_expert_pct` / `critic_greedy_pct`: how often the expert's / the policy's action has a higher Q than
    `samples` uniform random actions; `critic_mirror_pct`: how often the expert's action beats its mirror image
    -a (ties count half: 0.5 = the critic cannot tell which way to act); `greedy_expert_dist`: mean
    |policy action - expert action|.
    """
    n, a = actions.shape
    greedy = np.asarray(algo.predict(observations), np.float32)  # type: ignore[attr-defined]
    uniform = np.random.default_rng(seed).uniform(-1, 1, (n, samples, a)).astype(np.float32)
    cand = np.concatenate([actions[:, None], greedy[:, None], -actions[:, None], uniform], 1)  # (N, 3+S, A)
    q = np.asarray(algo.predict_value(np.repeat(observations, cand.shape[1], 0),  # type: ignore[attr-defined]
                                      cand.reshape(-1, a))).reshape(n, -1)

    def above(col: int, others: np.ndarray) -> float:
        return float(((q[:, col:col + 1] > others) + 0.5 * (q[:, col:col + 1] == others)).mean())

    return {"critic_expert_pct": above(0, q[:, 3:]), "critic_greedy_pct": above(1, q[:, 3:]),
            "critic_mirror_pct": above(0, q[:, 2:3]),
            "greedy_expert_dist": float(np.abs(greedy - actions).mean())}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="episodes .npz written by benchmarks/peers.py")
    p.add_argument("--algo", choices=ALGOS, required=True)
    p.add_argument("--steps", type=int, default=20_000, help="gradient steps (d3rlpy's default batch size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, required=True, help="TorchScript policy: normalised state -> action")
    p.add_argument("--probe", type=Path, help="expert states .npz (observations, actions): probe the critic "
                                              f"after training ({', '.join(CRITICS)}), results in the .json")
    args = p.parse_args(argv)
    if args.probe and args.algo not in CRITICS:
        p.error(f"--probe: {args.algo} has no critic (those with one: {', '.join(CRITICS)})")

    import d3rlpy
    import torch

    torch.set_num_threads(int(torch.get_num_threads()))
    data = load(args.data, args.algo)
    dataset = d3rlpy.dataset.MDPDataset(data["observations"], data["actions"], data["rewards"],
                                        data["terminals"], timeouts=data["timeouts"],
                                        action_space=d3rlpy.constants.ActionSpace.CONTINUOUS)
    algo = make_algo(args.algo, args.seed)
    start = time.perf_counter()
    algo.fit(dataset, n_steps=args.steps, n_steps_per_epoch=args.steps, show_progress=False,
             save_interval=10**9, experiment_name=f"{args.algo}-{args.seed}", with_timestamp=False,
             logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    seconds = time.perf_counter() - start
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(args.output.stem + ".partial.pt")  # d3rlpy picks the format by suffix
    algo.save_policy(str(partial))  # TorchScript: raw observation -> action in [-1, 1] (scaler included)
    check_export(partial, algo, data["observations"][:64])
    info = {"algo": args.algo, "seed": args.seed, "steps": args.steps, "train_seconds": seconds,
            "transitions": len(data["actions"]), "d3rlpy": d3rlpy.__version__}
    if args.probe:
        with np.load(args.probe, allow_pickle=False) as f:
            info["probe"] = probe_critic(algo, f["observations"], f["actions"])
    partial.replace(args.output)  # a killed run leaves no policy that looks finished
    args.output.with_suffix(".json").write_text(json.dumps(info))
    print(f"{args.algo} seed {args.seed}: {args.steps} steps on {len(data['actions'])} transitions in "
          f"{seconds:.0f} s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
