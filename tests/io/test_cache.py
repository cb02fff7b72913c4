"""The volume cache (lunakit.io.cache): round trip against ct.load, resumable prepcache,
atomic writes, stale entries, damaged entries and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lunakit.cli import main as cli_main
from lunakit.io import cache as cache_mod
from lunakit.io import ct
from lunakit.io.cache import CacheError, StaleEntryError, VolumeCache, prepcache
from lunakit.io.luna import find_scans

OBLIQUE = np.array(
    [
        [np.cos(0.3), -np.sin(0.3), 0.0],
        [np.sin(0.3), np.cos(0.3), 0.0],
        [0.0, 0.0, 1.0],
    ]
)


def write_scan(path: Path, seed: int, shape=(6, 10, 12), direction=np.eye(3)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1024, 3000, size=shape, dtype=np.int16)
    geometry = ct.Geometry(
        origin_xyz=np.array([-100.25, 30.5, -250.0]) + seed,
        spacing_xyz=np.array([0.7, 0.8 + 0.01 * seed, 2.5]),
        direction=direction,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ct.save(hu, geometry, path)
    return hu


@pytest.fixture
def luna_tree(tmp_path) -> Path:
    """A LUNA16-like tree of 3 small .mhd scans in two subsets, one of them oblique."""
    root = tmp_path / "luna"
    write_scan(root / "subset0" / "1.2.840.10.1.mhd", seed=1)
    write_scan(root / "subset0" / "1.2.840.10.2.mhd", seed=2, direction=OBLIQUE)
    write_scan(root / "subset1" / "1.2.840.10.3.mhd", seed=3, shape=(4, 8, 8))
    return root


def dead_pid() -> int:
    """The id of a process that has exited (for a temp file whose writer is gone)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_prepcache_twice_second_run_converts_nothing(luna_tree, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = prepcache(luna_tree, cache_dir, progress=False)
    assert (first.total, first.converted, first.cached_already, first.failed) == (3, 3, 0, ())
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        f"1.2.840.10.{n}.{ext}" for n in (1, 2, 3) for ext in ("npy", "json")
    )

    def no_parse(*args, **kwargs):
        raise AssertionError("a cache hit must not parse the scan")

    monkeypatch.setattr(ct, "load", no_parse)
    second = prepcache(luna_tree, cache_dir, progress=False)
    assert (second.total, second.converted, second.cached_already) == (3, 0, 3)
    assert VolumeCache(cache_dir).get("1.2.840.10.2").hu.shape == (6, 10, 12)


def test_get_equals_ct_load(luna_tree, tmp_path):
    cache_dir = tmp_path / "cache"
    prepcache(luna_tree, cache_dir, progress=False)
    cache = VolumeCache(cache_dir)
    scans = find_scans(luna_tree)
    assert cache.series_uids() == list(scans)
    for uid, path in scans.items():
        assert uid in cache and cache.is_current(uid, path)
        reference = ct.load(path)
        cached = cache.get(uid)
        assert isinstance(cached.hu, np.memmap)
        assert cached.hu.dtype == np.int16 and cached.hu.shape == reference.hu.shape
        np.testing.assert_array_equal(np.asarray(cached.hu), reference.hu)
        assert cached.geometry == reference.geometry  # exact, oblique direction included
        assert cached.series_uid == uid
        assert Path(cached.path) == path.resolve()
        with pytest.raises(ValueError):
            cached.hu[0, 0, 0] = 1  # read-only map
    assert "1.2.840.10.99" not in cache and 42 not in cache and "../x" not in cache
    assert len(cache) == 3 and list(cache) == list(scans)


def test_geometry_record_is_json(luna_tree, tmp_path):
    prepcache(luna_tree, tmp_path / "cache", progress=False)
    record = json.loads((tmp_path / "cache" / "1.2.840.10.2.json").read_text())
    reference = ct.load(luna_tree / "subset0" / "1.2.840.10.2.mhd")
    assert ct.Geometry.from_dict(record["geometry"]) == reference.geometry
    assert record["size_irc"] == [6, 10, 12]
    assert [Path(f["path"]).name for f in record["source"]["files"]] == ["1.2.840.10.2.mhd", "1.2.840.10.2.raw"]


def test_interrupted_npy_write_leaves_no_entry(luna_tree, tmp_path, monkeypatch):
    cache = VolumeCache(tmp_path / "cache")
    scan = ct.load(luna_tree / "subset0" / "1.2.840.10.1.mhd")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.put(scan)
    monkeypatch.undo()
    assert scan.series_uid not in cache
    assert list(cache.cache_dir.iterdir()) == []  # the temp file was removed on the way out
    with pytest.raises(CacheError, match="not cached"):
        cache.get(scan.series_uid)


