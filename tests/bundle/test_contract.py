"""One contract, two readers: the Python runtime (lunakit.bundle, AnalysisOptions) and the C++
runtime (lunakit._core, as luna_infer and PACS code load bundles) agree on a manifest and its
pipeline options: the book's defaults, and the same refusals with the same one-line message.
Both read through lunakit::read_manifest / PipelineOptions; these tests hold every way in to it."""

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
    ("lung_margin_mm", -1.0),
    ("lung_margin_mm", 1000.0),
    ("lung_margin_mm", "near"),
    ("malignancy_on", "some"),
    ("seg_batch_size", 0),
    ("crop_size", [32, 0, 48]),
    ("frobnicate", 1),
    ("seg_threshold", "abc"),
    ("connectivity", 6.5),
    ("crop_mode", None),
    ("crop_size", 48),
    ("resample_mm", [1.0, 0.7]),
    ("resample_mm", [0.0, 0.7, 0.7]),
    ("resample_mm", [1.0, 0.7, 20.0]),
    ("resample_mm", "1,0.7,0.7"),
    ("precision", "fp16"),
    ("precision", 16),
    ("cls_flips", 1),
    ("cls_flips", "yes"),
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


def test_the_defaults_are_the_books():
    """The book's numbers (nodule_analysis / the datasets of chapters 12-14), written out by hand."""
    assert AnalysisOptions().to_dict() == {
        "resample_mm": None,  # the book works in the scan's own voxels
        "hu_min": -1000.0,
        "hu_max": 1000.0,
        "context_slices": 3,
        "seg_threshold": 0.5,
        "erosion_iterations": 1,
        "connectivity": 6,
        "min_diameter_mm": 0.0,
        "center_mode": "mass",
        "lung_margin_mm": None,  # every candidate, wherever it lies
        "crop_size": [32, 48, 48],
        "crop_mode": "shift",
        "nodule_threshold": 0.5,
        "malignancy_on": "all",
        "cls_flips": False,  # one pass per crop
        "seg_batch_size": 8,
        "cls_batch_size": 64,
        "precision": "fp32",
    }


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
    with pytest.raises(LunakitError) as direct:  # AnalysisOptions(...) as library code builds it
        AnalysisOptions.from_dict({field: value})
    assert str(direct.value) == options_message(python_text)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused(value):
    for field in ("hu_min", "hu_max", "seg_threshold", "min_diameter_mm", "lung_margin_mm"):
        with pytest.raises(LunakitError, match=f"options: .*{field}.* got .*(nan|inf)"):
            AnalysisOptions(**{field: value})


def test_values_are_normalized_to_their_fields_type():
    options = AnalysisOptions(hu_min=-900, connectivity=26.0, crop_size=[16, 24, 24])
    assert options.hu_min == -900.0 and isinstance(options.hu_min, float)
    assert options.connectivity == 26 and isinstance(options.connectivity, int)
    assert options.crop_size == (16, 24, 24)


MANIFEST_CASES = {
    "a file outside the folder": ({"file": "../elsewhere/seg.pt"}, "names '../elsewhere/seg.pt', not a file inside"),
    "an absolute path": ({"file": "/etc/passwd"}, "names '/etc/passwd', not a file inside"),
    "a file name that is not text": ({"file": 5}, "malformed model entry 'seg'"),
    "a checksum that is not text": ({"sha256": None}, "malformed model entry 'seg'"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_the_same_manifest_refusals(bundle, tmp_path, case):
    change, message = MANIFEST_CASES[case]
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(copy / "seg.pt", elsewhere / "seg.pt")  # a real model where the entry points
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["models"]["seg"].update(change)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    for load in (load_bundle, CppAnalyzer):
        with pytest.raises(LunakitError, match=re.escape(message)) as error:
            load(copy)
        assert "\n" not in str(error.value)
