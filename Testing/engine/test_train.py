import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from sdenhance.checkpoint import load_model
from sdenhance.config import TrainConfig
from sdenhance.data import Pair, PatchSampler
from sdenhance.degrade import make_degradation
from sdenhance.evaluate import Setup, prepare_case, run_ours
from sdenhance.io import read_volume
from sdenhance.normalize import Normalizer
from sdenhance.registry import read_card
from sdenhance.train import lr_at, train, weights_digest


def test_config_rejects_unknown_settings(tmp_path, train_config_file):
    raw = yaml.safe_load(train_config_file.read_text(encoding="utf-8")) | {"learning_rate": 1}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.load(bad)


def test_learning_rate_warms_up_holds_then_decays_to_its_final_value(train_config_file):
    config = TrainConfig.load(train_config_file)
    config.lr, config.warmup_steps = 3e-4, 100
    assert lr_at(49, config) == pytest.approx(1.5e-4) and lr_at(5000, config) == pytest.approx(3e-4)
    config.lr_decay = {"start": 1000, "end": 2000, "final": 1e-5}
    assert lr_at(999, config) == pytest.approx(3e-4)
    assert lr_at(1500, config) == pytest.approx((3e-4 + 1e-5) / 2)  # cosine midpoint
    assert lr_at(2000, config) == pytest.approx(1e-5) and lr_at(9000, config) == pytest.approx(1e-5)


