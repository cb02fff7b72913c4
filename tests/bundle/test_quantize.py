"""int8 static quantization of the classifier: agreement with float32, the quantized bundle, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from lunakit.bundle import export_bundle, load_bundle
from lunakit.bundle.quantize import QuantizeError, calibration_crops, luna_crops, quantize_classifier, script_quantized
from lunakit.cli import main
from lunakit.io.luna import find_scans
from lunakit.models import LunaModel, UNetWrapper
from lunakit.models.checkpoint import save_checkpoint
from lunakit.pipeline.options import AnalysisOptions

from helpers import require


def seeded_classifier(seed: int = 3) -> LunaModel:
    torch.manual_seed(seed)
    model = LunaModel()
    model.tail_batchnorm.running_mean.fill_(-500.0)
    model.tail_batchnorm.running_var.fill_(500.0**2)
    return model.eval()


@pytest.fixture(scope="module")
def phantom_crops(phantom_root):
    """(calibration crops of two scans, evaluation crops and labels of the third scan)."""
    uids = sorted(find_scans(phantom_root))
    calibration, _ = luna_crops(phantom_root, count=48, seed=0, series_uids=uids[:2])
    evaluation, labels = luna_crops(phantom_root, count=48, seed=1, series_uids=uids[2:])
    return calibration, evaluation, labels


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qckpt")
    torch.manual_seed(11)
    seg = UNetWrapper()
    seg.input_batchnorm.running_mean.fill_(-500.0)
    seg.input_batchnorm.running_var.fill_(500.0**2)
    return {
        "seg": save_checkpoint(folder / "seg.pt", seg.eval(), "seg"),
        "cls": save_checkpoint(folder / "cls.pt", seeded_classifier(3), "cls"),
        "mal": save_checkpoint(folder / "mal.pt", seeded_classifier(4), "mal"),
    }


def test_int8_model_tracks_float(phantom_crops):
    calibration, evaluation, labels = phantom_crops
    assert calibration.shape[1:] == (1, 32, 48, 48) and len(evaluation) == len(labels)
    model = seeded_classifier()
    qmodel = quantize_classifier(model, calibration)
    from torch.ao.nn.intrinsic.quantized import ConvReLU3d
    from torch.ao.nn.quantized import Linear

    assert sum(isinstance(m, ConvReLU3d) for m in qmodel.modules()) == 8  # every conv runs in int8
    assert sum(isinstance(m, Linear) for m in qmodel.modules()) == 1
    with torch.no_grad():
        reference_logits, reference = model(evaluation)
        logits, probability = qmodel(evaluation)
        _, scripted = script_quantized(qmodel)(evaluation)
    assert float(reference[:, 1].std()) > 0.01  # graded outputs: the comparison means something
    assert torch.equal(scripted, probability)
    # an untrained net quantizes worse than a trained one (see the book model's test): loose bounds
    difference = (probability[:, 1] - reference[:, 1]).abs()
    assert float(difference.mean()) < 0.05
    assert float(difference.max()) < 0.3
    assert float((logits - reference_logits).abs().mean()) < 0.15 * float(reference_logits.std())
    torch.testing.assert_close(probability.sum(dim=1), torch.ones(len(evaluation)))
    with pytest.raises(ValueError, match="input must be"):
        qmodel(torch.zeros(1, 1, 16, 48, 48))


def test_book_classifier_quantized_on_the_real_crop(test_data, phantom_crops):
    from lunakit.models.book import import_book

    model, _ = import_book(
        require(test_data / "book-models" / "cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state"), "cls"
    )
    crop = calibration_crops(require(test_data / "crops" / "cls_val_example.pt"))
    assert crop.shape == (1, 1, 32, 48, 48)
    calibration, evaluation, _ = phantom_crops
    qmodel = quantize_classifier(model, torch.cat([calibration, crop]))
    with torch.no_grad():
        float_p = model(torch.cat([crop, evaluation]))[1][:, 1]
        int8_p = qmodel(torch.cat([crop, evaluation]))[1][:, 1]
    assert float(int8_p[0]) < 0.5 and float(float_p[0]) < 0.5  # both call the real non-nodule a non-nodule
    assert float((int8_p - float_p).abs().mean()) < 0.01
    assert float((int8_p - float_p).abs().max()) < 0.15


def test_quantized_bundle_through_the_cli(checkpoints, phantom_root, phantom_crops, tmp_path):
    out = tmp_path / "int8"
    args = [
        "export",
        "--seg",
        str(checkpoints["seg"]),
        "--cls",
        str(checkpoints["cls"]),
        "--mal",
        str(checkpoints["mal"]),
        "--out",
        str(out),
        "--quantize",
        "int8",
        "--calibration",
        str(phantom_root),
        "--calibration-crops",
        "32",
        "--option",
        "crop_mode=pad",
    ]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["dtype"] == "int8"
    assert manifest["quantization"]["models"] == ["cls", "mal"]
    assert manifest["quantization"]["calibration"]["crops"] == 32
    assert manifest["models"]["cls"]["dtype"] == "int8" and "dtype" not in manifest["models"]["seg"]
    float_bundle = export_bundle(tmp_path / "float", checkpoints, AnalysisOptions(crop_mode="pad"))
    assert (out / "cls.pt").stat().st_size < 0.5 * (float_bundle / "cls.pt").stat().st_size
    assert (out / "seg.pt").read_bytes() == (float_bundle / "seg.pt").read_bytes()

    # the bundle's classifiers, loaded as any bundle is, score crops nearly as the float ones do
    int8_models, _, _ = load_bundle(out)
    float_models, _, _ = load_bundle(float_bundle)
    _, evaluation, _ = phantom_crops
    with torch.no_grad():
        for kind in ("cls", "mal"):
            int8_p = getattr(int8_models, kind)(evaluation)[1][:, 1]
            float_p = getattr(float_models, kind)(evaluation)[1][:, 1]
            difference = (int8_p - float_p).abs()
            assert float(difference.mean()) < 0.05 and float(difference.max()) < 0.3, kind
    assert int8_models.checksums["cls"] == manifest["models"]["cls"]["sha256"]


def test_calibration_sources(tmp_path, phantom_root):
    crops = torch.randn(5, 32, 48, 48) * 200
    torch.save(crops, tmp_path / "crops.pt")
    loaded = calibration_crops(tmp_path / "crops.pt", count=3)
    assert loaded.shape == (3, 1, 32, 48, 48)
    torch.testing.assert_close(loaded[:, 0], crops[:3])
    from_folder = calibration_crops(phantom_root, count=10)
    assert from_folder.shape == (10, 1, 32, 48, 48)
    assert float(from_folder.min()) >= -1000 and float(from_folder.max()) <= 1000


@pytest.mark.parametrize(
    "case, message",
    [
        ("wrong_shape", "must be"),
        ("nan", "NaN"),
        ("not_luna", "expected a float LunaModel"),
        ("empty", "no calibration crops"),
    ],
)
def test_bad_quantization_inputs(case, message):
    model, crops = seeded_classifier(), torch.zeros(2, 1, 32, 48, 48)
    if case == "wrong_shape":
        crops = torch.zeros(2, 1, 16, 48, 48)
    elif case == "nan":
        crops[0, 0, 0, 0, 0] = float("nan")
    elif case == "not_luna":
        model = UNetWrapper()
    elif case == "empty":
        crops = torch.zeros(0, 1, 32, 48, 48)
    with pytest.raises(QuantizeError, match=message):
        quantize_classifier(model, crops)


def test_bad_calibration_files(tmp_path):
    with pytest.raises(QuantizeError, match="not found"):
        calibration_crops(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(QuantizeError, match="not a readable torch file"):
        calibration_crops(tmp_path / "junk.pt")
    torch.save({"a": 1}, tmp_path / "dict.pt")
    with pytest.raises(QuantizeError, match="float tensor"):
        calibration_crops(tmp_path / "dict.pt")
    torch.save(torch.zeros(2, 3, 32, 48, 48), tmp_path / "shape.pt")
    with pytest.raises(QuantizeError, match="must be"):
        calibration_crops(tmp_path / "shape.pt")


def test_cli_refusals(checkpoints, tmp_path, capsys):
    base = ["export", "--seg", str(checkpoints["seg"]), "--cls", str(checkpoints["cls"]), "--quantize", "int8"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 2
    assert "needs --calibration" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b"), "--calibration", str(tmp_path / "nowhere")]) == 2
    assert "calibration data not found" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind
