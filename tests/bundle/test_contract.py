"""One contract, two readers: the Python runtime (lunakit.bundle) and the C++ runtime
(lunakit._core, as luna_infer and PACS code load bundles) agree on a manifest's pipeline options:
the same defaults, and the same refusals with the same one-line message."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from lunakit.bundle import load_bundle
from lunakit.errors import LunakitError
from lunakit.pipeline.cpp_engine import CppAnalyzer
from lunakit.pipeline.options import AnalysisOptions

BAD_OPTIONS = [
    ("seg_threshold", 1.5),
    ("nodule_threshold", -0.1),
    ("hu_min", 2000.0),
    ("context_slices", -1),
    ("erosion_iterations", -2),
    ("connectivity", 4),
    ("min_diameter_mm", -1.0),
    ("crop_mode", "wrap"),
    ("center_mode", "peak"),
    ("malignancy_on", "some"),
    ("seg_batch_size", 0),
    ("crop_size", [32, 0, 48]),
    ("frobnicate", 1),
]


def with_options(bundle, tmp_path, **changes):
    """A copy of `bundle` whose manifest options carry `changes` (options are not checksummed)."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["options"].update(changes)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def options_message(text: str) -> str:
    """The "options: ..." part of a refusal (each runtime puts the file in front its own way)."""
    match = re.search(r"options: .*", text)
    assert match, text
    return match.group(0)


def test_the_same_defaults(bundle, tmp_path):
    manifest = json.loads((bundle / "manifest.json").read_text())
    copy = tmp_path / "defaults"
    shutil.copytree(bundle, copy)
    manifest["options"] = {}  # every field missing: each runtime fills in its defaults
    (copy / "manifest.json").write_text(json.dumps(manifest))
    _, python_options, _ = load_bundle(copy)
    assert python_options == AnalysisOptions()
    assert CppAnalyzer(copy).options == AnalysisOptions()


@pytest.mark.parametrize("field, value", BAD_OPTIONS)
def test_the_same_refusals(bundle, tmp_path, field, value):
    copy = with_options(bundle, tmp_path, **{field: value})
    with pytest.raises(LunakitError) as python_error:
        load_bundle(copy)
    with pytest.raises(LunakitError) as cpp_error:
        CppAnalyzer(copy)
    python_text, cpp_text = str(python_error.value), str(cpp_error.value)
    assert "\n" not in python_text and "\n" not in cpp_text
    assert field.split("_batch")[0] in python_text or "batch sizes" in python_text
    assert options_message(python_text) == options_message(cpp_text)
