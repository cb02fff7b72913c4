"""The model bundle: what a deployment (Python or C++) needs to analyze a scan.

A directory with `manifest.json` and one TorchScript file per model (DESIGN.md, "Model bundle").
The manifest carries the format version, the lunakit and torch versions, the pipeline options
and each file's sha256; readers refuse unknown versions and checksum mismatches.

The models may instead be AOTInductor packages (`lunakit export --format aoti`, lunakit.aoti_export):
the manifest is the same plus `"model_format": "aoti"` (absent means TorchScript), and each file
is a `<kind>.pt2`. The helpers below (export checks, staged writing, model entry checks) are
shared with the ONNX bundle (lunakit.onnx_export).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

import lunakit
from lunakit.analysis import AnalysisOptions, Models
from lunakit.errors import LunakitError

FORMAT = "lunakit-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_KINDS = ("seg", "cls", "mal")
MODEL_FORMATS = ("torchscript", "aoti")  # manifest "model_format"; absent = "torchscript"


class BundleError(LunakitError):
    """A bundle that is missing, incomplete, tampered with or of an unknown version."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_export_request(out: str | os.PathLike, checkpoints: dict[str, Any],
                         kinds: Iterable[str] = MODEL_KINDS) -> Path:
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
    return {"format": format_name, "format_version": format_version, **extra,
            "lunakit_version": lunakit.__version__,
            "torch_version": str(torch.__version__).split("+")[0]}


def write_bundle(out: Path, header: dict[str, Any], options: AnalysisOptions,
                 write_models: Callable[[Path], dict[str, dict[str, Any]]], **trailer: Any) -> Path:
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
    return {"file": file_name, "sha256": sha256_of(staging / file_name),
            "source": os.path.basename(str(source)), **extra}


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


def export_bundle(out: str | os.PathLike, checkpoints: dict[str, str | os.PathLike],
                  options: AnalysisOptions = AnalysisOptions()) -> Path:
    """Script each checkpoint's model with torch.jit.script and write the bundle to `out`.

    `checkpoints` maps kind ("seg", "cls", optional "mal") to a lunakit checkpoint. The bundle is
    assembled in a temporary folder beside `out` and renamed into place: never half written.
    """
    from lunakit.models.checkpoint import load_checkpoint

    out = check_export_request(out, checkpoints)
    scripted = {}
    for kind, path in checkpoints.items():
        model, _ = load_checkpoint(path, kind=kind)
        scripted[kind] = torch.jit.script(model.eval())

    def write_models(staging: Path) -> dict[str, dict[str, Any]]:
        models = {}
        for kind, module in scripted.items():
            module.save(str(staging / f"{kind}.pt"))
            models[kind] = model_entry(staging, f"{kind}.pt", checkpoints[kind])
        return models

    return write_bundle(out, manifest_header(FORMAT, FORMAT_VERSION), options, write_models)


def model_format(manifest: dict[str, Any]) -> str:
    """How the bundle's models are stored: "torchscript" (the default) or "aoti"."""
    return manifest.get("model_format", "torchscript")


def read_manifest(bundle: str | os.PathLike) -> dict[str, Any]:
    """The bundle's manifest, after checking its format, version and every file's checksum."""
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
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a lunakit bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {manifest.get('format_version')!r} is not "
                          f"supported (this lunakit reads {FORMAT_VERSION})")
    if model_format(manifest) not in MODEL_FORMATS:
        raise BundleError(f"{path}: model format {manifest.get('model_format')!r} is not supported "
                          f"(this lunakit reads {', '.join(MODEL_FORMATS)})")
    check_model_entries(bundle, path, manifest, MODEL_KINDS)
    AnalysisOptions.from_dict(manifest.get("options", {}))
    return manifest


