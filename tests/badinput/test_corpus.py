"""Issue #17: every case of the generated bad-input corpus (make_corpus.py) through `lunakit` and
`luna_infer`: exit 2, exactly one stderr line, no traceback, nothing written, the message names
the problem, and where both runtimes read the format alike, both print the same message.

The corpus is written once per module and its ~200 commands run a few at a time (process start-up
dominates); each parametrized test then checks one case's recorded results.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from make_corpus import Case, make_corpus
from test_bad_input import listing, refused, run_lunakit

from helpers import REAL_CT, require, run_luna_infer


def real_ct() -> Path | None:
    """The real CT series where LUNAKIT_TEST_DATA is set (then it must exist), else None."""
    root = os.environ.get("LUNAKIT_TEST_DATA")
    return require(Path(root) / REAL_CT) if root else None


with tempfile.TemporaryDirectory() as scratch:  # the case names, for parametrize
    NAMES = [case.name for case in make_corpus(Path(scratch), real_ct())]


@dataclass
class Outcome:
    case: Case
    lunakit: subprocess.CompletedProcess
    luna_infer: subprocess.CompletedProcess
    before: set[Path]
    after: set[Path]


def run_case(case: Case) -> Outcome:
    before = listing(case.folder)
    python = run_lunakit(*case.lunakit)
    cpp = run_luna_infer(*case.luna_infer, timeout=120)
    return Outcome(case, python, cpp, before, listing(case.folder))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    cases = make_corpus(tmp_path_factory.mktemp("corpus"), real_ct())
    with ThreadPoolExecutor(max_workers=4) as pool:
        return {outcome.case.name: outcome for outcome in pool.map(run_case, cases)}


def test_corpus_size() -> None:
    assert len(NAMES) >= 60 if real_ct() else len(NAMES) >= 40, len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_refused_by_both(outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    case = outcome.case
    python = refused(outcome.lunakit, "lunakit")
    cpp = refused(outcome.luna_infer, "luna_infer")
    assert case.expect in python, (case.expect, python)
    assert (case.expect if case.cpp_expect is None else case.cpp_expect) in cpp, (case.cpp_expect, cpp)
    if case.same:
        assert python == cpp
    assert outcome.after == outcome.before
    for path in case.outputs:
        assert not path.exists(), path
