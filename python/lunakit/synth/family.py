"""Phantom families: named presets of the generator's parameter ranges (docs/phantoms.md).

A family fixes the *ranges* a scan's parameters are drawn from: scanner (matrix, spacing, slice
thickness, noise, reconstruction blur, padding outside the field of view), anatomy (vessel
density, airway tree, fissures), nodule mix and hard negatives. One seed then gives a varied
set. `classic` is the generator as it was before families existed, draw for draw: the same
seed gives the same bytes, so models/demo-bundle's recipe is unchanged. `a` and `b` are
deliberately different (scanner, spacing, vessel density, nodule mix) for cross-family checks
(scripts/cross_family.sh); `wide` spans all of them and is the recommended training family;
`life` is `wide` on life-size 512 x 512 and 512 x 400 matrices, for validation.

Every range can be overridden (`family_with(family, noise_hu=(10, 40))`, `lunakit synth
--noise 10,40`); `check_family` refuses absurd values with a SynthError.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lunakit.errors import LunakitError

SLICE_SPACINGS_MM = (1.0, 1.25, 1.5, 1.8, 2.0, 2.5)
TEXTURES = ("solid", "ground_glass", "part_solid", "calcified")
LOCATIONS = ("isolated", "juxtapleural", "juxtavascular")
HARD_NEGATIVE_KINDS = ("granuloma", "scar", "end_on_vessel", "vessel_crossing")

Range = tuple[float, float]


class SynthError(LunakitError):
    """Bad arguments for the phantom generator (a family, a range), or an output folder it must not overwrite."""


@dataclass(frozen=True)
class Family:
    """Parameter ranges of one phantom family. A (lo, hi) range is drawn uniformly per scan.

    slices: slice count range; matrices: (rows, columns) choices; pixel_mm: in-plane spacing;
    slice_mm: slice spacing range, used when slice_choices is None (else one of those);
    noise_hu: standard deviation of the (slightly correlated) noise; blur_mm: in-plane Gaussian
    sigma of the reconstruction in mm (None: the classic fixed 0.6 pixel / 0.35 slice);
    pad_prob: share of scans whose corners outside the circular field of view hold a padding
    value, one of pad_hu; vessel_density: factor on the number of vessel trunks per lung;
    airway_prob / fissure_prob: share of scans with a segmental airway tree / fissures;
    nodules: nodules per scan; textures / locations: probabilities in TEXTURES / LOCATIONS
    order; diameter_median_mm, diameter_log_sd: the log-normal nodule size;
    ground_glass_hu: HU range of ground-glass nodules; granulomas, scars, end_on_vessels,
    vessel_crossings: per-scan counts of hard negatives (class-0 candidates, not nodules).
    """

    name: str = "classic"
    slices: tuple[int, int] = (60, 90)
    matrices: tuple[tuple[int, int], ...] = ((128, 128),)
    pixel_mm: Range = (0.6, 0.9)
    slice_mm: Range = (1.0, 2.5)
    slice_choices: tuple[float, ...] | None = SLICE_SPACINGS_MM
    noise_hu: Range = (15.0, 25.0)
    blur_mm: Range | None = None
    pad_prob: float = 0.4
    pad_hu: tuple[float, ...] = (-2048.0,)
    vessel_density: Range = (1.0, 1.0)
    airway_prob: float = 0.0
    fissure_prob: float = 0.0
    nodules: tuple[int, int] = (1, 4)
    textures: tuple[float, ...] = (0.74, 0.1, 0.08, 0.08)
    locations: tuple[float, ...] = (0.5, 0.25, 0.25)
    diameter_median_mm: float = 7.0
    diameter_log_sd: float = 0.5
    ground_glass_hu: Range = (-450.0, -300.0)
    granulomas: tuple[int, int] = (0, 0)
    scars: tuple[int, int] = (0, 0)
    end_on_vessels: tuple[int, int] = (0, 0)
    vessel_crossings: tuple[int, int] = (0, 0)

    @property
    def is_classic(self) -> bool:
        """Whether this is the pre-family generator exactly (no extra draws, classic tables)."""
        return self == CLASSIC

    @property
    def hard_negatives(self) -> bool:
        return any(hi > 0 for _, hi in (self.granulomas, self.scars, self.end_on_vessels, self.vessel_crossings))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


CLASSIC = Family()

FAMILIES: dict[str, Family] = {
    "classic": CLASSIC,
    # a: a quiet, sharp, fine-slice scanner; sparse vessels; mostly solid isolated nodules.
    "a": Family(
        name="a",
        slices=(60, 90),
        matrices=((128, 128),),
        pixel_mm=(0.6, 0.75),
        slice_mm=(1.0, 1.5),
        slice_choices=None,
        noise_hu=(10.0, 20.0),
        blur_mm=(0.25, 0.45),
        pad_prob=0.5,
        pad_hu=(-2048.0,),
        vessel_density=(0.8, 1.1),
        airway_prob=0.0,
        fissure_prob=0.0,
        textures=(0.8, 0.08, 0.06, 0.06),
        locations=(0.6, 0.25, 0.15),
        diameter_median_mm=8.0,
        granulomas=(0, 1),
        scars=(0, 1),
        end_on_vessels=(0, 1),
        vessel_crossings=(0, 1),
    ),
    # b: a noisy, soft, thick-slice scanner with coarse pixels and non-square matrices; dense
    # vessels, airways and fissures; more small vessel-attached and ground-glass nodules.
    "b": Family(
        name="b",
        slices=(48, 72),
        matrices=((128, 128), (128, 100), (112, 128)),
        pixel_mm=(0.8, 1.0),
        slice_mm=(2.0, 3.0),
        slice_choices=None,
        noise_hu=(25.0, 40.0),
        blur_mm=(0.5, 0.9),
        pad_prob=0.6,
        pad_hu=(-3024.0, -2048.0),
        vessel_density=(1.4, 1.8),
        airway_prob=0.8,
        fissure_prob=0.8,
        textures=(0.6, 0.18, 0.12, 0.1),
        locations=(0.3, 0.3, 0.4),
        diameter_median_mm=5.5,
        ground_glass_hu=(-620.0, -350.0),
        granulomas=(1, 2),
        scars=(1, 2),
        end_on_vessels=(1, 3),
        vessel_crossings=(1, 2),
    ),
    # wide: the union of the scanners and anatomies above and more; the training family.
    "wide": Family(
        name="wide",
        slices=(48, 96),
        matrices=((128, 128), (128, 100), (112, 128), (128, 112)),
        pixel_mm=(0.5, 1.0),
        slice_mm=(0.6, 3.0),
        slice_choices=None,
        noise_hu=(10.0, 40.0),
        blur_mm=(0.2, 0.9),
        pad_prob=0.6,
        pad_hu=(-3024.0, -2048.0),
        vessel_density=(0.8, 1.8),
        airway_prob=0.6,
        fissure_prob=0.6,
        textures=(0.62, 0.14, 0.12, 0.12),
        locations=(0.4, 0.25, 0.35),
        diameter_median_mm=6.0,
        diameter_log_sd=0.55,
        ground_glass_hu=(-620.0, -300.0),
        granulomas=(0, 2),
        scars=(0, 2),
        end_on_vessels=(1, 3),
        vessel_crossings=(0, 2),
    ),
}
# life: wide's ranges on life-size matrices (a 512-pixel chest at 0.5-1.0 mm is 26-51 cm wide),
# for validation: about 16 s and 1.8 GB a scan to generate, too slow to train on a CPU.
FAMILIES["life"] = dataclasses.replace(
    FAMILIES["wide"], name="life", matrices=((512, 512), (512, 400)), slices=(80, 120)
)

# Limits of what the generator can honor (check_family).
_LIMITS: dict[str, Range] = {
    "pixel_mm": (0.2, 5.0),
    "slice_mm": (0.3, 10.0),
    "noise_hu": (0.0, 300.0),
    "blur_mm": (0.0, 5.0),
    "vessel_density": (0.0, 4.0),
    "ground_glass_hu": (-900.0, -100.0),
}
MIN_DIM = 16
MAX_COUNT = 20


def get_family(name: str | Family | None) -> Family:
    """A family by name (None: classic); a Family is checked and returned."""
    if name is None:
        return CLASSIC
    if isinstance(name, Family):
        return check_family(name)
    key = str(name).strip().lower()
    if key not in FAMILIES:
        raise SynthError(f"synth: unknown family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[key]


def family_with(family: Family, **overrides: Any) -> Family:
    """The family with some ranges replaced (name gets a '+' to show it was changed); checked."""
    if not overrides:
        return family
    known = {f.name for f in dataclasses.fields(Family)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SynthError(f"synth: unknown family parameter {unknown[0]!r}")
    fixed = dict(overrides)
    if "slice_mm" in fixed and "slice_choices" not in fixed:
        fixed["slice_choices"] = None  # an explicit range replaces the classic list of spacings
    name = fixed.pop("name", family.name if family.name.endswith("+") else family.name + "+")
    return check_family(dataclasses.replace(family, name=name, **fixed))


def _range(name: str, value: Any, lo: float, hi: float) -> None:
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )
    if not ok:
        raise SynthError(f"synth: {name} must be two finite numbers LO,HI, got {value!r}")
    if not lo <= value[0] <= value[1] <= hi:
        raise SynthError(f"synth: {name} must satisfy {lo:g} <= LO <= HI <= {hi:g}, got {value[0]:g},{value[1]:g}")


def _count_range(name: str, value: Any, lo: int, hi: int) -> None:
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise SynthError(f"synth: {name} must be two integers LO,HI, got {value!r}")
    if not lo <= value[0] <= value[1] <= hi:
        raise SynthError(f"synth: {name} must satisfy {lo} <= LO <= HI <= {hi}, got {value[0]},{value[1]}")


def _probabilities(name: str, value: Any, n: int) -> None:
    if not (isinstance(value, tuple) and len(value) == n and all(isinstance(v, (int, float)) for v in value)):
        raise SynthError(f"synth: {name} must be {n} probabilities, got {value!r}")
    if any(not math.isfinite(v) or v < 0 for v in value) or abs(sum(value) - 1.0) > 1e-6:
        raise SynthError(f"synth: {name} must be {n} probabilities >= 0 that sum to 1, got {value!r}")


def check_family(family: Family) -> Family:
    """The family if the generator can honor every range; else SynthError naming the first problem."""
    for name, (lo, hi) in _LIMITS.items():
        value = getattr(family, name)
        if name == "blur_mm" and value is None:
            continue
        _range(name, value, lo, hi)
    _count_range("slices", family.slices, MIN_DIM, 2048)
    _count_range("nodules", family.nodules, 0, MAX_COUNT)
    for name in ("granulomas", "scars", "end_on_vessels", "vessel_crossings"):
        _count_range(name, getattr(family, name), 0, MAX_COUNT)
    if not family.matrices or not isinstance(family.matrices, tuple):
        raise SynthError(f"synth: matrices must list at least one ROWSxCOLUMNS, got {family.matrices!r}")
    for m in family.matrices:
        if not (
            isinstance(m, tuple) and len(m) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in m)
        ):
            raise SynthError(f"synth: a matrix must be two integers ROWSxCOLUMNS, got {m!r}")
        if not (MIN_DIM <= min(m) and max(m) <= 2048):
            raise SynthError(f"synth: matrix {m[0]}x{m[1]} must have {MIN_DIM}..2048 rows and columns")
    if family.slice_choices is not None and (
        not family.slice_choices
        or any(not _LIMITS["slice_mm"][0] <= s <= _LIMITS["slice_mm"][1] for s in family.slice_choices)
    ):
        raise SynthError(f"synth: slice spacings must lie in 0.3..10 mm, got {family.slice_choices!r}")
    for name in ("pad_prob", "airway_prob", "fissure_prob"):
        p = getattr(family, name)
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise SynthError(f"synth: {name} must be a probability in 0..1, got {p!r}")
    if not family.pad_hu or any(not -4096 <= v <= -1001 for v in family.pad_hu):
        raise SynthError(f"synth: padding values must lie in -4096..-1001 HU (below air), got {family.pad_hu!r}")
    _probabilities("textures", family.textures, len(TEXTURES))
    _probabilities("locations", family.locations, len(LOCATIONS))
    if not (math.isfinite(family.diameter_median_mm) and 3.5 <= family.diameter_median_mm <= 30.0):
        raise SynthError(f"synth: the median nodule diameter must lie in 3.5..30 mm, got {family.diameter_median_mm!r}")
    if not (math.isfinite(family.diameter_log_sd) and 0.0 <= family.diameter_log_sd <= 2.0):
        raise SynthError(f"synth: diameter_log_sd must lie in 0..2, got {family.diameter_log_sd!r}")
    return family


def parse_range(text: str, option: str, integer: bool = False) -> tuple:
    """'10,40' -> (10.0, 40.0) (a single value 'V' -> (V, V)); SynthError names the option."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(parts):
        raise SynthError(f"synth: {option} takes LO,HI, got {text!r}")
    try:
        values = tuple(int(p) for p in parts) if integer else tuple(float(p) for p in parts)
    except ValueError:
        raise SynthError(f"synth: {option} takes {'integers' if integer else 'numbers'} LO,HI, got {text!r}") from None
    return values


