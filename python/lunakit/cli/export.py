"""`lunakit export --seg M --cls M [--mal M] --out B`: a bundle (TorchScript, AOTInductor, ONNX, int8)."""

from __future__ import annotations

import argparse

from lunakit.bundle import BundleError, checkpoint_options, export_bundle
from lunakit.pipeline.options import AnalysisOptions


def _run(args: argparse.Namespace) -> int:
    if args.quantize:
        return _export_quantized(args)
    if args.format not in ("torchscript", "aoti", "onnx"):
        raise BundleError(f"export: format {args.format!r} is not available yet")
    checkpoints, options = _checkpoints_and_options(args)
    if args.format == "onnx":
        from lunakit.bundle.onnx import OPSET, export_onnx_bundle

        out, what = export_onnx_bundle(args.out, checkpoints, options), f"ONNX bundle (opset {OPSET})"
    elif args.format == "aoti":
        from lunakit.bundle.aoti import export_aoti_bundle

        out, what = export_aoti_bundle(args.out, checkpoints, options), "AOTInductor bundle"
    else:
        out, what = export_bundle(args.out, checkpoints, options), "bundle"
    print(f"{what} written to {out} ({', '.join(sorted(checkpoints))})")
    return 0


def _checkpoints_and_options(args: argparse.Namespace) -> tuple[dict[str, str], AnalysisOptions]:
    """The checkpoints by kind (mal where given) and the options to export them with."""
    checkpoints = {"seg": args.seg, "cls": args.cls}
    if args.mal:
        checkpoints["mal"] = args.mal
    return checkpoints, checkpoint_options(args.option, checkpoints, "export")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export the models into a bundle (TorchScript, AOTInductor or ONNX)")
    p.add_argument("--seg", required=True, help="segmentation checkpoint (lunakit format)")
    p.add_argument("--cls", required=True, help="nodule classifier checkpoint")
    p.add_argument("--mal", default=None, help="malignancy classifier checkpoint (optional)")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--format", default="torchscript", choices=["torchscript", "aoti", "onnx"])
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline option stored in the manifest, e.g. seg_threshold=0.5 (repeatable)",
    )
    p.add_argument(
        "--quantize",
        default=None,
        choices=["int8"],
        help="int8 static post-training quantization of the classifiers (torchscript format, CPU)",
    )
    p.add_argument(
        "--calibration",
        default=None,
        help="with --quantize: a LUNA16-layout folder (tables + subset*/ scans) or a .pt tensor of crops",
    )
    p.add_argument(
        "--calibration-crops",
        type=int,
        default=256,
        help="with --quantize: how many crops calibrate the activation ranges (default 256)",
    )
    p.set_defaults(func=_run)


def _export_quantized(args: argparse.Namespace) -> int:
    """`lunakit export --quantize int8 --calibration DATA`."""
    from lunakit.bundle.quantize import calibration_crops, export_quantized_bundle

    if args.format != "torchscript":
        raise BundleError(f"export: --quantize int8 is available with --format torchscript only, not {args.format}")
    if not args.calibration:
        raise BundleError("export: --quantize int8 needs --calibration (a LUNA16 folder or a .pt file of crops)")
    if args.calibration_crops < 1:
        raise BundleError(f"export: --calibration-crops must be >= 1, got {args.calibration_crops}")
    checkpoints, options = _checkpoints_and_options(args)
    crops = calibration_crops(args.calibration, count=args.calibration_crops)
    crops = crops.clamp(options.hu_min, options.hu_max)
    out = export_quantized_bundle(args.out, checkpoints, options, crops, calibration_source=args.calibration)
    print(f"int8 bundle written to {out} (classifiers quantized on {crops.shape[0]} calibration crops)")
    return 0
