"""The README's main job: `lunakit demo` (phantom scan -> luna_infer + demo bundle -> report)."""

from __future__ import annotations

import json

from lunakit.bundle import load_bundle
from lunakit.cli import main
from lunakit.cli.demo import DEMO_BUNDLE
from lunakit.io import ct
from lunakit.io.luna import find_scans
from lunakit.pipeline.analyze import analyze


def test_demo_runs_luna_infer_with_the_committed_bundle(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    document = json.loads((out / "results" / "findings.json").read_text())
    assert (out / "results" / "report.html").is_file() and (out / "results" / "findings.csv").is_file()
    assert f"{len(document['findings'])} candidates" in printed and "report:" in printed
    # luna_infer's findings equal the Python pipeline's on the same scan and bundle.
    scan = ct.load(next(iter(find_scans(out / "phantom").values())))
    models, options, _ = load_bundle(DEMO_BUNDLE)
    expected = analyze(scan, models, options)
    assert len(document["findings"]) == len(expected)
    for got, want in zip(document["findings"], expected):
        assert abs(got["p_nodule"] - want.p_nodule) < 1e-4
        assert max(abs(a - b) for a, b in zip(got["center_irc"], want.center_irc)) < 1e-3


def test_demo_without_a_bundle_fails_cleanly(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--bundle", str(tmp_path / "none")]) == 2
    assert "demo bundle not found" in capsys.readouterr().err
