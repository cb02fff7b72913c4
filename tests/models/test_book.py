"""The book's trained models imported as lunakit checkpoints, checked on real data; checkpoint files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lunakit.cli import main as lunakit_main
from lunakit.models import LunaModel, UNetWrapper
from lunakit.models.book import convert, import_book
from lunakit.models.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint

from helpers import require

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

BOOK_CLS = "book-models/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state"
BOOK_SEG = "book-models/seg_2020-01-26_19.45.12_w4d3c1-bal_1_nodupe-label_pos-d1_fn8-adam.best.state"
CT_DIR = "ct/C3N-00247-chest-ct"


@pytest.fixture(scope="module")
def imported(test_data, tmp_path_factory) -> dict[str, Path]:
    """Both book models converted through the CLI into lunakit checkpoints."""
    out = tmp_path_factory.mktemp("imported")
    paths = {}
    for kind, name in (("cls", BOOK_CLS), ("seg", BOOK_SEG)):
        paths[kind] = out / f"{kind}.pt"
        assert (
            lunakit_main(["import-book", str(require(test_data / name)), "--kind", kind, "--out", str(paths[kind])])
            == 0
        )
    return paths


def test_imported_classifier_rejects_real_non_nodule(test_data, imported):
    crop, label, series_uid, _center = torch.load(
        require(test_data / "crops/cls_val_example.pt"), map_location="cpu", weights_only=True
    )
    assert crop.shape == (1, 32, 48, 48) and label.tolist() == [1, 0]  # a non-nodule candidate
    model, meta = load_checkpoint(imported["cls"], kind="cls")
    assert meta["kind"] == "cls" and meta["model_class"] == "LunaModel"
    assert meta["extra"]["book"]["epoch"] == 90
    with torch.no_grad():
        logits, probs = model(crop[None])
    p_nodule = float(probs[0, 1])
    assert p_nodule < 1e-6, p_nodule
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert abs(float(scripted(crop[None])[1][0, 1]) - p_nodule) < 1e-9


def read_dicom_series(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    assert len(files) == 99
    reader.SetFileNames(files)
    return sitk.GetArrayFromImage(reader.Execute())  # [I, R, C] HU


@dataclasses.dataclass(frozen=True)
class _Config:
    lr: float = 0.001
    data: Path = Path("/data/luna")
    augment: tuple[str, ...] = ("flip", "offset")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(3)
    model = LunaModel()
    model.tail_batchnorm.running_mean.fill_(-420.0)
    path = save_checkpoint(tmp_path / "m.pt", model, "mal", _Config(), extra={"epoch": 7, "auc": np.float64(0.9)})
    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["format"] == FORMAT and raw["format_version"] == 1
    assert raw["config"] == {"lr": 0.001, "data": "/data/luna", "augment": ("flip", "offset")}
    assert raw["config_class"].endswith("_Config")
    assert raw["torch_version"] == str(torch.__version__)
    loaded, meta = load_checkpoint(path, kind="mal")
    assert isinstance(loaded, LunaModel) and not loaded.training
    assert meta["extra"] == {"epoch": 7, "auc": 0.9} and "state_dict" not in meta
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(1, 1, 32, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model.eval()(x)[0], atol=0, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left

    seg_path = save_checkpoint(tmp_path / "s.pt", UNetWrapper(depth=2, wf=3), "seg", {"note": "small"})
    seg, meta = load_checkpoint(seg_path)
    assert meta["model_args"]["depth"] == 2 and seg.unet.last.weight.shape == (1, 8, 1, 1)


def test_save_checkpoint_refuses_mismatched_kind_and_bad_config(tmp_path):
    with pytest.raises(ValueError, match="UNetWrapper"):
        save_checkpoint(tmp_path / "x.pt", LunaModel(), "seg")
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(tmp_path / "x.pt", LunaModel(), "cls", {"thing": object()})
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tmp_path / "missing" / "x.pt", LunaModel(), "cls")
    assert list(tmp_path.iterdir()) == []


def test_seg_checkpoint_pooling(tmp_path, capsys):
    """A checkpoint written before `pool` existed loads as max pooling, what it was trained with;
    an unknown pooling is refused naming the value."""
    torch.manual_seed(4)
    model = UNetWrapper(pool="max").eval()
    model.input_batchnorm.running_mean.fill_(-500.0)
    model.input_batchnorm.running_var.fill_(400.0**2)
    payload = torch.load(save_checkpoint(tmp_path / "max.pt", model, "seg"), weights_only=True)
    assert payload["model_args"]["pool"] == "max"
    del payload["model_args"]["pool"]
    torch.save(payload, tmp_path / "legacy.pt")
    legacy, _ = load_checkpoint(tmp_path / "legacy.pt", kind="seg")
    averaging = UNetWrapper(pool="avg").eval()
    averaging.load_state_dict(model.state_dict())
    x = torch.randn(1, 7, 16, 16) * 300.0 - 500.0
    with torch.no_grad():
        assert legacy.pool == "max" and torch.equal(legacy(x), model(x))
        assert not torch.allclose(averaging(x), model(x))  # the same weights pooled otherwise
    payload["model_args"]["pool"] = "median"
    torch.save(payload, tmp_path / "median.pt")
    with pytest.raises(
        CheckpointError, match="median.pt: bad arguments for UNetWrapper: pool must be one of avg, max, got 'median'"
    ):
        load_checkpoint(tmp_path / "median.pt")
    cls = save_checkpoint(tmp_path / "cls.pt", LunaModel(), "cls")
    _cli_fails(
        capsys,
        ["export", "--seg", str(tmp_path / "median.pt"), "--cls", str(cls), "--out", str(tmp_path / "bundle")],
        "got 'median'",
    )
    assert not (tmp_path / "bundle").exists()


def test_load_checkpoint_refuses_book_state(test_data):
    with pytest.raises(CheckpointError, match="import-book"):
        load_checkpoint(require(test_data / BOOK_CLS))


def test_load_checkpoint_errors(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", LunaModel(), "cls")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "garbage.pt").write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="garbage.pt: not a torch file"):
        load_checkpoint(tmp_path / "garbage.pt")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable torch file"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="holds a 'cls' model, expected 'seg'"):
        load_checkpoint(good, kind="seg")

    payload = torch.load(good, weights_only=True)
    payload["state_dict"]["head_linear.extra"] = torch.zeros(1)
    del payload["state_dict"]["block2.conv1.bias"]
    torch.save(payload, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match="1 missing \\(block2.conv1.bias\\), 1 unexpected"):
        load_checkpoint(tmp_path / "keys.pt")
    payload = torch.load(good, weights_only=True)
    payload["model_args"]["conv_channels"] = 4
    torch.save(payload, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(tmp_path / "shape.pt")
    payload = torch.load(good, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_import_book_python_api(test_data):
    model, metadata = import_book(require(test_data / BOOK_SEG), "seg")
    assert isinstance(model, UNetWrapper) and metadata["optimizer_name"] == "Adam"
    assert model.init_args() == UNetWrapper().init_args() and model.pool == "avg"  # the book's avg_pool2d
    with pytest.raises(CheckpointError, match="holds a LunaModel"):
        import_book(require(test_data / BOOK_CLS), "seg")


def _cli_fails(capsys, argv: list[str], message: str) -> None:
    assert lunakit_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_cli_errors_leave_no_output(tmp_path, capsys, test_data):
    out = tmp_path / "out" / "model.pt"
    out.parent.mkdir()
    (tmp_path / "garbage.state").write_bytes(b"\x00garbage" * 100)
    book_cls = require(test_data / BOOK_CLS)
    (tmp_path / "cut.state").write_bytes(book_cls.read_bytes()[:20000])
    torch.save({"model_state": {"w": torch.zeros(2)}}, tmp_path / "other.state")
    cases = [
        ("garbage.state", "cls", "not a torch file"),
        ("none.state", "cls", "no such file"),
        ("cut.state", "cls", "not a readable torch file"),
        (book_cls, "seg", "use --kind cls|mal"),
        ("other.state", "cls", "neither LunaModel nor UNetWrapper"),
    ]
    for source, kind, message in cases:
        _cli_fails(capsys, ["import-book", str(tmp_path / source), "--kind", kind, "--out", str(out)], message)
    assert list(out.parent.iterdir()) == []


def test_convert_mal_kind(tmp_path, test_data):
    path = convert(require(test_data / BOOK_CLS), "mal", tmp_path / "mal.pt")
    model, meta = load_checkpoint(path, kind="mal")
    assert isinstance(model, LunaModel) and meta["extra"]["imported_from"].startswith("cls_")
    assert len(meta["extra"]["source_sha256"]) == 64
