"""The training scripts run end to end at TINY=1 scale: scripts/make_demo_bundle.sh (the demo
bundle's recipe) and scripts/cross_family.sh (issue #16's cross-family check). Every step's
command line is the full run's (only sizes and epochs shrink), so a renamed option or a broken
step fails here rather than in the hour-long run. What they write is read back and held against
what the scripts say they do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from lunakit.models import load_checkpoint

from helpers import read_rows

ROOT = Path(__file__).resolve().parents[2]


def run_tiny(script: str, work: Path, **env: str) -> subprocess.CompletedProcess:
    """`TINY=1 bash scripts/<script> work` with this interpreter's lunakit; fails on a non-zero exit."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, TINY="1", LUNAKIT=str(bin_dir / "lunakit"), PYTHON=sys.executable, **env)
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / script), str(work)], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_demo_bundle_recipe_runs_end_to_end(tmp_path):
    done = run_tiny("make_demo_bundle.sh", tmp_path / "work")
    bundle = tmp_path / "work" / "bundle"
    assert f"demo bundle written to {bundle}" in done.stdout
    for step in ("synth", "segment", "mining", "classify", "mining2", "finetune", "malignancy", "export"):
        assert f"make_demo_bundle: {step} took " in done.stderr

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert sorted(manifest["models"]) == ["cls", "mal", "seg"]
    options = manifest["options"]
    assert options["resample_mm"] == [0.8, 0.7, 0.7]  # from the checkpoints' training config
    assert options["seg_threshold"] == 0.9 and options["cls_flips"] is True
    assert options["min_diameter_mm"] == 1.5 and options["center_mode"] == "core3d"
    assert options["lung_margin_mm"] == 10

    # Round 1 trained on the segmenter's false positives; round 2 was fine-tuned from it on those rows
    # plus the round-1 classifier's own false positives scored at 0.1 or more; the bundle holds
    # round 2's last epoch, and the malignancy model was fine-tuned from it.
    work = tmp_path / "work"
    round1, round2, both = (
        read_rows(work / name) for name in ("hard_negatives.csv", "hard_negatives_2.csv", "hard_negatives_all.csv")
    )
    assert round1 and both == round1 + round2
    assert all(row["class"] == "0" for row in both)
    assert all(float(row["probability"]) >= 0.1 for row in round2)
    cls_config = load_checkpoint(work / "cls" / "best.pt")[1]["config"]
    assert Path(cls_config["hard_negatives"]) == work / "hard_negatives.csv"
    cls2_checkpoint = load_checkpoint(work / "cls2" / "last.pt")[1]
    assert Path(cls2_checkpoint["config"]["hard_negatives"]) == work / "hard_negatives_all.csv"
    assert Path(cls2_checkpoint["config"]["finetune"]) == work / "cls" / "best.pt"
    mal_config = load_checkpoint(work / "mal" / "best.pt")[1]["config"]
    assert Path(mal_config["finetune"]) == work / "cls2" / "last.pt"
    exported = torch.jit.load(str(bundle / manifest["models"]["cls"]["file"])).state_dict()
    for name, tensor in load_checkpoint(work / "cls2" / "last.pt")[0].state_dict().items():
        assert torch.equal(exported[name], tensor), name


def test_the_cross_family_check_runs_end_to_end(tmp_path):
    work = tmp_path / "xf"
    done = run_tiny("cross_family.sh", work, HARD="1")
    table = json.loads((work / "cross_family.json").read_text())
    assert sorted(table) == ["bundle/val_a", "bundle/val_b", "bundle_hard/val_a", "bundle_hard/val_b"]
    for key, row in table.items():
        bundle, data = key.split("/")
        nodules = len(read_rows(work / data / "annotations.csv"))
        assert row["nodules"] == nodules and row["scans"] == 2
        assert 0.0 <= row["cpm"] <= 1.0
        assert f"{bundle:12s} {data:8s}   2 scans {nodules:4d} nodules  CPM {row['cpm']:.3f}" in done.stdout
    assert (work / "hard_negatives.csv").is_file()
