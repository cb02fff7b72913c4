"""`lunakit export --seg M --cls M [--mal M] --out B`: a bundle (TorchScript, AOTInductor, ONNX, int8)."""

from __future__ import annotations

import argparse

from lunakit.bundle import BundleError, export_bundle, parse_options


def _run(args: argparse.Namespace) -> int:
    if args.quantize:
        return _export_quantized(args)
    if args.format not in ("torchscript", "aoti", "onnx"):
        raise BundleError(f"export: format {args.format!r} is not available yet")
    checkpoints = {"seg": args.seg, "cls": args.cls}
    if args.mal:
        checkpoints["mal"] = args.mal
    options = _with_training_spacing(parse_options(args.option), checkpoints)
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


def _with_training_spacing(options, checkpoints: dict[str, str]):
    """The options with the resample_mm the checkpoints were trained at (their training config):
    models trained on resampled scans must see resampled scans. Refused when they differ, or when
    --option resample_mm names another spacing than theirs."""
    import dataclasses

    from lunakit.models.checkpoint import load_checkpoint

    trained = {}
    for kind, path in checkpoints.items():
        config = load_checkpoint(path, kind=kind)[1].get("config") or {}
        spacing = config.get("resample_mm") if isinstance(config, dict) else None
        trained[kind] = None if spacing is None else tuple(float(v) for v in spacing)
    if len(set(trained.values())) > 1:
        said = ", ".join(f"{kind} {spacing}" for kind, spacing in trained.items())
        raise BundleError(f"export: the checkpoints were trained at different resample_mm ({said})")
    spacing = next(iter(trained.values()))
    if options.resample_mm is None and spacing is not None:
        return dataclasses.replace(options, resample_mm=spacing)
    if spacing is not None and options.resample_mm != spacing:
        raise BundleError(
            f"export: --option resample_mm={list(options.resample_mm)}, the checkpoints were trained at {spacing}"
        )
    return options


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
    checkpoints = {"seg": args.seg, "cls": args.cls}
    if args.mal:
        checkpoints["mal"] = args.mal
    options = parse_options(args.option)
    crops = calibration_crops(args.calibration, count=args.calibration_crops)
    crops = crops.clamp(options.hu_min, options.hu_max)
    out = export_quantized_bundle(args.out, checkpoints, options, crops, calibration_source=args.calibration)
    print(f"int8 bundle written to {out} (classifiers quantized on {crops.shape[0]} calibration crops)")
    return 0
