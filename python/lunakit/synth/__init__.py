"""Phantom LUNA16 datasets: chest CT scans with nodules whose truth is known exactly.

`make_dataset(out, n_scans, seed)` writes the LUNA16 layout (subsetN/<uid>.mhd + .raw and the
annotation, malignancy, candidate and excluded-finding tables) that every test, training
run and the demo use instead of the 120 GB challenge data. Same seed, same bytes.
The phantom model is described in docs/phantoms.md.
"""

from __future__ import annotations

from lunakit.synth.dataset import (
    DatasetSummary,
    SynthError,
    make_dataset,
    write_dataset,
)
from lunakit.synth.family import FAMILIES, Family, family_with, get_family
from lunakit.synth.scan import PhantomScan, make_scan, series_uid

__all__ = [
    "FAMILIES",
    "DatasetSummary",
    "Family",
    "family_with",
    "get_family",
    "PhantomScan",
    "SynthError",
    "make_dataset",
    "make_scan",
    "series_uid",
    "write_dataset",
]
