"""`lunakit validate`: every scan of a split analyzed, then scored by the LUNA16 FROC."""

from __future__ import annotations

import json

import pytest

from lunakit.cli import main
from lunakit.evaluation import (
    classification_confusion,
    froc,
    read_annotations_table,
    read_candidates_table,
    read_series_list,
)
from lunakit.evaluation.validate import split_of
from lunakit.io.luna import load_candidates


def test_validate_scores_what_it_found(phantom_root, bundle, tmp_path, capsys):
    out = tmp_path / "val"
    assert (
        main(
            [
                "validate",
                "--data",
                str(phantom_root),
                "--bundle",
                str(bundle),
                "--split",
                "all",
                "--out",
                str(out),
                "--bootstrap",
                "50",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads((out / "froc.json").read_text())
    series = read_series_list(out / "seriesuids.csv")
    assert series == split_of(phantom_root, "all", 10) and len(series) == 3
    # The same numbers from the written candidates through the evaluation on its own.
    result = froc(
        read_annotations_table(phantom_root / "annotations.csv"),
        read_annotations_table(phantom_root / "annotations_excluded.csv"),
        series,
        read_candidates_table(out / "candidates.csv"),
    )
    assert summary["sensitivities"] == pytest.approx(list(result.sensitivities))
    assert summary["cpm"] == pytest.approx(result.cpm)
    assert summary["n_nodules"] == result.n_nodules > 0
    assert "false_positive_kinds" not in summary  # a classic phantom set has no hard_negatives.csv
    lo, hi = summary["cpm_ci"]
    assert 0.0 <= lo <= hi <= 1.0
    printed = capsys.readouterr().out
    assert f"CPM {result.cpm:.4f}" in printed
    # The book's confusion, recomputed from the written findings and the malignancy table.
    findings = json.loads((out / "findings_by_series.json").read_text())
    nodules = load_candidates(phantom_root, with_candidates=False)
    expected = sum(
        classification_confusion(
            [(n.center_xyz, n.diameter_mm, True, bool(n.is_malignant)) for n in nodules if n.series_uid == uid],
            [(f["center_xyz"], f["p_nodule"], f["p_malignant"]) for f in findings[uid]],
            nodule_threshold=summary["options"]["nodule_threshold"],
        )
        for uid in series
    )
    assert summary["confusion"]["counts"] == expected.tolist()
    assert expected[1:].sum() == len(nodules)  # one count per true nodule
    assert expected[0, 0] == 0 and expected.sum() > len(nodules)
    assert "predicted malignant" in printed and printed.strip().splitlines()[-1].startswith("malignant")


def test_validation_split_is_the_training_split(phantom_root):
    val = split_of(phantom_root, "val", 2)
    train = split_of(phantom_root, "train", 2)
    assert val and train and not set(val) & set(train)
    assert sorted(val + train) == split_of(phantom_root, "all", 2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent"], "does not exist"),
        (["--split", "val", "--val-stride", "0"], "val_stride"),
    ],
)
def test_validate_bad_input(phantom_root, bundle, tmp_path, capsys, args, message):
    if "--data" not in args:
        args = ["--data", str(phantom_root), *args]
    out = tmp_path / "never"
    assert main(["validate", "--bundle", str(bundle), "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()