def test_training_writes_logs_and_a_loadable_checkpoint(tmp_path, train_config_file):
    torch.set_num_threads(1)
    summary = train(TrainConfig.load(train_config_file), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert summary["step"] == 6
    assert (run / "log.csv").read_text(encoding="utf-8").count("\n") == 7  # header + one row per step
    val = (run / "val.csv").read_text(encoding="utf-8")
    assert "psnr_p995" in val and "p1.nii.gz" in val
    model, card = load_model(run / "tiny.safetensors")
    assert card.meta["training"]["steps"] == 6 and card.meta["task"] == "denoise"
    assert np.isfinite(summary["validation"]["p1.nii.gz"]["psnr_p995"])
    # the exported weights are the EMA average, not the raw weights
    assert weights_digest(model) != summary["rank_digests"][0]


def test_validation_scores_what_evaluate_reports_for_the_exported_checkpoint(tmp_path, train_config_file):
    torch.set_num_threads(1)
    config = TrainConfig.load(train_config_file)
    summary = train(config, tmp_path / "run", progress=False)
    setup = Setup(
        spec=config.degradation,
        modality="mri",
        methods=("ours",),
        card=read_card(tmp_path / "run" / "tiny.safetensors"),
        crop=tuple(config.val_crop),
        backend="torch",
    )
    scan = config.paths(config.val_files)[0]
    case = prepare_case(scan.name, read_volume(scan), setup, np.random.default_rng([setup.seed, 0]))
    evaluated = run_ours(case, setup).scores
    validated = summary["validation"]["p1.nii.gz"]
    assert validated["psnr_p995"] == pytest.approx(evaluated["psnr_p995"], abs=1e-6)
    assert validated["ssim_p995"] == pytest.approx(evaluated["ssim_p995"], abs=1e-6)


def test_resume_continues_exactly_as_if_uninterrupted(tmp_path, train_config_file):
    torch.set_num_threads(1)
    config = TrainConfig.load(train_config_file)
    straight = train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "split", max_steps=3, progress=False)
    log = tmp_path / "split" / "log.csv"
    with log.open("a") as f:  # a run that then logged step 4 and stopped before its next state save
        f.write("4,0.5,0.0003,1,1\n")
    resumed = train(config, tmp_path / "split", resume=True, progress=False)
    assert resumed["step"] == 6
    assert [row.split(",")[0] for row in log.read_text().splitlines()] == ["step", "1", "2", "3", "4", "5", "6"]
    assert resumed["rank_digests"] == straight["rank_digests"]
    a, b = load_file(tmp_path / "straight" / "tiny.safetensors"), load_file(tmp_path / "split" / "tiny.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def _torchrun(train_config_file, output, *extra, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command += ["-m", "sdenhance", "train", "--config", str(train_config_file), "--output", str(output)]
    return subprocess.run(
        [*command, "--threads", "1", "--no-progress", *extra], capture_output=True, text=True, timeout=600
    )


def _summary(output):
    return yaml.safe_load((output / "summary.yaml").read_text(encoding="utf-8"))


def test_two_process_ddp_resumes_exactly_as_if_uninterrupted(tmp_path, train_config_file):
    """Each rank's random streams are saved: after --resume every rank draws what it would have drawn."""
    straight = _torchrun(train_config_file, tmp_path / "straight", "--max-steps", "6")
    assert straight.returncode == 0, straight.stderr[-3000:]
    digests = _summary(tmp_path / "straight")["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # DDP keeps the replicas identical
    first = _torchrun(train_config_file, tmp_path / "split", "--max-steps", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _torchrun(train_config_file, tmp_path / "split", "--max-steps", "6", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _summary(tmp_path / "split")["rank_digests"] == digests
    a, b = load_file(tmp_path / "straight" / "tiny.safetensors"), load_file(tmp_path / "split" / "tiny.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # a state written by two processes is not resumed by one: its second rank's streams would be lost
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdenhance",
            "train",
            "--config",
            str(train_config_file),
            "--output",
            str(tmp_path / "split"),
        ]
        + ["--max-steps", "8", "--resume", "--threads", "1", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 2 and "written by 2 training process(es), this run has 1" in single.stderr


def _with(train_config_file, tmp_path, **changes):
    raw = yaml.safe_load(train_config_file.read_text(encoding="utf-8")) | changes
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr_decay": {"start": 10, "end": 5, "final": 1e-5}}, "start < end"),
        ({"lr_decay": {"start": 10, "stop": 50}}, "lr_decay must be"),
        ({"degradation": {"kind": "mri_rician", "snr": -1}}, "positive"),
        ({"val_families": {"hard": {"kind": "mri_rician"}}}, "missing snr"),
        ({"patch_degradation": {"kind": "thick_slices", "factor": 2, "axis": "z"}}, "denoising kind"),
        ({"patch_degradation": {"kind": "mri_rician", "snr": 5}, "patch_share": 1.5}, r"\[0, 1\]"),
    ],
)
def test_config_errors_are_found_when_it_loads_not_hours_later(tmp_path, train_config_file, changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.load(_with(train_config_file, tmp_path, **changes))


def _sampler_on_a_flat_volume(patch_share: float) -> PatchSampler:
    target = np.full((12, 24, 24), 40.0, dtype=np.float32)
    cached = target + 5.0  # a 'realisation' that is easy to recognise
    pair = Pair(target, [cached], [Normalizer.fit(cached, "ct")], (2.0, 1.0, 1.0))
    patch_noise = make_degradation({"kind": "ct_image_noise", "noise_hu": 100.0})
    return PatchSampler([pair], (8, 16, 16), "ct", seed=0, patch_degradation=patch_noise, patch_share=patch_share)


def test_patch_degradation_replaces_the_cached_realisations_for_its_share_of_patches():
    residual_std = [
        float((batch["image"] - batch["target"]).flatten(1).std(dim=1).max())
        for share in (0.0, 1.0)
        for batch in [_sampler_on_a_flat_volume(share).batch(4)]
    ]
    assert residual_std[0] == pytest.approx(0.0, abs=1e-6)  # cached: a constant +5 HU offset
    assert residual_std[1] == pytest.approx(0.1, rel=0.05)  # fresh: 100 HU noise = 0.1 in CT model units
    mixed = _sampler_on_a_flat_volume(0.5)
    offsets = (mixed.batch(64)["image"] - mixed.batch(1)["target"][:1]).flatten(1).std(dim=1)
    assert 10 < int((offsets > 0.05).sum()) < 54  # about half the patches are degraded afresh


def test_a_new_run_can_start_from_a_checkpoints_weights(tmp_path, train_config_file):
    torch.set_num_threads(1)
    first = train(TrainConfig.load(train_config_file), tmp_path / "first", max_steps=3, progress=False)
    config = TrainConfig.load(train_config_file)
    config.init_from = str(tmp_path / "first" / "tiny.safetensors")
    warm = train(config, tmp_path / "warm", max_steps=0, progress=False)
    cold = train(TrainConfig.load(train_config_file), tmp_path / "cold", max_steps=0, progress=False)
    exported = load_model(tmp_path / "first" / "tiny.safetensors")[0]
    assert warm["rank_digests"][0] == weights_digest(exported) != cold["rank_digests"][0]
    assert load_model(tmp_path / "warm" / "tiny.safetensors")[1].meta["training"]["init_from"] == config.init_from
    assert first["step"] == 3
