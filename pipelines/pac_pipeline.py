"""The PAC pipeline: ingest -> pretrain -> evaluate -> K x (collect -> finetune -> evaluate) -> register -> promote.

`build(settings)` returns the `@dsl.pipeline` function for a `ClusterSettings` (secrets, scratch volume,
accelerators, scheduling, resources: what differs between clusters, fixed at compile time); `compile_pipeline`
writes its IR YAML. `pac pipeline compile` does both; the committed `pac_pipeline.yaml` is the default build,
which a user uploads in the Kubeflow Pipelines UI (a test fails when it is stale).

Pipeline parameters name config values; their defaults are read from the typed config (`pac.config`) when the
pipeline is built, so the pipeline holds no default of its own. The first step merges them with the JSON
`overrides` into one config-override document that every later step receives, after the typed config has
validated it (a wrong value fails there, naming the field).
"""


import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes
from pac.components import steps
from pac.config import Config

NAME = "pac"
COMPILED = Path(__file__).with_name("pac_pipeline.yaml")
_DEFAULTS = Config()


@dataclass
class ClusterSettings:
    """Cluster-specific settings compiled into the pipeline (kfp-kubernetes). None of them is a hyper-parameter.

    Secrets are Kubernetes Secrets in the run's namespace; the helm chart creates them (or names existing ones).
    """

    rounds: int = 1  # self-improvement rounds (collect -> finetune -> evaluate), unrolled at compile time
    image: str = ""  # every step's image, e.g. ghcr.io/acme/pac-k8s:0.1.0; empty: the components' pac-k8s:<version>
    s3_secret: str = "pac-s3"  # keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    mlflow_secret: str = "pac-mlflow"  # keys MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD (may be empty)
    config_map: str = "pac-endpoints"  # keys MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL (non-secret endpoints)
    scratch_pvc: str = ""  # an existing PVC mounted at /scratch in every step ("" for none)
    accelerator_type: str = ""  # e.g. nvidia.com/gpu ("" for CPU training)
    accelerator_limit: int = 1
    node_selector: dict[str, str] = field(default_factory=dict)  # training steps only
    tolerations: list[dict[str, str]] = field(default_factory=list)  # training steps only: key, operator, value, effect
    train_cpu: str = "2"
    train_memory: str = "8G"
    step_cpu: str = "1"
    step_memory: str = "4G"
    io_retries: int = 3  # retries of steps that only move data (ingest, register)
    # retries of a training step whose pod died (evicted, OOM-killed, node lost): the retry finds the run's
    # checkpoints under <output_root>/<run id>/ and resumes from the last one
    train_retries: int = 2

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")
        if self.train_retries < 0:
            raise ValueError(f"train_retries must be >= 0, got {self.train_retries}")
        if self.accelerator_limit < 1:
            raise ValueError(f"accelerator_limit must be >= 1, got {self.accelerator_limit}")


@dsl.component(base_image=steps.IMAGE, install_kfp_package=False)
def resolve_config(preset: str, tasks: str, train_steps: int, alpha: float, zero_stage: int, nodes: int,
                   gpus_per_node: int, overrides: str) -> str:
    """Merge the pipeline parameters into the overrides and validate them with the typed config."""
    from pac.config import pipeline_overrides

    return pipeline_overrides(preset=preset, tasks=tasks, train_steps=train_steps, alpha=alpha,
                              zero_stage=zero_stage, nodes=nodes, gpus_per_node=gpus_per_node, overrides=overrides)


