"""The six shipped weight files, each loaded strictly against its card: what every re-ship can break."""

import hashlib

import numpy as np
import pytest
import torch
from sdenhance.checkpoint import load_model
from sdenhance.registry import list_shipped, resolve

SHIPPED = ["ct-denoise", "ct-sr2", "ct-sr4", "mri-denoise", "mri-sr2", "pet-denoise"]


def test_the_six_models_are_shipped_each_with_weights_of_its_own():
    cards = list_shipped()
    assert [card.name for card in cards] == SHIPPED
    digests = {hashlib.sha256(card.path.read_bytes()).hexdigest() for card in cards}
    assert len(digests) == len(SHIPPED)  # no model shipped as a copy of another


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_strictly_and_run_as_their_card_says(name):
    card = resolve(name)
    model, _ = load_model(card)  # strict: exactly the tensors, and shapes, of the card's architecture
    meta, described = card.meta, card.meta["card"]
    assert (described["task"], described["modality"]) == (card.task, card.modality)
    assert (described["sparse_steps_K"], described["timesteps_T"]) == (
        meta["schedule"]["steps"],
        meta["schedule"]["timesteps"],
    )
    assert (meta["sr_factor"], meta["sr_axis"]) == ((int(name[-1]), "z") if card.task == "sr" else (None, None))
    assert model.head[-1].weight.abs().sum() > 0  # trained: a fresh network's last layer is zero

    patch = meta["patch_size"]
    y = torch.from_numpy(np.random.default_rng(0).normal(0, 0.3, (1, 1, *patch)).astype(np.float32))
    with torch.inference_mode():
        x0 = model(torch.randn_like(y), y, torch.tensor([999]), torch.tensor([[2.5, 0.8, 0.8]]))
    assert x0.shape == y.shape and torch.isfinite(x0).all()
    assert not torch.allclose(x0, y)