def test_interrupted_replacement_uncommits_the_old_entry(luna_tree, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    prepcache(luna_tree, cache_dir, progress=False)
    cache = VolumeCache(cache_dir)
    uid = "1.2.840.10.1"
    real_replace = os.replace

    def fail_on_json(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", fail_on_json)
    new = ct.CtScan(hu=np.zeros((6, 10, 12), np.int16), geometry=ct.Geometry.identity(), series_uid=uid, path="")
    with pytest.raises(CacheError, match="No space left on device"):
        cache.put(new)
    monkeypatch.undo()
    # new .npy with no record: not an entry, so nothing mixes the new voxels with the old record
    assert uid not in cache and not cache.is_current(uid)
    assert not list(cache_dir.glob(".*.tmp"))
    stats = prepcache(luna_tree, cache_dir, progress=False)
    assert (stats.converted, stats.cached_already) == (1, 2)
    np.testing.assert_array_equal(cache.get(uid).hu, ct.load(luna_tree / "subset0" / f"{uid}.mhd").hu)


def test_leftover_temp_file_is_ignored_then_cleaned(luna_tree, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    dead = cache_dir / f".1.2.840.10.1.npy.{dead_pid()}.abc123.tmp"
    dead.write_bytes(b"\x93NUMPY half a file")
    live = cache_dir / f".1.2.840.10.2.npy.{os.getpid()}.def456.tmp"  # a writer still running
    live.write_bytes(b"in progress")
    cache = VolumeCache(cache_dir)
    assert cache.series_uids() == [] and "1.2.840.10.1" not in cache
    stats = prepcache(luna_tree, cache_dir, progress=False)
    assert stats.temp_files_removed == 1 and stats.converted == 3
    assert not dead.exists() and live.exists()


def test_stale_entry_is_detected_and_rebuilt(luna_tree, tmp_path):
    cache_dir = tmp_path / "cache"
    prepcache(luna_tree, cache_dir, progress=False)
    cache = VolumeCache(cache_dir)
    uid = "1.2.840.10.3"
    source = luna_tree / "subset1" / f"{uid}.mhd"
    new_hu = write_scan(source, seed=7, shape=(4, 8, 8))  # same size, new voxels
    raw = source.with_suffix(".raw")
    stat = raw.stat()
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # mtime visibly later
    assert uid in cache and not cache.is_current(uid, source) and not cache.is_current(uid)
    with pytest.raises(StaleEntryError, match=f"{uid}.npy: stale cache entry"):
        cache.get(uid)
    stats = prepcache(luna_tree, cache_dir, progress=False)
    assert (stats.converted, stats.cached_already) == (1, 2)
    np.testing.assert_array_equal(cache.get(uid).hu, new_hu)
    assert cache.get(uid).geometry == ct.load(source).geometry


def test_cache_outlives_the_source(luna_tree, tmp_path):
    cache_dir = tmp_path / "cache"
    prepcache(luna_tree, cache_dir, progress=False)
    uid = "1.2.840.10.1"
    expected = ct.load(luna_tree / "subset0" / f"{uid}.mhd").hu
    for path in (luna_tree / "subset0").glob(f"{uid}.*"):
        path.unlink()
    np.testing.assert_array_equal(VolumeCache(cache_dir).get(uid).hu, expected)


def test_load_gets_or_builds(luna_tree, tmp_path, monkeypatch):
    cache = VolumeCache(tmp_path / "cache")
    source = luna_tree / "subset0" / "1.2.840.10.2.mhd"
    first = cache.load(source)
    assert first.series_uid == "1.2.840.10.2" and isinstance(first.hu, np.memmap)
    np.testing.assert_array_equal(first.hu, ct.load(source).hu)
    monkeypatch.setattr(ct, "load", lambda *a, **k: pytest.fail("cache hit re-parsed the scan"))
    assert cache.load(source).geometry == first.geometry
    with pytest.raises(CacheError, match="needs series_uid"):
        cache.load(luna_tree / "subset0")


def test_workers_convert_the_same(luna_tree, tmp_path):
    stats = prepcache(luna_tree, tmp_path / "cache", progress=False, workers=2)
    assert (stats.converted, stats.failed) == (3, ())
    cache = VolumeCache(tmp_path / "cache")
    for uid, path in find_scans(luna_tree).items():
        np.testing.assert_array_equal(cache.get(uid).hu, ct.load(path).hu)


# --------------------------------------------------------------------------- damaged input


def test_damaged_entries(luna_tree, tmp_path):
    cache_dir = tmp_path / "cache"
    prepcache(luna_tree, cache_dir, progress=False)
    cache = VolumeCache(cache_dir)
    npy = cache_dir / "1.2.840.10.1.npy"
    npy.write_bytes(npy.read_bytes()[:200])  # truncated
    with pytest.raises(CacheError, match="1.2.840.10.1.npy: damaged cache entry: file size differs"):
        cache.get("1.2.840.10.1")
    (cache_dir / "1.2.840.10.2.json").write_text("{not json")
    with pytest.raises(CacheError, match="1.2.840.10.2.json: unreadable cache record"):
        cache.get("1.2.840.10.2")
    assert not cache.is_current("1.2.840.10.2")
    meta = cache_dir / "1.2.840.10.3.json"
    record = json.loads(meta.read_text())
    record["size_irc"] = [1, 2, 3]
    meta.write_text(json.dumps(record))
    with pytest.raises(CacheError, match=r"record says int16 \[1, 2, 3\]"):
        cache.get("1.2.840.10.3")
    record["format"] = 99
    meta.write_text(json.dumps(record))
    with pytest.raises(CacheError, match="cache record format 99"):
        cache.get("1.2.840.10.3")
    # prepcache rebuilds every damaged entry
    stats = prepcache(luna_tree, cache_dir, progress=False)
    assert (stats.converted, stats.cached_already) == (3, 0)
    for uid, path in find_scans(luna_tree).items():
        np.testing.assert_array_equal(cache.get(uid).hu, ct.load(path).hu)


def test_bad_puts(tmp_path):
    cache = VolumeCache(tmp_path / "cache")
    geometry = ct.Geometry.identity()
    with pytest.raises(CacheError, match="volume must be int16"):
        cache.put(ct.CtScan(hu=np.zeros((2, 2, 2), np.float32), geometry=geometry, series_uid="1.2", path=""))
    with pytest.raises(CacheError, match="volume must be int16"):
        cache.put(ct.CtScan(hu=np.zeros((2, 2), np.int16), geometry=geometry, series_uid="1.2", path=""))
    for uid in ("../escape", "", ".hidden", "a/b"):
        with pytest.raises(CacheError, match="cannot name a cache file"):
            cache.put(ct.CtScan(hu=np.zeros((2, 2, 2), np.int16), geometry=geometry, series_uid=uid, path=""))
    assert list(cache.cache_dir.iterdir()) == []
    # a scan made in memory (no source file) is cached and counts as current
    cache.put(ct.CtScan(hu=np.ones((2, 3, 4), np.int16), geometry=geometry, series_uid="1.2", path=""))
    assert cache.is_current("1.2") and cache.get("1.2").hu.sum() == 24


def test_cache_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(CacheError, match="not a directory"):
        VolumeCache(tmp_path / "file")
    with pytest.raises(CacheError, match="cache directory not found"):
        VolumeCache(tmp_path / "absent", create=False)


def test_unreadable_scan_is_reported_and_others_converted(luna_tree, tmp_path):
    raw = luna_tree / "subset1" / "1.2.840.10.3.raw"
    raw.write_bytes(raw.read_bytes()[:10])  # truncated data file
    stats = prepcache(luna_tree, tmp_path / "cache", progress=False)
    assert (stats.converted, stats.cached_already) == (2, 0)
    assert [uid for uid, _ in stats.failed] == ["1.2.840.10.3"]
    assert "1.2.840.10.3" in stats.failed[0][1]
    assert VolumeCache(tmp_path / "cache").series_uids() == ["1.2.840.10.1", "1.2.840.10.2"]


# --------------------------------------------------------------------------- CLI


def test_cli_prepcache_summary(luna_tree, tmp_path, capsys):
    args = ["prepcache", "--luna-root", str(luna_tree), "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert cli_main(args) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"prepcache: converted 3, cached already 0 (of 3 scans) in {tmp_path / 'cache'}"
    )
    assert cli_main(args) == 0
    assert "converted 0, cached already 3" in capsys.readouterr().out


def test_cli_missing_luna_root_exits_2(tmp_path, capsys):
    code = cli_main(["prepcache", "--luna-root", str(tmp_path / "nowhere"), "--cache", str(tmp_path / "c")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "not found" in err[0]
    assert not (tmp_path / "c").exists()


def test_cli_bad_scan_exits_2(luna_tree, tmp_path, capsys):
    (luna_tree / "subset0" / "1.2.840.10.1.raw").unlink()
    code = cli_main(["prepcache", "--luna-root", str(luna_tree), "--cache", str(tmp_path / "c"), "--no-progress"])
    assert code == 2
    captured = capsys.readouterr()
    assert "1.2.840.10.1" in captured.err and "failed 1" in captured.out


def test_phantom_dataset(phantom_root, tmp_path):
    """The project's own phantom LUNA16 tree goes through the cache unchanged."""
    stats = prepcache(phantom_root, tmp_path / "cache", progress=False)
    scans = find_scans(phantom_root)
    assert stats.converted == len(scans) == 3
    cache = VolumeCache(tmp_path / "cache")
    for uid, path in scans.items():
        reference = ct.load(path)
        np.testing.assert_array_equal(cache.get(uid).hu, reference.hu)
        assert cache.get(uid).geometry == reference.geometry