def build(settings: ClusterSettings | None = None) -> Any:
    """The pipeline function for `settings` (default: the committed build)."""
    s = settings or ClusterSettings()

    def env(task: Any, *, training: bool = False, io: bool = False) -> Any:
        if s.image:
            task.set_container_image(s.image)
        kubernetes.use_secret_as_env(task, s.s3_secret, {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                                         "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
        kubernetes.use_secret_as_env(task, s.mlflow_secret, {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                                                             "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"},
                                     optional=True)
        task.set_env_variable("PAC_S3_SECRET_NAME", s.s3_secret)  # named in credential errors (pac.storage)
        kubernetes.use_config_map_as_env(task, s.config_map, {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
                                                              "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"})
        if s.scratch_pvc:
            kubernetes.mount_pvc(task, pvc_name=s.scratch_pvc, mount_path="/scratch")
        if training:
            task.set_cpu_request(s.train_cpu).set_memory_request(s.train_memory)
            if s.accelerator_type:
                task.set_accelerator_type(s.accelerator_type).set_accelerator_limit(s.accelerator_limit)
            for key, value in s.node_selector.items():
                kubernetes.add_node_selector(task, key, value)
            for t in s.tolerations:
                kubernetes.add_toleration(task, key=t.get("key"), operator=t.get("operator", "Equal"),
                                          value=t.get("value"), effect=t.get("effect"))
        else:
            task.set_cpu_request(s.step_cpu).set_memory_request(s.step_memory)
        if io:
            task.set_retry(num_retries=s.io_retries, backoff_duration="30s")
        elif training and s.train_retries:
            task.set_retry(num_retries=s.train_retries, backoff_duration="60s")
        if not io:
            task.set_caching_options(False)  # training and rollouts are not bit-reproducible across machines
        return task

    @dsl.pipeline(name=NAME, description="PAC offline RL: ingest, pretrain, evaluate, self-improvement rounds, "
                                         "register and gate the champion (Springenberg et al., ICML 2024)")
    def pac_pipeline(
        preset: str = _DEFAULTS.preset,
        dataset: str = "behaviour",
        generate_data: bool = True,
        tasks: str = ",".join(_DEFAULTS.generate.tasks),
        train_steps: int = _DEFAULTS.train.steps,
        alpha: float = _DEFAULTS.objective.alpha,
        zero_stage: int = _DEFAULTS.train.zero_stage,
        nodes: int = _DEFAULTS.cluster.nodes,
        gpus_per_node: int = _DEFAULTS.cluster.gpus_per_node,
        registered_model: str = _DEFAULTS.tracking.registered_model,
        promotion_margin: float = 0.0,
        output_root: str = "outputs/pipeline",
        overrides: str = "{}",
    ) -> None:
        cfg = resolve_config(preset=preset, tasks=tasks, train_steps=train_steps, alpha=alpha, zero_stage=zero_stage,
                             nodes=nodes, gpus_per_node=gpus_per_node, overrides=overrides)
        env(cfg).set_display_name("validate parameters")
        conf = cfg.output
        data = env(steps.ingest(overrides=conf, dataset=dataset, generate=generate_data), io=True)
        data.set_display_name("ingest")
        model = env(steps.pretrain(overrides=conf, dataset=data.outputs["out"],
                                   output=f"{output_root}/{dsl.PIPELINE_JOB_ID_PLACEHOLDER}/pretrain"), training=True)
        model.set_display_name("pretrain")
        current = model.outputs["model"]
        evaluation = env(steps.evaluate(overrides=conf, model=current)).set_display_name("evaluate pretrained")
        for k in range(1, s.rounds + 1):
            collected = env(steps.collect(overrides=conf, model=current, dataset=f"{dataset}-collected",
                                          append=k > 1)).set_display_name(f"collect round {k}")
            tuned = env(steps.finetune(overrides=conf, model=current, dataset=data.outputs["out"],
                                       collected=collected.outputs["out"],
                                       output=f"{output_root}/{dsl.PIPELINE_JOB_ID_PLACEHOLDER}/round{k}"),
                        training=True).set_display_name(f"finetune round {k}")
            current = tuned.outputs["out"]
            evaluation = env(steps.evaluate(overrides=conf, model=current)).set_display_name(f"evaluate round {k}")
        registered = env(steps.register(overrides=conf, model=current, dataset=data.outputs["out"],
                                        evaluation=evaluation.outputs["evaluation"],
                                        registered_model=registered_model,
                                        pipeline_run=dsl.PIPELINE_JOB_ID_PLACEHOLDER), io=True)
        registered.set_display_name("register")
        env(steps.promote(overrides=conf, challenger=registered.outputs["out"], margin=promotion_margin))\
            .set_display_name("promote")

    return pac_pipeline


def compile_pipeline(path: str | Path = COMPILED, settings: ClusterSettings | None = None) -> Path:
    """Write the pipeline's IR YAML to `path`."""
    path = Path(path)
    compiler.Compiler().compile(build(settings), str(path))
    return path


def settings_from_file(path: str | Path) -> ClusterSettings:
    """`ClusterSettings` from a YAML/JSON file of its fields (unknown fields are named)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in dataclasses.fields(ClusterSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown cluster setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return ClusterSettings(**data)


__all__ = ["COMPILED", "ClusterSettings", "build", "compile_pipeline", "settings_from_file"]
