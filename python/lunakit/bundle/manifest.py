"""Bundle manifests: what every bundle format shares (docs/design.md, "Bundle").

A bundle is a folder with `manifest.json` and one file per model. The manifest carries the format
and its version, the lunakit and torch versions, the pipeline options and each file's sha256;
readers refuse unknown versions, checksum mismatches and files outside the folder. This module
writes and checks manifests for every format: TorchScript (lunakit.bundle.torchscript),
AOTInductor (lunakit.bundle.aoti: `"model_format": "aoti"`, `<kind>.pt2` files) and ONNX
(lunakit.bundle.onnx, a manifest of its own format name).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

import lunakit
from lunakit.errors import LunakitError
from lunakit.io.files import sha256_of
from lunakit.pipeline.options import AnalysisOptions

FORMAT = "lunakit-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_KINDS = ("seg", "cls", "mal")
MODEL_FORMATS = ("torchscript", "aoti")  # manifest "model_format"; absent = "torchscript"


class BundleError(LunakitError):
    """A bundle that is missing, incomplete, tampered with or of an unknown version."""


def check_export_request(
    out: str | os.PathLike, checkpoints: dict[str, Any], kinds: Iterable[str] = MODEL_KINDS
) -> Path:
    """The checks every exporter makes before any work: seg and cls given, known kinds, `out` new
    and its parent a folder. Returns `out` as a Path."""
    missing = [k for k in ("seg", "cls") if k not in checkpoints]
    if missing:
        raise BundleError(f"export: a bundle needs a {' and a '.join(missing)} model")
    unknown = sorted(set(checkpoints) - set(kinds))
    if unknown:
        raise BundleError(f"export: unknown model kind(s) {', '.join(unknown)}")
    out = Path(out)
    if out.exists():
        raise BundleError(f"{out}: already exists; choose a new folder")
    if not out.parent.is_dir():
        raise BundleError(f"{out}: folder {out.parent} does not exist")
    return out


def manifest_header(format_name: str, format_version: int, **extra: Any) -> dict[str, Any]:
    """The manifest fields before "options" and "models": format, version, lunakit and torch versions."""
    return {
        "format": format_name,
        "format_version": format_version,
        **extra,
        "lunakit_version": lunakit.__version__,
        "torch_version": str(torch.__version__).split("+")[0],
    }


def write_bundle(
    out: Path,
    header: dict[str, Any],
    options: AnalysisOptions,
    write_models: Callable[[Path], dict[str, dict[str, Any]]],
    **trailer: Any,
) -> Path:
    """Assemble a bundle in a temporary folder beside `out` and rename it into place: never half
    written. `write_models(staging)` writes the model files and returns the manifest's "models"."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        models = write_models(staging)
        manifest = {**header, **trailer, "options": options.to_dict(), "models": models}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def model_entry(staging: Path, file_name: str, source: str | os.PathLike, **extra: Any) -> dict[str, Any]:
    """A manifest "models" entry for a file just written to `staging`."""
    return {
        "file": file_name,
        "sha256": sha256_of(staging / file_name),
        "source": os.path.basename(str(source)),
        **extra,
    }


def check_model_entries(bundle: Path, path: Path, manifest: dict[str, Any], kinds: Iterable[str]) -> None:
    """Every model entry well formed, of a known kind, its file present and its sha256 right."""
    models = manifest.get("models")
    if not isinstance(models, dict) or "seg" not in models or "cls" not in models:
        raise BundleError(f"{path}: manifest must name a seg and a cls model")
    kinds = tuple(kinds)
    for kind, entry in models.items():
        if kind not in kinds or not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
            raise BundleError(f"{path}: malformed model entry {kind!r}")
        model_path = bundle / entry["file"]
        if not model_path.is_file():
            raise BundleError(f"{bundle}: model file {entry['file']} is missing")
        if sha256_of(model_path) != entry["sha256"]:
            raise BundleError(f"{bundle}: checksum mismatch for {entry['file']}")


def model_format(manifest: dict[str, Any]) -> str:
    """How the bundle's models are stored: "torchscript" (the default) or "aoti"."""
    return manifest.get("model_format", "torchscript")


def read_checked_manifest(
    bundle: str | os.PathLike, format_name: str, format_version: int, kinds: Iterable[str], label: str
) -> dict[str, Any]:
    """A bundle folder's manifest of `format_name`: present, valid JSON, a version this lunakit
    reads, every model entry's file present with its checksum, and valid pipeline options.
    `label` names the kind of bundle in messages ("bundle", "ONNX bundle")."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: bundle folder does not exist")
    if not path.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST} in the bundle")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        raise BundleError(f"{path}: not a lunakit {label} manifest")
    if manifest.get("format_version") != format_version:
        raise BundleError(
            f"{path}: {label} format version {manifest.get('format_version')!r} is not "
            f"supported (this lunakit reads {format_version})"
        )
    check_model_entries(bundle, path, manifest, kinds)
    AnalysisOptions.from_dict(manifest.get("options", {}))
    return manifest


def read_manifest(bundle: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a TorchScript or AOTInductor bundle, checked (read_checked_manifest)."""
    manifest = read_checked_manifest(bundle, FORMAT, FORMAT_VERSION, MODEL_KINDS, "bundle")
    if model_format(manifest) not in MODEL_FORMATS:
        raise BundleError(
            f"{Path(bundle) / MANIFEST}: model format {manifest.get('model_format')!r} is not supported "
            f"(this lunakit reads {', '.join(MODEL_FORMATS)})"
        )
    return manifest


def parse_options(pairs: list[str]) -> AnalysisOptions:
    """AnalysisOptions from KEY=VALUE strings (values parsed as JSON, else taken as text)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise BundleError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            values[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            values[key.strip()] = text
    try:
        return AnalysisOptions.from_dict(values)
    except TypeError as exc:
        raise BundleError(f"--option: {exc}") from None
