"""A run killed at any point leaves its output folder or file either as it was or complete
(issue #17). Each writer kills itself (SIGKILL) right before its commit step when the tests set
LUNAKIT_TEST_KILL_BEFORE_COMMIT (io/files.py KILL_ENV; C++ write_files_atomically)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from lunakit.io.files import KILL_ENV

from helpers import LUNA_INFER

PUBLISH = """
import sys
from pathlib import Path
from lunakit.io.findings import publish

def build(staging):
    for name in ("a.txt", "b.txt"):
        (staging / name).write_text("new")
    (staging / "sub").mkdir()
    (staging / "sub" / "c.txt").write_text("new")

publish(Path(sys.argv[1]), build)
"""


def run_publish(out: Path, kill: bool) -> int:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill:
        env[KILL_ENV] = "publish"
    return subprocess.run([sys.executable, "-c", PUBLISH, str(out)], env=env, timeout=120).returncode


def contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_killed_publish_leaves_no_folder_or_the_previous_one(tmp_path):
    out = tmp_path / "out"
    assert run_publish(out, kill=True) == -signal.SIGKILL
    assert not out.exists()

    out.mkdir()
    previous = {"a.txt": "old", "b.txt": "old", "mine.txt": "the user's"}
    for name, text in previous.items():
        (out / name).write_text(text)
    assert run_publish(out, kill=True) == -signal.SIGKILL
    assert contents(out) == previous

    left_by_kills = sorted(tmp_path.iterdir())  # the killed runs' staging folders (hidden), and out
    assert run_publish(out, kill=False) == 0
    assert contents(out) == {"a.txt": "new", "b.txt": "new", "mine.txt": "the user's", "sub/c.txt": "new"}
    assert sorted(tmp_path.iterdir()) == left_by_kills  # a finished run leaves no staging folder


def test_a_killed_lunakit_analyze_writes_nothing(bundle, scan_path, tmp_path):
    out = tmp_path / "results"
    args = [str(Path(sys.executable).parent / "lunakit"), "analyze", str(scan_path), "--bundle", str(bundle)]
    killed = subprocess.run([*args, "--out", str(out), "--quiet"], env={**os.environ, KILL_ENV: "publish"}, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()


def test_a_killed_luna_infer_leaves_the_previous_files(bundle, scan_path, tmp_path):
    output, csv = tmp_path / "findings.json", tmp_path / "findings.csv"
    output.write_text('{"previous": true}\n')
    csv.write_text("previous\n")
    args = [str(LUNA_INFER), "analyze", "--bundle", str(bundle), "--input", str(scan_path)]
    args += ["--output", str(output), "--csv", str(csv)]
    killed = subprocess.run(args, env={**os.environ, KILL_ENV: "write_files"}, timeout=600, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads(output.read_text()) == {"previous": True}
    assert csv.read_text() == "previous\n"
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    assert subprocess.run(args, env=env, timeout=600, capture_output=True).returncode == 0
    assert "findings" in json.loads(output.read_text())
