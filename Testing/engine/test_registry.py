"""Finding models: shipped ones by task, modality and SR factor, and the one a task gets by default."""

import json

import pytest
from sdenhance import registry
from sdenhance.cli import main
from sdenhance.io import fine_grid, read_volume
from sdenhance.registry import CheckpointError, check_factor, default_for, list_shipped
from sdenhance.testing import make_tiny_checkpoint


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A models folder with CT SR x2 and x4, MRI SR x2 and CT denoising."""
    folder = tmp_path / "models"
    for name, task, modality, factor in [
        ("ct-sr4", "sr", "ct", 4),
        ("ct-sr2", "sr", "ct", 2),
        ("mri-sr2", "sr", "mri", 2),
        ("ct-denoise", "denoise", "ct", 2),
    ]:
        make_tiny_checkpoint(folder, task=task, modality=modality, sr_factor=factor, name=name)
    monkeypatch.setattr(registry, "SHIPPED_DIR", folder)
    return folder


def names(cards):
    return [card.name for card in cards]


def test_models_are_listed_by_task_modality_and_factor(shipped):
    assert names(list_shipped("sr")) == ["ct-sr2", "ct-sr4", "mri-sr2"]
    assert names(list_shipped("sr", factor=2)) == ["ct-sr2", "mri-sr2"]
    assert names(list_shipped("sr", "ct", 4)) == ["ct-sr4"]
    assert names(list_shipped("denoise", factor=4)) == []


def test_default_model_follows_modality_and_factor(shipped):
    assert default_for("sr", "ct").name == "ct-sr2"  # the smallest factor when none is asked for
    assert default_for("sr", "ct", 4).name == "ct-sr4"
    assert default_for("sr", None, 4).name == "ct-sr4"
    assert default_for("sr", "mri").name == "mri-sr2"
    assert default_for("denoise", None, 4).name == "ct-denoise"  # a factor means nothing to denoising
    with pytest.raises(CheckpointError, match=r"no shipped model for MRI sr x4 \(shipped: ct-sr2, ct-sr4, mri-sr2\)"):
        default_for("sr", "mri", 4)  # not the CT x4 model: an MRI scan must not go through CT scaling
    with pytest.raises(CheckpointError, match="no shipped model for PET denoise"):
        default_for("denoise", "pet")


def test_a_checkpoint_refuses_another_factor_and_names_one_that_fits(shipped):
    card = registry.resolve("ct-sr2")
    check_factor(card, 2)
    check_factor(card, None)
    with pytest.raises(CheckpointError, match=r"up-samples x2, not x4; pick an x4 checkpoint \(shipped: ct-sr4\)"):
        check_factor(card, 4)


@pytest.mark.parametrize("factor", [None, 4])
def test_enhance_without_a_checkpoint_uses_the_model_for_the_factor(shipped, tmp_path, ct_file, capsys, factor):
    out = tmp_path / "sr.nrrd"
    extra = ["--factor", str(factor)] if factor else []
    assert main(["enhance", str(ct_file), "-o", str(out), "--task", "sr", "--progress", "jsonl", *extra]) == 0
    done = [json.loads(line) for line in capsys.readouterr().out.splitlines()][-1]
    used = factor or 2
    assert (done["checkpoint"], done["factor"], done["axis"]) == (f"ct-sr{used}", used, "z")
    assert read_volume(out).array.shape == fine_grid(read_volume(ct_file), used, "z").array.shape
