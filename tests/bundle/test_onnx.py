"""`lunakit export --format onnx`: onnxruntime against torch on the real crop and phantom slices."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import require

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lunakit.bundle import BundleError, load_bundle  # noqa: E402
from lunakit.bundle.onnx import OPSET, OnnxModel, load_onnx_bundle, read_onnx_manifest  # noqa: E402
from lunakit.cli import main  # noqa: E402
from lunakit.io import ct  # noqa: E402
from lunakit.io.luna import find_scans  # noqa: E402
from lunakit.models.checkpoint import load_checkpoint, write_untrained_checkpoints  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Seeded fresh seg and cls checkpoints; HU-like input statistics keep outputs graded."""
    return write_untrained_checkpoints(tmp_path_factory.mktemp("ckpt"), ("seg", "cls"), seed=7)


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory, checkpoints):
    out = tmp_path_factory.mktemp("onnx") / "bundle"
    code = main(
        [
            "export",
            "--seg",
            str(checkpoints["seg"]),
            "--cls",
            str(checkpoints["cls"]),
            "--out",
            str(out),
            "--format",
            "onnx",
            "--option",
            "nodule_threshold=0.4",
        ]
    )
    assert code == 0
    return out


def eager(checkpoints, kind):
    model, _ = load_checkpoint(checkpoints[kind], kind=kind)
    return model.eval()


def test_manifest_and_graphs(onnx_bundle):
    import onnx

    manifest = read_onnx_manifest(onnx_bundle)
    assert manifest["format"] == "lunakit-onnx-bundle"
    assert manifest["onnx_opset"] == OPSET
    assert manifest["options"]["nodule_threshold"] == 0.4
    assert set(manifest["models"]) == {"seg", "cls"}
    for kind, inputs, outputs in (("cls", ["crops"], ["logits", "probability"]), ("seg", ["slices"], ["probability"])):
        graph = onnx.load(str(onnx_bundle / manifest["models"][kind]["file"]))
        assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
        assert [i.name for i in graph.graph.input] == inputs
        assert [o.name for o in graph.graph.output] == outputs
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch
        if kind == "seg":
            assert dims[2].dim_param and dims[3].dim_param  # dynamic height and width
            assert dims[1].dim_value == 7


def test_classifier_on_the_real_crop(onnx_bundle, checkpoints, test_data):
    crop, label, series_uid, center = torch.load(
        require(test_data / "crops" / "cls_val_example.pt"), weights_only=False
    )
    assert tuple(crop.shape) == (1, 32, 48, 48)
    onnx_cls = OnnxModel(onnx_bundle / "cls.onnx")
    model = eager(checkpoints, "cls")
    # the real crop alone, then in a batch of 5 with shifted / flipped copies (dynamic batch axis)
    batches = [
        crop[None],
        torch.stack([crop, crop.flip(-1), crop.flip(-2), (crop + 150).clamp(-1000, 1000), crop.roll(5, dims=-1)]),
    ]
    for crops in batches:
        logits, probability = onnx_cls(crops)
        with torch.no_grad():
            ref_logits, ref_probability = model(crops)
        assert logits.shape == ref_logits.shape
        assert float((logits - ref_logits).abs().max()) < TOLERANCE
        assert float((probability - ref_probability).abs().max()) < TOLERANCE
        assert 1e-6 < float(ref_probability[0, 1]) < 1 - 1e-6  # not saturated, so the comparison means something


def test_book_classifier_on_the_real_crop(test_data, tmp_path):
    """The book's trained classifier, exported, on the real LUNA16 crop (a non-nodule)."""
    from lunakit.bundle.onnx import export_model
    from lunakit.models.book import import_book

    book = require(test_data / "book-models" / "cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state")
    model, _ = import_book(book, "cls")
    crop, label, _, _ = torch.load(require(test_data / "crops" / "cls_val_example.pt"), weights_only=False)
    path = export_model(model, "cls", tmp_path / "book_cls.onnx")
    crops = torch.stack([crop, crop.flip(-1)])
    logits, probability = OnnxModel(path)(crops)
    with torch.no_grad():
        ref_logits, ref_probability = model(crops)
    assert float((logits - ref_logits).abs().max()) < TOLERANCE
    assert float((probability - ref_probability).abs().max()) < TOLERANCE
    assert int(label.argmax()) == 0 and float(ref_probability[0, 1]) < 0.5  # the book model calls it a non-nodule


def test_segmentation_on_phantom_slices(onnx_bundle, checkpoints, phantom_root):
    scan = ct.load(sorted(find_scans(phantom_root).values())[0])
    hu = torch.from_numpy(scan.hu.astype(np.float32)).clamp(-1000, 1000)  # (I, R, C)
    centers = [10, 24, 37]
    stacks = torch.stack([hu[c - 3 : c + 4] for c in centers])  # (3, 7, R, C)
    onnx_seg = OnnxModel(onnx_bundle / "seg.onnx")
    model = eager(checkpoints, "seg")
    # full slices, and an odd-sized window that makes the U-Net pad (dynamic height / width)
    for stack in (stacks, stacks[:2, :, 5:90, 3:80]):
        out = onnx_seg(stack)
        with torch.no_grad():
            ref = model(stack)
        assert out.shape == ref.shape == (stack.shape[0], 1) + tuple(stack.shape[2:])
        assert float((out - ref).abs().max()) < TOLERANCE
        assert float(ref.std()) > 1e-3  # not a constant map


def test_load_onnx_bundle_gives_pipeline_models(onnx_bundle, checkpoints):
    models, options, manifest = load_onnx_bundle(onnx_bundle)
    assert options.nodule_threshold == 0.4
    assert models.mal is None
    crops = torch.randn(3, 1, 32, 48, 48) * 300 - 400
    _, probability = models.cls(crops)
    with torch.no_grad():
        _, ref = eager(checkpoints, "cls")(crops)
    assert float((probability - ref).abs().max()) < TOLERANCE


def test_damaged_or_foreign_bundles_are_refused(onnx_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(onnx_bundle, copy)
    data = bytearray((copy / "cls.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "cls.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_onnx_bundle(copy)
    with pytest.raises(BundleError, match="not a lunakit bundle manifest"):
        load_bundle(onnx_bundle)  # the TorchScript loader does not take an ONNX bundle
    manifest = json.loads((onnx_bundle / "manifest.json").read_text())
    manifest["format_version"] = 99
    other = tmp_path / "future"
    shutil.copytree(onnx_bundle, other)
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="version"):
        read_onnx_manifest(other)


def test_cli_refusals(checkpoints, onnx_bundle, tmp_path, capsys):
    base = ["export", "--seg", str(checkpoints["seg"]), "--cls", str(checkpoints["cls"]), "--format", "onnx"]
    assert main(base + ["--out", str(onnx_bundle)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "q"), "--quantize", "int8"]) == 2
    assert "torchscript only" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
