"""The ONE rollout implementation, shared by `pac evaluate`, the training loop's evaluation hook and collection.

Everything that runs a policy in the simulator goes through `iter_rollout` (or `rollout`, which
gathers it), so evaluation scores, training-time curves and collected datasets can never disagree
about seeding, action clipping, observation conventions or episode boundaries.

    source = NetworkPolicy(net, cfg.eval)                           # or ScriptedSource(make_expert), ...
    report = evaluate(source, plan_tasks(cfg, cfg.eval), cfg.eval, output_dir="eval")
    print(report.table())

Rollout semantics:

- **Batched inference.** `num_envs` environments of one task are stepped together; every control step
  the `ActionSource` is asked once for the actions of all *running* environments (one forward pass
  for a network). When an episode ends, its environment starts the next episode still to run, or
  stops being stepped when none is left.
- **Fixed seeds.** Episode `i` of task `t` always starts from `episode_seed(cfg.seed, t, i)`, and a
  source draws any randomness of that episode from a generator seeded with the same number, so an
  episode's outcome depends on neither `num_envs` nor the other tasks (`stream` separates the
  evaluation seeds from the collection seeds: collected data never replays the evaluation's initial
  states).
- **Actions** are clipped to the task's bounds (`Env.clip`); episodes record the clipped, executed
  action.

The package, by concern: `plans` (which tasks, seeds, whether the model fits), `policies` (action
sources), `rollout` (the rollout), `reports` (statistics), `artifacts` (videos, plots, pages), `run`
(`evaluate` and its entry points).

Reports (per task): mean return with a 95% Student-t confidence interval over episodes; the normalised score
`(R - R_random) / (R_max - R_random)`, where `R_random` is the mean return of a uniform random policy measured
on the same seeded episodes in the same evaluation and `R_max` the task's maximum return
(`TaskSpec.max_return`); the success rate where the task defines success; the mean episode length. `evaluate`
writes `report.json`, `results.md`, `scores.png` and videos.
"""

from pac.evaluation.artifacts import Tracker, html_report, plot_scores, write_outputs, write_video
from pac.evaluation.plans import (
    ModelMismatchError,
    TaskPlan,
    check_fit,
    episode_seed,
    plan_tasks,
    resolve_tasks,
    task_layout,
    training_manifest_tasks,
)
from pac.evaluation.policies import ActionSource, NetworkPolicy, ScriptedSource, random_source
from pac.evaluation.reports import (
    CI_METHOD,
    REPORT_FORMAT,
    SCORE_METHOD,
    EvalReport,
    TaskReport,
    mean_ci95,
    t_quantile_975,
)
from pac.evaluation.rollout import EpisodeResult, TaskRollout, iter_rollout, rollout
from pac.evaluation.run import evaluate, evaluate_model, load_policy_model, random_baseline, training_eval_hook
from pac.networks.acting import sample_bins, select_by_q

__all__ = [
    "CI_METHOD",
    "REPORT_FORMAT",
    "SCORE_METHOD",
    "ActionSource",
    "EpisodeResult",
    "EvalReport",
    "ModelMismatchError",
    "NetworkPolicy",
    "ScriptedSource",
    "TaskPlan",
    "TaskReport",
    "TaskRollout",
    "Tracker",
    "check_fit",
    "episode_seed",
    "evaluate",
    "evaluate_model",
    "html_report",
    "iter_rollout",
    "load_policy_model",
    "mean_ci95",
    "plan_tasks",
    "plot_scores",
    "random_baseline",
    "random_source",
    "resolve_tasks",
    "rollout",
    "sample_bins",
    "select_by_q",
    "t_quantile_975",
    "task_layout",
    "training_eval_hook",
    "training_manifest_tasks",
    "write_outputs",
    "write_video",
]
