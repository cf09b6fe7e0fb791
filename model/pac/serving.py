"""The servable policy: observations in, actions out, as an MLflow pyfunc model (`PacPolicy`).

`pac.tracking.Tracker.log_model` logs an export as a "model from code" whose entry point instantiates `PacPolicy`;
`mlflow.pyfunc.load_model` / `mlflow models serve` then rebuild the network with `load_export` (safetensors, no
pickle) wherever the `pac-k8s` package is installed. `policy_actions` is the same choice for in-process callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pydantic
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext

from pac.config import Config
from pac.inputs import Observation, denormalize_action, normalize_proprio, task_stats
from pac.networks import PerceiverActorCritic
from pac.networks.acting import choose_actions
from pac.training.export import load_export

EXPORT_ARTIFACT = "export"  # name of the export directory among the pyfunc model's artifacts


class PolicyInput(pydantic.BaseModel):
    """One observation for `PacPolicy.predict` (one row of a DataFrame, or one dict of a list).

    The number of action dimensions comes from `action_dims`, else from the length of `action_low`.
    With bounds the action is returned in [action_low, action_high], without them in the normalised [-1, 1].
    """

    proprio: list[float]  # proprioceptive state vector, any length up to model.max_proprio_dims
    # task instruction (the language modality); None: the registered task's own (what training and evaluation
    # feed), "" for none
    instruction: str | None = None
    task: str | None = None  # task id, e.g. "point_mass/easy": picks the state normalisation the model trained with
    action_dims: int | None = None
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    image: list[list[list[int]]] | None = None  # (H, W, 3) uint8 camera image, when the task has vision

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> PolicyInput:
        if (self.action_low is None) != (self.action_high is None):
            raise ValueError("give both action_low and action_high, or neither")
        if self.action_low is not None:
            if len(self.action_low) != len(self.action_high or []):
                raise ValueError(f"action_low has {len(self.action_low)} values but action_high has "
                                 f"{len(self.action_high or [])}")
            if self.action_dims is not None and self.action_dims != len(self.action_low):
                raise ValueError(f"action_dims={self.action_dims} disagrees with the {len(self.action_low)} "
                                 "action bounds")
        elif self.action_dims is None:
            raise ValueError("give action_dims or action_low/action_high: the policy must know how many action "
                             "dimensions the embodiment has")
        if self.action_dims is not None and self.action_dims < 1:
            raise ValueError(f"action_dims must be >= 1, got {self.action_dims}")
        if not self.proprio:
            raise ValueError("proprio must hold at least one value")
        return self

    @property
    def num_action_dims(self) -> int:
        return self.action_dims if self.action_dims is not None else len(self.action_low or [])


def _instruction(o: PolicyInput) -> str:
    """The observation's instruction; when it gives none, its registered task's (the one the model trained with)."""
    if o.instruction is not None:
        return o.instruction
    if o.task:
        from pac.envs.registry import UnknownTaskError, get_task

        try:
            return get_task(o.task).instruction
        except UnknownTaskError:
            return ""
    return ""


def policy_actions(net: PerceiverActorCritic, config: Config, observations: Sequence[PolicyInput]) -> list[list[float]]:
    """The model's action for each observation, chosen as its evaluation chooses (`config.eval`: the greedy
    decode, or the critic's pick among sampled actions where its critic was trained; never exploration),
    denormalised where bounds are given.

    Sampling uses a fixed seed per row, so the same observation always gets the same action, whatever else
    is in the batch. Observations may come from different embodiments (different proprio and action sizes):
    the batch is padded to the largest and each row is cut back to its own action dimensions.

    Args:
        net: the network, in eval mode.
        config: its resolved config (bins, text length, action selection).
        observations: the batch.

    Returns:
        One action (list of floats) per observation.
    """
    if not observations:
        return []
    images = None
    if any(o.image is not None for o in observations):
        images = [None if o.image is None else np.asarray(o.image, dtype=np.uint8) for o in observations]
    known = config.model.proprio_stats if config.model.proprio_norm == "task" else {}
    if known and any(o.task is None for o in observations):
        # Which statistics apply depends on the task: guessing would act on the wrong scale, silently.
        raise ValueError(f"this model standardises states per task: give each observation's `task` "
                         f"(trained on {', '.join(sorted(known))})")
    proprio = [normalize_proprio(np.asarray(o.proprio, dtype=np.float32), task_stats(config.model, o.task or ""))
               for o in observations]
    obs = Observation.from_numpy(proprio, [_instruction(o) for o in observations], config.model.max_text_tokens,
                                 images)
    device = next(net.parameters()).device
    ecfg = config.eval
    with torch.inference_mode():
        latents = net.encode(obs.to(device))  # (B, N, D)
        normalised = choose_actions(
            net, latents, max(o.num_action_dims for o in observations), greedy=ecfg.greedy,
            temperature=ecfg.temperature, rngs=[np.random.default_rng(0) for _ in observations],
            q_select_samples=ecfg.q_select_samples if config.objective.trains_critic else 0).cpu().numpy()  # (B, A)
    actions = []
    for row, o in zip(normalised, observations, strict=True):
        action = row[: o.num_action_dims]
        if o.action_low is not None:
            action = denormalize_action(action, np.asarray(o.action_low, np.float32),
                                        np.asarray(o.action_high, np.float32))
        actions.append([float(x) for x in action])
    return actions


class PacPolicy(PythonModel):
    """The PAC policy as an MLflow pyfunc model: observations in, actions out (`policy_actions`).

    `load_context` rebuilds the network from the export artifact with `load_export` (safetensors, no pickle).
    MLflow validates the input against the `PolicyInput` type hint, so a pandas DataFrame with the same columns
    and a list of dicts both work, and the serving signature is derived from it.
    """

    def __init__(self) -> None:
        self.net: PerceiverActorCritic | None = None
        self.config: Config | None = None

    def load_context(self, context: PythonModelContext) -> None:
        self.net, self.config = load_export(context.artifacts[EXPORT_ARTIFACT])
        self.net.eval()

    def predict(self, model_input: list[PolicyInput], params: dict[str, Any] | None = None) -> list[list[float]]:
        """Actions for a batch of observations (see `PolicyInput` for the fields)."""
        if self.net is None or self.config is None:
            raise RuntimeError("PacPolicy.predict called before load_context: load it with mlflow.pyfunc.load_model")
        return policy_actions(self.net, self.config, model_input)


__all__ = ["EXPORT_ARTIFACT", "PacPolicy", "PolicyInput", "policy_actions"]