def load_bundle(bundle: str | os.PathLike, device: str | torch.device = "cpu"
                ) -> tuple[Models, AnalysisOptions, dict[str, Any]]:
    """Load a checked bundle -> (models on `device`, pipeline options, manifest)."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    loaded: dict[str, Optional[torch.nn.Module]] = {}
    if model_format(manifest) == "aoti":
        from lunakit.aoti_export import load_aoti_models

        loaded.update(load_aoti_models(bundle, manifest, device))
    for kind, entry in manifest["models"].items():
        if kind in loaded:
            continue
        try:
            loaded[kind] = torch.jit.load(str(bundle / entry["file"]), map_location=device).eval()
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"{bundle / entry['file']}: not a loadable TorchScript model ({first})") from None
    options = AnalysisOptions.from_dict(manifest["options"])
    _probe(bundle, manifest, loaded, options, device)
    models = Models(seg=loaded["seg"], cls=loaded["cls"], mal=loaded.get("mal"),
                    checksums={k: e["sha256"] for k, e in manifest["models"].items()})
    return models, options, manifest


@torch.no_grad()
def _probe(bundle: Path, manifest: dict[str, Any], loaded: dict[str, Any], options: AnalysisOptions,
           device: str | torch.device) -> None:
    """Run each model once on zeros of the pipeline's input shape, so that a model that does not
    fit the pipeline is refused at load (as the C++ Bundle::load does), not halfway through a scan."""
    channels = 2 * options.context_slices + 1
    for kind, model in loaded.items():
        shape = (1, channels, 64, 64) if kind == "seg" else (1, 1, *options.crop_size)
        try:
            output = model(torch.zeros(shape, device=device))
            ok = (output.dim() == 4 and tuple(output.shape[-2:]) == (64, 64)) if kind == "seg" else (
                isinstance(output, tuple) and len(output) == 2 and output[1].shape[-1] >= 2)
        except Exception as exc:  # a TorchScript model raises RuntimeError subclasses
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"{bundle / manifest['models'][kind]['file']}: does not take input "
                              f"{list(shape)} ({first})") from None
        if not ok:
            raise BundleError(f"{bundle / manifest['models'][kind]['file']}: gives an unexpected output "
                              f"for input {list(shape)}")


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


def _cmd_export(args: argparse.Namespace) -> int:
    if args.quantize:
        from lunakit.quantize import export_from_cli as export_quantized

        return export_quantized(args)
    if args.format not in ("torchscript", "aoti", "onnx"):
        raise BundleError(f"export: format {args.format!r} is not available yet")
    checkpoints = {"seg": args.seg, "cls": args.cls}
    if args.mal:
        checkpoints["mal"] = args.mal
    options = parse_options(args.option)
    if args.format == "onnx":
        from lunakit.onnx_export import OPSET, export_onnx_bundle

        out, what = export_onnx_bundle(args.out, checkpoints, options), f"ONNX bundle (opset {OPSET})"
    elif args.format == "aoti":
        from lunakit.aoti_export import export_aoti_bundle

        out, what = export_aoti_bundle(args.out, checkpoints, options), "AOTInductor bundle"
    else:
        out, what = export_bundle(args.out, checkpoints, options), "bundle"
    print(f"{what} written to {out} ({', '.join(sorted(checkpoints))})")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("export", help="export the models into a bundle (TorchScript, AOTInductor or ONNX)")
    p.add_argument("--seg", required=True, help="segmentation checkpoint (lunakit format)")
    p.add_argument("--cls", required=True, help="nodule classifier checkpoint")
    p.add_argument("--mal", default=None, help="malignancy classifier checkpoint (optional)")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--format", default="torchscript", choices=["torchscript", "aoti", "onnx"])
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline option stored in the manifest, e.g. seg_threshold=0.5 (repeatable)")
    p.add_argument("--quantize", default=None, choices=["int8"],
                   help="int8 static post-training quantization of the classifiers (torchscript format, CPU)")
    p.add_argument("--calibration", default=None,
                   help="with --quantize: a LUNA16-layout folder (tables + subset*/ scans) or a .pt tensor of crops")
    p.add_argument("--calibration-crops", type=int, default=256,
                   help="with --quantize: how many crops calibrate the activation ranges (default 256)")
    p.set_defaults(func=_cmd_export)
