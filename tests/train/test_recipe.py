"""scripts/make_demo_bundle.sh, the demo bundle's recipe, run end to end at TINY=1 scale: every
step's command line is the full run's (only sizes and epochs shrink), so a renamed option or a
broken step fails here rather than in the hour-long run. The bundle it writes is read back and
held against what the recipe says it does."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from lunakit.models import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_bundle_recipe_runs_end_to_end(tmp_path):
    env = dict(os.environ, TINY="1", LUNAKIT=str(Path(sys.executable).parent / "lunakit"))
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "make_demo_bundle.sh"), str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    bundle = tmp_path / "work" / "bundle"
    assert f"demo bundle written to {bundle}" in done.stdout
    for step in ("synth", "segment", "mining", "classify", "malignancy", "export"):
        assert f"make_demo_bundle: {step} took " in done.stderr

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert sorted(manifest["models"]) == ["cls", "mal", "seg"]
    options = manifest["options"]
    assert options["resample_mm"] == [0.8, 0.7, 0.7]  # from the checkpoints' training config
    assert options["seg_threshold"] == 0.9 and options["cls_flips"] is True
    assert options["min_diameter_mm"] == 2.5 and options["center_mode"] == "core"

    # The classifier trained on the mined table: its rows are class-0 candidates of the training split.
    with open(tmp_path / "work" / "hard_negatives.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:4] == ["seriesuid", "coordX", "coordY", "coordZ"]
    cls_config = load_checkpoint(tmp_path / "work" / "cls" / "best.pt")[1]["config"]
    assert Path(cls_config["hard_negatives"]) == tmp_path / "work" / "hard_negatives.csv"
    mal_config = load_checkpoint(tmp_path / "work" / "mal" / "best.pt")[1]["config"]
    assert Path(mal_config["finetune"]) == tmp_path / "work" / "cls" / "best.pt"
