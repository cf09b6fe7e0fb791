"""Forward shapes and masking behaviour of the Perceiver-IO actor-critic."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from pac.inputs import Observation
from pac.networks import build_model
from pac.networks.actor_critic import ActorCriticOutput
from pac.networks.encoders import ProprioEncoder
from pac.presets import model_config

CFG = model_config("tiny")


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(CFG).eval()


def make_obs(proprio_dims: list[int], with_image: list[bool], with_text: list[bool], seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    proprio = [rng.normal(size=p).astype(np.float32) for p in proprio_dims]
    texts = ["swing up the pole" if t else "" for t in with_text]
    images = [rng.integers(0, 255, (CFG.image_size, CFG.image_size, 3), dtype=np.uint8) if i else None
              for i in with_image]
    return Observation.from_numpy(proprio, texts, CFG.max_text_tokens, images)


@pytest.mark.parametrize("image,text", list(itertools.product([False, True], repeat=2)))
def test_forward_shapes_for_every_modality_combination(net, image: bool, text: bool) -> None:
    obs = make_obs([5, 5, 5], [image] * 3, [text] * 3)
    out = net(obs, num_action_dims=2, actions=torch.zeros(3, 7, 2))
    assert out.latents.shape == (3, CFG.num_latents, CFG.d_model)
    assert out.policy_logits.shape == (3, 2, CFG.action_bins)
    assert out.q_logits.shape == (3, 7, CFG.value_atoms)
    assert torch.isfinite(out.policy_logits).all() and torch.isfinite(out.q_logits).all()


def test_sample_with_no_modality_at_all_is_defined(net) -> None:
    obs = make_obs([0, 4], [False, True], [False, True])
    out = net(obs, 3)
    assert torch.isfinite(out.policy_logits).all()


@pytest.mark.parametrize("encoder", ["scalar", "vector"])
def test_mixed_embodiments_in_one_batch_match_their_single_sample_outputs(encoder: str) -> None:
    """Padding is invisible, for every proprio encoder: a sample's output does not depend on the other samples'
    state sizes."""
    torch.manual_seed(0)
    net = build_model(dataclasses.replace(CFG, proprio_encoder=encoder)).eval()
    mixed = make_obs([3, 17, 8], [False, True, False], [True, True, False])
    for p in net.parameters():  # non-zero heads so the comparison is not trivially equal
        torch.nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    a = torch.rand(3, 4, 2) * 2 - 1
    mask = torch.tensor([[True, True], [True, True], [True, False]])
    out = net(mixed, 2, a, mask)
    for i, (p, im, t) in enumerate([(3, False, True), (17, True, True), (8, False, False)]):
        single = make_obs([p], [im], [t])
        single.proprio = mixed.proprio[i : i + 1, :p]
        if im:
            single.image = mixed.image[i : i + 1]
        ref = net(single, 2, a[i : i + 1], mask[i : i + 1])
        torch.testing.assert_close(out.policy_logits[i], ref.policy_logits[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.q_logits[i], ref.q_logits[0], atol=1e-4, rtol=1e-4)


def test_shared_instructions_encode_and_train_as_if_each_sample_were_alone() -> None:
    """The encoder computes an instruction's tokens once per distinct instruction in the batch: each sample's
    latents and each parameter's gradient must equal those of the samples encoded one at a time."""
    torch.manual_seed(1)
    net = build_model(CFG)
    texts = ["reach", "balance the pole", "reach", "reach the target", "", "balance the pole"]
    rng = np.random.default_rng(0)
    proprio = [rng.normal(size=4).astype(np.float32) for _ in texts]
    batch = Observation.from_numpy(proprio, texts, CFG.max_text_tokens)
    batch.text[0, 5:] = 7  # ids under padding must not split an instruction from its copies
    z = net.encode(batch)
    z.square().sum().backward()
    shared = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad()
    for i, (p, t) in enumerate(zip(proprio, texts, strict=True)):
        zi = net.encode(Observation.from_numpy([p], [t], CFG.max_text_tokens))
        torch.testing.assert_close(z[i], zi[0], atol=1e-5, rtol=1e-5)
        zi.square().sum().backward()
    for n, p in net.named_parameters():
        if n in shared:
            scale = p.grad.abs().max().item()  # summation-order error grows with the gradient's size
            torch.testing.assert_close(shared[n], p.grad, atol=1e-5 * scale, rtol=1e-4, msg=n)


