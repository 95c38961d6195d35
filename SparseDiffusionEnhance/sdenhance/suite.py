"""Robustness suites for ``sdenhance evaluate --suite SUITE.yaml``: every degradation family on every held-out scan.

A suite names scans and degradation families chosen to lie outside what a model was trained on (other patients,
scanners and kernels; noise textures and levels held out of training), so its scores stand in for the scans a
clinician will bring. Each family is an ordinary evaluation (its own folder with results.json, results.md and
figures); ``suite.md`` then puts every (family, scan) on one row: the input, the best classical filter, BM4D and
the model, with the model's margins and whether it meets the floor (better than its input, and than the best
classical filter in both PSNR and SSIM).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from .evaluate import DEGRADED, OURS, Setup, evaluate_files

#: Baselines that get the true noise (oracles no user has): reported beside, not among, the classical filters.
ORACLE_BASELINES = ("bm4d",)


@dataclass(frozen=True)
class Suite:
    name: str
    modality: str
    files: list[Path]
    families: dict[str, dict]  # label -> degradation spec
    crop: tuple[int, int, int] | None = None

    @classmethod
    def load(cls, path: str | Path) -> Suite:
        """Read YAML; scans are relative to ``data_root``, itself relative to the suite file's folder."""
        from .degrade import make_degradation

        path = Path(path)
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        root = (path.parent / raw.get("data_root", ".")).resolve()
        files = [root / name for name in raw["files"]]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"suite scans not found: {missing} (set data_root in {path})")
        for spec in raw["families"].values():
            make_degradation(spec)  # a typo fails now, not after the first family's hour
        crop = tuple(raw["crop"]) if raw.get("crop") else None
        return cls(raw.get("name", path.stem), raw["modality"], files, dict(raw["families"]), crop)


def run_suite(suite: Suite, setup: Setup, folder: Path) -> list[dict]:
    """Every family through ``evaluate_files`` into ``folder/LABEL``; writes suite.json and suite.md."""
    reports = []
    for label, spec in suite.families.items():
        report = evaluate_files(suite.files, replace(setup, spec=spec, crop=suite.crop), folder / label)
        reports.append(report | {"family": label})
    rows = suite_rows(reports)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.json").write_text(json.dumps({"suite": suite.name, "rows": rows}, indent=2) + "\n", "utf-8")
    (folder / "suite.md").write_text(suite_table(suite.name, rows, reports[0]["headline_metric"]), "utf-8")
    return rows


def suite_rows(reports: list[dict]) -> list[dict]:
    """One row per (family, case): headline PSNR and SSIM of the input, the best classical filter, the oracle
    baselines and the model, where each ran."""
    rows = []
    for report in reports:
        key = report["headline_metric"]
        for case in report["cases"]:
            ran = {name: _headline(m, key) for name, m in case["methods"].items() if m["scores"]}
            classical = [n for n in ran if n not in (DEGRADED, OURS, *ORACLE_BASELINES)]
            row = {"family": report["family"], "case": case["name"], "degraded": ran[DEGRADED]}
            if classical:
                row["best_classical"] = ran[max(classical, key=lambda n: ran[n]["psnr"])]
            row |= {name: ran[name] for name in (*ORACLE_BASELINES, OURS) if name in ran}
            rows.append(row)
    return rows


def _headline(method: dict, psnr_key: str) -> dict:
    scores = method["scores"]
    return {"label": method["label"], "psnr": scores[psnr_key], "ssim": scores[psnr_key.replace("psnr", "ssim")]}


def meets_floor(row: dict) -> bool | None:
    """Better than its input, and than the best classical filter in PSNR and SSIM; None without those."""
    if OURS not in row or "best_classical" not in row:
        return None
    ours, best = row[OURS], row["best_classical"]
    return ours["psnr"] > row["degraded"]["psnr"] and ours["psnr"] > best["psnr"] and ours["ssim"] > best["ssim"]


def suite_table(name: str, rows: list[dict], metric: str) -> str:
    def cell(row, key):
        entry = row.get(key)
        return "" if entry is None else f"{entry['psnr']:.2f} / {entry['ssim']:.3f}"

    def margin(row, key):
        if OURS not in row or key not in row:
            return ""
        return f"{row[OURS]['psnr'] - row[key]['psnr']:+.2f}"

    header = "| family | case | input | best classical | BM4D (true spectrum) | ours | vs classical | vs BM4D | floor |"
    lines = [f"# Robustness suite {name}", "", f"PSNR ({metric}, dB) / SSIM per cell.", "", header, "|" + "---|" * 9]
    for row in rows:
        best = row.get("best_classical")
        floor = {True: "met", False: "**missed**", None: ""}[meets_floor(row)]
        lines.append(
            f"| {row['family']} | {row['case']} | {cell(row, DEGRADED)} | "
            f"{'' if best is None else best['label'] + ' ' + cell(row, 'best_classical')} | {cell(row, 'bm4d')} | "
            f"{cell(row, OURS)} | {margin(row, 'best_classical')} | {margin(row, 'bm4d')} | {floor} |"
        )
    met = [meets_floor(r) for r in rows if meets_floor(r) is not None]
    if met:
        lines += ["", f"Floor met on {sum(met)} of {len(met)} rows."]
    return "\n".join(lines) + "\n"