def parse_matrices(text: str) -> tuple[tuple[int, int], ...]:
    """'512x512,512x400' -> ((512, 512), (512, 400))."""
    out = []
    for item in str(text).split(","):
        rows, sep, cols = item.strip().lower().partition("x")
        try:
            out.append((int(rows), int(cols)))
        except ValueError:
            raise SynthError(f"synth: --matrix takes ROWSxCOLUMNS[,...], got {text!r}") from None
        if not sep:
            raise SynthError(f"synth: --matrix takes ROWSxCOLUMNS[,...], got {text!r}")
    return tuple(out)


def parse_values(text: str, option: str) -> tuple[float, ...]:
    """'-2048,-3024' -> (-2048.0, -3024.0)."""
    try:
        values = tuple(float(p) for p in str(text).split(","))
    except ValueError:
        raise SynthError(f"synth: {option} takes numbers V[,V...], got {text!r}") from None
    return values


def parse_mix(text: str, names: tuple[str, ...], option: str) -> tuple[float, ...]:
    """'solid=0.5,ground_glass=0.5' -> probabilities in `names` order (unnamed ones 0), normalized."""
    weights: dict[str, float] = dict.fromkeys(names, 0.0)
    for item in str(text).split(","):
        key, sep, raw = item.strip().partition("=")
        if key not in names or not sep:
            raise SynthError(f"synth: {option} takes NAME=WEIGHT[,...] with NAME in {', '.join(names)}, got {item!r}")
        try:
            weights[key] = float(raw)
        except ValueError:
            raise SynthError(f"synth: {option}: {raw!r} is not a number") from None
    total = sum(weights.values())
    if not math.isfinite(total) or total <= 0 or any(w < 0 for w in weights.values()):
        raise SynthError(f"synth: {option} weights must be >= 0 with a positive sum, got {text!r}")
    return tuple(weights[n] / total for n in names)