def test_masked_action_dimensions_do_not_change_q(net) -> None:
    for p in net.q.parameters():
        torch.nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    obs = make_obs([6], [False], [True])
    mask = torch.tensor([[True, False]])
    a1 = torch.tensor([[[0.3, -0.9]]])
    a2 = torch.tensor([[[0.3, 0.8]]])
    z = net.encode(obs)
    torch.testing.assert_close(net.q_logits(z, a1, mask), net.q_logits(z, a2, mask))
    assert not torch.allclose(net.q_logits(z, a1, mask), net.q_logits(z, torch.tensor([[[0.9, -0.9]]]), mask))


def test_k_candidates_are_scored_independently_against_one_encoding(net) -> None:
    for p in net.q.parameters():
        torch.nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    obs = make_obs([6, 6], [False, False], [True, True])
    z = net.encode(obs)
    actions = torch.rand(2, 5, 3) * 2 - 1
    mask = torch.ones(2, 3, dtype=torch.bool)
    together = net.q_logits(z, actions, mask)
    for k in range(5):
        torch.testing.assert_close(together[:, k], net.q_logits(z, actions[:, k : k + 1], mask)[:, 0],
                                   atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_named(net) -> None:
    obs = make_obs([5], [False], [True])
    obs.proprio[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        net(obs, 1)
    with pytest.raises(ValueError, match="max_proprio_dims"):
        net(make_obs([CFG.max_proprio_dims + 1], [False], [True]), 1)
    with pytest.raises(ValueError, match="max_action_dims"):
        net(make_obs([5], [False], [True]), CFG.max_action_dims + 1)
    bad_image = make_obs([5], [True], [True])
    bad_image.image = bad_image.image[:, :, :32, :32]
    with pytest.raises(ValueError, match="image_size"):
        net(bad_image, 1)


def test_checkpoint_units_are_declared_as_module_types(net) -> None:
    units = [m for m in net.modules() if isinstance(m, net.checkpoint_units)]
    # one read-in cross-attention, M self-attention blocks, one cross-attention per decoder layer
    assert len(units) == 1 + CFG.num_blocks + 2 * CFG.decoder_layers


def fit_fine_threshold(bands: int, steps: int = 300) -> float:
    """Train the proprio encoder (plus a linear read-out) to tell which 1/16-wide stripe of [0, 1) a value is in."""
    torch.manual_seed(0)
    enc = ProprioEncoder(dataclasses.replace(CFG, proprio_fourier_bands=bands))
    head = torch.nn.Linear(CFG.d_model, 1)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=3e-3)
    x = torch.rand(4096, 1)
    y = (torch.floor(x * 16) % 2).squeeze(1)  # alternating stripes: no smooth function of x fits them
    for _ in range(steps):
        i = torch.randint(0, len(x), (256,))
        logits = head(enc(x[i], torch.ones(256, 1, dtype=torch.bool))[0][:, 0]).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = head(enc(x, torch.ones(len(x), 1, dtype=torch.bool))[0][:, 0]).squeeze(1) > 0
    return (pred == y.bool()).float().mean().item()


def test_fourier_features_resolve_values_a_sixteenth_apart() -> None:
    """The plain value MLP cannot separate nearby proprio values; 8 Fourier bands can."""
    assert fit_fine_threshold(8) > 0.95
    assert fit_fine_threshold(0) < 0.8


def test_an_observation_gets_the_same_outputs_alone_as_in_a_batch(net) -> None:
    """Bit for bit, at every batch size: BLAS multiplies a few rows by another kernel than many (layers.Linear
    pads them), and a rollout's actions must not depend on how many environments step together."""
    rng = np.random.default_rng(3)
    proprio = [rng.normal(size=6).astype(np.float32) for _ in range(6)]
    texts = ["swing up the pole", "swing up the pole", "", "reach", "reach", "swing up the pole"]
    actions = torch.linspace(-1, 1, 6 * 4 * 2).reshape(6, 4, 2)

    def forward(rows: list[int]) -> ActorCriticOutput:
        obs = Observation.from_numpy([proprio[r] for r in rows], [texts[r] for r in rows], CFG.max_text_tokens)
        return net(obs, num_action_dims=2, actions=actions[rows])

    with torch.no_grad():
        together = forward(list(range(6)))
        for rows in ([0], [1, 2], [3, 4, 5], [5]):
            part = forward(rows)
            assert torch.equal(part.latents, together.latents[rows])  # (the heads start at zero: compare these too)
            assert torch.equal(part.policy_logits, together.policy_logits[rows])
            assert torch.equal(part.q_logits, together.q_logits[rows])
