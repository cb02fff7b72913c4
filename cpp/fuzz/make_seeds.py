"""Writes the libFuzzer seed corpora of cpp/fuzz/corpus/ (docs/fuzzing.md): small valid inputs
for each target, so fuzzing starts from files the readers accept. Run from the repository root:
    .venv/bin/python cpp/fuzz/make_seeds.py
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CORPUS = Path(__file__).parent / "corpus"
MODEL_BYTES = b"not a model"  # what fuzz_manifest.cpp writes as seg.pt and cls.pt


def mha(voxels: np.ndarray, element_type: str, extra: str = "", compressed: bool = False) -> bytes:
    data = voxels.tobytes()
    if compressed:
        data = zlib.compress(data)
        extra += f"CompressedData = True\nCompressedDataSize = {len(data)}\n"
    dims = " ".join(str(n) for n in reversed(voxels.shape))
    header = (
        f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"Offset = -10 20.5 -300\nElementSpacing = 0.7 0.7 2.5\n{extra}"
        f"DimSize = {dims}\nElementType = {element_type}\nElementDataFile = LOCAL\n"
    )
    return header.encode() + data


def metaimage_seeds() -> dict[str, bytes]:
    hu = (np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) * 37 - 1000).astype(np.int16)
    return {
        "short.mha": mha(hu, "MET_SHORT"),
        "float.mha": mha(hu.astype(np.float32), "MET_FLOAT"),
        "uchar-oblique.mha": mha(hu.astype(np.uint8), "MET_UCHAR", "TransformMatrix = 0 1 0 1 0 0 0 0 -1\n"),
        "compressed.mha": mha(hu, "MET_SHORT", compressed=True),
        "raw-file.mhd": b"NDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\nHeaderSize = -1\nElementDataFile = scan.raw\n",
    }


def dicom_seeds() -> dict[str, bytes]:
    image = sitk.GetImageFromArray((np.arange(64, dtype=np.int16).reshape(8, 8) * 10 - 1000).astype(np.int16))
    image.SetSpacing((0.7, 0.7))
    tags = {
        "0008|0060": "CT",
        "0020|000e": "1.2.3.4.5",
        "0020|0032": "-10\\20\\-300",
        "0020|0037": "1\\0\\0\\0\\1\\0",
        "0028|1052": "0",
        "0028|1053": "1",
    }
    for key, value in tags.items():
        image.SetMetaData(key, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slice.dcm"
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(path))
        writer.Execute(image)
        return {"slice.dcm": path.read_bytes(), "slice-deflated.dcm": deflated(path)}


def deflated(path: Path) -> bytes:
    """The same slice with a deflated data set, so that fuzzing reaches the inflating walk."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "deflated.dcm"
        ds.save_as(out, enforce_file_format=True)
        return out.read_bytes()


def manifest_seeds() -> dict[str, bytes]:
    sha = hashlib.sha256(MODEL_BYTES).hexdigest()
    manifest = {
        "format": "lunakit-bundle",
        "format_version": 1,
        "lunakit_version": "0.0",
        "torch_version": "2.13.0",
        "options": {"seg_threshold": 0.4, "crop_size": [32, 48, 48], "crop_mode": "pad"},
        "models": {"seg": {"file": "seg.pt", "sha256": sha}, "cls": {"file": "cls.pt", "sha256": sha}},
    }
    aoti = {**manifest, "model_format": "aoti", "options": {}}
    return {
        "manifest.json": json.dumps(manifest, indent=2).encode(),
        "aoti.json": json.dumps(aoti).encode(),
        "options.json": json.dumps({"hu_min": -900, "connectivity": 26, "malignancy_on": "nodules"}).encode(),
    }


def findings_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {f"random-{k}.bin": rng.bytes(256) for k in range(3)}


def main() -> None:
    for target, seeds in (
        ("metaimage", metaimage_seeds()),
        ("dicom", dicom_seeds()),
        ("manifest", manifest_seeds()),
        ("findings", findings_seeds()),
    ):
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
        print(f"{folder}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
