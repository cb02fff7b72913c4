"""lunakit.errors.first_line: one line from any exception, including those with no message."""

from __future__ import annotations

import pytest
import torch

from lunakit.bundle.quantize import QuantizeError, calibration_crops
from lunakit.errors import first_line


@pytest.mark.parametrize(
    "exc, expected",
    [
        (RuntimeError("first\nsecond"), "first"),
        (RuntimeError("\n  \n  third line  \nfourth"), "third line"),
        (RuntimeError(""), "RuntimeError"),
        (ValueError("   "), "ValueError"),
        (KeyError(), "KeyError"),
    ],
)
def test_first_line(exc, expected):
    assert first_line(exc) == expected


def test_an_empty_library_error_still_gives_a_one_line_refusal(tmp_path, monkeypatch):
    """The call sites used str(exc).splitlines()[0], an IndexError on an empty message that hid the error."""
    (tmp_path / "crops.pt").write_bytes(b"PK\x03\x04 not really")

    def fail(*args, **kwargs):
        raise RuntimeError("")

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(QuantizeError, match=r"crops\.pt: not a readable torch file of crops \(RuntimeError\)$"):
        calibration_crops(tmp_path / "crops.pt")
