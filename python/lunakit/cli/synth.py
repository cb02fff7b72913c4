"""`lunakit synth OUT --scans N --seed S [--shape I R C] [--family F] [ranges]`: a phantom LUNA16 dataset."""

from __future__ import annotations

import argparse

# option -> (Family field, parser kind)
_RANGE_OPTIONS = {
    "noise": ("noise_hu", "range"),
    "blur": ("blur_mm", "range"),
    "pixel": ("pixel_mm", "range"),
    "slice": ("slice_mm", "range"),
    "slices": ("slices", "int_range"),
    "matrix": ("matrices", "matrices"),
    "pad": ("pad_hu", "values"),
    "vessels": ("vessel_density", "range"),
    "nodules": ("nodules", "int_range"),
    "textures": ("textures", "textures"),
    "locations": ("locations", "locations"),
}


def family_from_args(args: argparse.Namespace):
    """The --family preset with the range options given on the command line applied."""
    from lunakit.synth.family import (
        LOCATIONS,
        TEXTURES,
        family_with,
        get_family,
        parse_matrices,
        parse_mix,
        parse_range,
        parse_values,
    )

    fam = get_family(args.family)
    overrides = {}
    for option, (field_name, kind) in _RANGE_OPTIONS.items():
        text = getattr(args, option, None)
        if text is None:
            continue
        flag = "--" + option
        if kind == "range":
            overrides[field_name] = parse_range(text, flag)
        elif kind == "int_range":
            overrides[field_name] = parse_range(text, flag, integer=True)
        elif kind == "matrices":
            overrides[field_name] = parse_matrices(text)
        elif kind == "values":
            overrides[field_name] = parse_values(text, flag)
        else:
            names = TEXTURES if kind == "textures" else LOCATIONS
            overrides[field_name] = parse_mix(text, names, flag)
    return family_with(fam, **overrides)


_HOST_SETS = ("shape", "noise", "blur", "pixel", "slice", "slices", "matrix", "pad", "vessels")


def _run(args: argparse.Namespace) -> int:
    from lunakit.synth import write_dataset
    from lunakit.synth.family import SynthError

    family = family_from_args(args)
    if args.into is None:
        if args.known is not None:
            raise SynthError("synth: --known lists the lesions of an --into host scan; give --into")
        summary = write_dataset(args.out, args.scans, args.seed, args.shape, progress=args.progress, family=family)
    else:
        from lunakit.synth.insert import write_inserted_dataset

        taken = [name for name in _HOST_SETS if getattr(args, name) is not None]
        if taken:
            raise SynthError(f"synth: --into: the host scan sets what --{taken[0]} would; leave it out")
        summary = write_inserted_dataset(
            args.out, args.into, args.scans, args.seed, family, args.known, progress=args.progress
        )
    print(
        f"synth: {summary.scans} scans, {summary.nodules} nodules ({summary.malignant} malignant), "
        f"{summary.candidates} candidates ({summary.positive_candidates} class 1), "
        f"{summary.excluded} excluded findings, family {family.name} -> {summary.root}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from lunakit.synth.family import FAMILIES

    p = subparsers.add_parser(
        "synth",
        help="write a phantom LUNA16 dataset (scans with known nodules)",
        description="Write phantom chest CT scans with known nodules in the LUNA16 "
        "layout (subsetN/*.mhd and the annotation/candidate tables). A family is a named "
        "set of parameter ranges (docs/phantoms.md); the range options override its ranges.",
    )
    p.add_argument("out", help="output folder (created if missing)")
    p.add_argument("--scans", type=int, default=3, help="number of scans (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("I", "R", "C"),
        default=None,
        help="size of every scan; default varies per scan (classic: I 60..90, R = C = 128)",
    )
    p.add_argument(
        "--family",
        default="classic",
        metavar="{" + ",".join(FAMILIES) + "}",
        help="preset of parameter ranges (default classic, the original generator; wide spans all)",
    )
    p.add_argument("--noise", metavar="LO,HI", help="noise standard deviation range, HU")
    p.add_argument("--blur", metavar="LO,HI", help="in-plane reconstruction blur (Gaussian sigma) range, mm")
    p.add_argument("--pixel", metavar="LO,HI", help="in-plane pixel spacing range, mm")
    p.add_argument("--slice", metavar="LO,HI", help="slice spacing range, mm")
    p.add_argument("--slices", metavar="LO,HI", help="slice count range")
    p.add_argument("--matrix", metavar="RxC[,RxC]", help="matrix sizes (rows x columns) to choose from")
    p.add_argument(
        "--pad",
        metavar="V[,V]",
        help="padding values outside the circular field of view, HU; write --pad=-3024,-2048 "
        "(with '=': the list starts with '-')",
    )
    p.add_argument("--vessels", metavar="LO,HI", help="vessel density factor range (1 = classic)")
    p.add_argument("--nodules", metavar="LO,HI", help="nodules per scan")
    p.add_argument(
        "--textures", metavar="NAME=W,...", help="nodule texture mix: solid, ground_glass, part_solid, calcified"
    )
    p.add_argument(
        "--locations", metavar="NAME=W,...", help="nodule location mix: isolated, juxtapleural, juxtavascular"
    )
    p.add_argument(
        "--into",
        metavar="SCAN",
        help="insert the family's nodules into copies of this real scan (file or DICOM folder) "
        "instead of drawing phantoms; the scanner and anatomy options then do not apply",
    )
    p.add_argument(
        "--known",
        metavar="CSV",
        help="with --into: lesions the host already holds (seriesuid,coordX,coordY,coordZ,diameter_mm), "
        "kept free and listed as irrelevant findings",
    )
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=_run)
