"""Hard-negative mining (`lunakit mine-negatives`) and retraining the classifier on it
(`lunakit train classify --hard-negatives`), on a tiny phantom set with the demo bundle.

The mined rows are checked against the dataset's own tables with numpy (outside every
annotated and excluded sphere), and their count against `lunakit validate`'s findings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lunakit.cli import main
from lunakit.data.classification import add_hard_negatives
from lunakit.data.volumes import DataError
from lunakit.evaluation.froc import outside_truth
from lunakit.evaluation.tables import AnnotationTable
from lunakit.io.luna import load_candidates

from helpers import read_rows

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "demo-bundle"
SHAPE = (32, 64, 64)


def xyz(row: dict[str, str]) -> np.ndarray:
    return np.array([float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])])


@pytest.fixture(scope="module")
def mined(tmp_path_factory) -> dict[str, Path]:
    """4 phantom scans of family b, mined over all of them."""
    from lunakit.synth import make_dataset

    root = tmp_path_factory.mktemp("mine")
    data = make_dataset(root / "luna", n_scans=4, seed=12, shape=SHAPE, family="b")
    out = root / "hard.csv"
    assert (
        main(
            [
                "mine-negatives",
                "--data",
                str(data),
                "--bundle",
                str(BUNDLE),
                "--split",
                "all",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    return {"root": root, "data": data, "out": out}


def test_false_positive_rule_by_hand() -> None:
    nodules = AnnotationTable.build(["s", "t"], [[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]], [10.0, 10.0])
    irrelevant = AnnotationTable.build(["s"], [[100.0, 0.0, 0.0]], [-1.0])  # -1: counts as 10 mm, as in LUNA16
    found = np.array([[4.9, 0, 0], [5.0, 0, 0], [0, 0, 4.99], [104.0, 0, 0], [106.0, 0, 0]])
    assert outside_truth("s", found, (nodules, irrelevant)).tolist() == [False, True, False, False, True]
    assert outside_truth("u", found, (nodules, irrelevant)).all()  # another series' spheres do not count


def test_mined_rows_are_false_positives(mined) -> None:
    data = mined["data"]
    table = read_rows(mined["out"])
    assert table, "the demo bundle finds something on every phantom"
    assert list(table[0]) == ["seriesuid", "coordX", "coordY", "coordZ", "class", "probability"]
    truth = read_rows(data / "annotations.csv") + read_rows(data / "annotations_excluded.csv")
    for row in table:
        assert row["class"] == "0" and 0.0 <= float(row["probability"]) <= 1.0
        p = xyz(row)
        for t in truth:
            if t["seriesuid"] == row["seriesuid"]:
                d = float(t["diameter_mm"])
                radius = 5.0 if d < 0 else d / 2
                assert np.linalg.norm(p - xyz(t)) >= radius


def test_mined_count_matches_validate(mined, capsys) -> None:
    """Every finding of `lunakit validate` is either a hit or a mined row."""
    data, out = mined["data"], mined["root"] / "val"
    assert (
        main(
            [
                "validate",
                "--data",
                str(data),
                "--bundle",
                str(BUNDLE),
                "--split",
                "all",
                "--out",
                str(out),
                "--bootstrap",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    findings = json.loads((out / "findings_by_series.json").read_text())
    truth = read_rows(data / "annotations.csv") + read_rows(data / "annotations_excluded.csv")
    expected = 0
    for uid, found in findings.items():
        t = [r for r in truth if r["seriesuid"] == uid]
        centers = np.array([xyz(r) for r in t]).reshape(-1, 3)
        radii = np.array([5.0 if float(r["diameter_mm"]) < 0 else float(r["diameter_mm"]) / 2 for r in t])
        for f in found:
            d = np.linalg.norm(centers - np.asarray(f["center_xyz"]), axis=1)
            expected += int(not np.any(d < radii))
    assert len(read_rows(mined["out"])) == expected


def test_add_hard_negatives(mined, tmp_path) -> None:
    base = load_candidates(mined["data"])
    table = read_rows(mined["out"])
    more = add_hard_negatives(base, mined["out"])
    assert len(more) == len(base) + len(table)
    assert sum(c.is_nodule for c in more) == sum(c.is_nodule for c in base)
    assert [c.is_nodule for c in more] == sorted((c.is_nodule for c in more), reverse=True)  # nodules first
    stranger = tmp_path / "stranger.csv"
    stranger.write_text("seriesuid,coordX,coordY,coordZ,class\n1.2.3,0,0,0,0\n")
    with pytest.raises(DataError, match="not in the training data"):
        add_hard_negatives(base, stranger)
    positive = tmp_path / "positive.csv"
    positive.write_text(f"seriesuid,coordX,coordY,coordZ,class\n{base[0].series_uid},0,0,0,1\n")
    with pytest.raises(DataError, match="class 0 only"):
        add_hard_negatives(base, positive)


def test_train_classify_with_hard_negatives(mined, capsys) -> None:
    root = mined["root"]
    run = root / "cls"
    argv = ["train", "classify", "--data", str(mined["data"]), "--cache", str(root / "cache"), "--out", str(run)]
    argv += ["--epochs", "1", "--epoch-size", "8", "--batch-size", "4", "--val-stride", "2", "--conv-channels", "4"]
    argv += ["--augment", "flip,zoom,blur,contrast,shift,noise", "--no-progress"]
    assert main([*argv, "--hard-negatives", str(mined["out"])]) == 0
    from lunakit.train.loop import resume_config

    assert resume_config(run, {}).hard_negatives == str(mined["out"])  # stored with the run
    assert (run / "best.pt").is_file()
    capsys.readouterr()
    # bad input: a missing table, or the option on another task, gives one line and exit 2
    assert main([*argv, "--out", str(root / "cls2"), "--hard-negatives", str(root / "nope.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lunakit: error:") and "nope.csv" in err and "\n" not in err
    assert not (root / "cls2").exists()


def test_hard_negatives_belong_to_classify_only(tmp_path) -> None:
    from lunakit.train.config import TrainConfig, TrainError

    for task in ("segment", "malignancy"):
        with pytest.raises(TrainError, match="--hard-negatives applies to classify"):
            TrainConfig(task=task, data="d", cache="c", out=str(tmp_path / "r"), hard_negatives="h.csv")


def test_mine_negatives_bad_input(mined, tmp_path, capsys) -> None:
    data = str(mined["data"])
    cases = [
        (
            ["--data", str(tmp_path / "none"), "--bundle", str(BUNDLE), "--out", str(tmp_path / "h.csv")],
            "does not exist",
        ),
        (["--data", data, "--bundle", str(BUNDLE), "--out", str(tmp_path)], "is a folder"),
        (["--data", data, "--out", str(tmp_path / "h.csv")], "need --bundle"),
        (["--data", data, "--bundle", str(BUNDLE), "--out", str(tmp_path / "h.csv"), "--min-probability", "2"], "0..1"),
        (
            [
                "--data",
                data,
                "--bundle",
                str(BUNDLE),
                "--option",
                "seg_threshold=0.5",
                "--out",
                str(tmp_path / "h.csv"),
            ],
            "a bundle carries its own options",
        ),
        (["--data", data, "--seg", "s.pt", "--mal", "m.pt", "--out", str(tmp_path / "h.csv")], "--mal needs --cls"),
    ]
    for argv, message in cases:
        assert main(["mine-negatives", *argv, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lunakit: error:") and message in err and "\n" not in err
        assert not (tmp_path / "h.csv").exists()


def test_a_segmenter_alone_mines_the_same_rows(mined, tmp_path, capsys) -> None:
    """Which rows are mined depends on the segmenter alone (every false positive is kept at
    --min-probability 0): seeded checkpoints mined with and without the classifier, under the same
    --option values, give the same rows; without one the probability column is empty."""
    import torch

    from lunakit.io import ct
    from lunakit.io.luna import find_scans
    from lunakit.models import LunaModel, UNetWrapper
    from lunakit.models.checkpoint import save_checkpoint

    from helpers import hu_normalised, threshold_for_candidates

    torch.manual_seed(5)
    seg, cls = hu_normalised(UNetWrapper()), hu_normalised(LunaModel())
    seg_path = save_checkpoint(tmp_path / "seg.pt", seg, "seg")
    cls_path = save_checkpoint(tmp_path / "cls.pt", cls, "cls")
    hu = ct.load(next(iter(find_scans(mined["data"]).values()))).hu
    threshold = threshold_for_candidates(seg.eval(), hu)
    common = ["mine-negatives", "--data", str(mined["data"]), "--split", "all", "--quiet", "--seg", str(seg_path)]
    options = ["--option", f"seg_threshold={threshold}"]
    assert main([*common, "--cls", str(cls_path), *options, "--out", str(tmp_path / "with.csv")]) == 0
    assert main([*common, *options, "--out", str(tmp_path / "alone.csv")]) == 0
    assert main([*common, "--out", str(tmp_path / "default.csv")]) == 0  # seg_threshold 0.5

    def key(row: dict[str, str]) -> tuple:
        return row["seriesuid"], row["coordX"], row["coordY"], row["coordZ"]

    scored, alone = read_rows(tmp_path / "with.csv"), read_rows(tmp_path / "alone.csv")
    assert len(alone) > 10
    assert sorted(map(key, alone)) == sorted(map(key, scored))
    assert all(r["probability"] == "" for r in alone)
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in scored)
    assert len(read_rows(tmp_path / "default.csv")) != len(alone)  # --option took effect
    capsys.readouterr()
    argv = [*common, *options, "--min-probability", "0.5", "--out", str(tmp_path / "h.csv")]
    assert main(argv) == 2
    assert "--min-probability needs a classifier" in capsys.readouterr().err
    assert not (tmp_path / "h.csv").exists()


def test_mining_never_runs_the_malignancy_model(mined) -> None:
    """Mining keeps p_nodule alone, so a bundle's malignancy model is not run (it cost a third of
    the demo recipe's second mining round): a malignancy model that fails when called changes
    nothing, and the rows equal the CLI's."""
    import torch

    from lunakit.bundle import load_bundle
    from lunakit.evaluation.mining import mine_negatives

    class Refuses(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("the malignancy model ran during mining")

    device = torch.device("cpu")
    models, options, _ = load_bundle(BUNDLE, device=device)
    assert models.mal is not None
    models.mal = Refuses()
    result = mine_negatives(mined["data"], "all", 10, models, options, device)
    cli = read_rows(mined["out"])
    assert len(result.negatives) == len(cli) > 0
    for negative, row in zip(result.negatives, cli):
        assert negative.series_uid == row["seriesuid"]
        np.testing.assert_allclose(negative.center_xyz, xyz(row), rtol=0, atol=1e-9)
        assert negative.p_nodule == pytest.approx(float(row["probability"]), abs=1e-12)
