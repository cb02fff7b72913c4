"""Bundle manifests: what every bundle format shares (docs/design.md, "Bundle").

A bundle is a folder with `manifest.json` and one file per model. The manifest carries the format
and its version, the lunakit and torch versions, the pipeline options and each file's sha256;
readers refuse unknown versions, checksum mismatches and files outside the folder. This module
writes manifests for every format and checks them through the C++ reader: TorchScript (lunakit.bundle.torchscript),
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
from lunakit import _core
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


def model_format(manifest: dict[str, Any]) -> str:
    """How the bundle's models are stored: "torchscript" (the default) or "aoti"."""
    return manifest.get("model_format", "torchscript")


def read_checked_manifest(
    bundle: str | os.PathLike,
    format_name: str,
    format_version: int,
    kinds: Iterable[str],
    label: str,
    model_formats: Iterable[str] = (),
) -> dict[str, Any]:
    """A bundle folder's manifest of `format_name`, checked by the C++ runtime's reader
    (lunakit::read_manifest, so both runtimes accept and refuse the same manifests): present,
    valid JSON, a version this lunakit reads, a "model_format" among `model_formats` (if given),
    every model file a plain name inside the folder with its checksum, valid pipeline options.
    `label` names the kind of bundle in messages ("bundle", "ONNX bundle")."""
    try:
        text = _core.read_manifest(str(bundle), format_name, format_version, list(kinds), list(model_formats), label)
    except _core.Error as exc:
        raise BundleError(str(exc)) from None
    return json.loads(text)


def read_manifest(bundle: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a TorchScript or AOTInductor bundle, checked (read_checked_manifest)."""
    return read_checked_manifest(bundle, FORMAT, FORMAT_VERSION, MODEL_KINDS, "bundle", MODEL_FORMATS)


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


def checkpoint_options(pairs: list[str], checkpoints: dict[str, Any], command: str) -> AnalysisOptions:
    """The options for running or exporting checkpoints: the --option KEY=VALUE strings
    (parse_options), with the resample_mm the checkpoints were trained at (their training config):
    models trained on resampled scans must see resampled scans. Refused (`command: ...`) when the
    checkpoints were trained at different spacings, or --option resample_mm names another."""
    import dataclasses

    from lunakit.models.checkpoint import load_checkpoint

    options = parse_options(pairs)
    trained = {}
    for kind, path in checkpoints.items():
        if path is None:
            continue
        config = load_checkpoint(path, kind=kind)[1].get("config") or {}
        spacing = config.get("resample_mm") if isinstance(config, dict) else None
        trained[kind] = None if spacing is None else tuple(float(v) for v in spacing)
    if len(set(trained.values())) > 1:
        said = ", ".join(f"{kind} {spacing}" for kind, spacing in trained.items())
        raise BundleError(f"{command}: the checkpoints were trained at different resample_mm ({said})")
    spacing = next(iter(trained.values()), None)
    if options.resample_mm is None and spacing is not None:
        return dataclasses.replace(options, resample_mm=spacing)
    if spacing is not None and options.resample_mm != spacing:
        raise BundleError(
            f"{command}: --option resample_mm={list(options.resample_mm)}, the checkpoints were trained at {spacing}"
        )
    return options
