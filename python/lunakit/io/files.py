"""File helpers every writer shares: atomic replacement of one file or of a folder's content, its
sha256, and the check of an output folder before any work."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary path) in path's folder, then rename it to `path`; no partial file remains."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be written: an existing file, a path
    below a file, or one whose nearest existing folder refuses a probe file (root ignores the
    permission bits, so only trying tells). Raises LunakitError "<option> <path>: <problem>"."""
    from lunakit.errors import LunakitError

    path = Path(path)
    what = f"{option} {path}"
    if path.exists() and not path.is_dir():
        raise LunakitError(f"{what}: exists and is not a folder")
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise LunakitError(f"{what}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lunakit-probe-", dir=existing)
    except OSError as exc:
        raise LunakitError(f"{what}: cannot write in {existing} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


KILL_ENV = "LUNAKIT_TEST_KILL_BEFORE_COMMIT"
"""Read by tests only: set to a commit point's name ("publish" here, "write_files" in C++), the
process kills itself (SIGKILL) right before that commit, to show what an interruption leaves."""


def _killed_here_in_tests(point: str) -> None:
    if os.environ.get(KILL_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def commit_folder(staging: Path, out_dir: Path) -> None:
    """Make the entries of `staging` those of `out_dir` in one step, keeping out_dir's other
    entries. A new out_dir is one rename. An existing one has its other entries hard-linked into
    staging, then the two folders swap in one renameat2(RENAME_EXCHANGE); `staging` then holds
    the previous content, for the caller to remove. Killed at any point, out_dir holds either its
    previous content or the new one. Where the file system cannot swap folders, the entries move
    one by one (each file whole; a kill midway can mix old and new files)."""
    _killed_here_in_tests("publish")
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    for entry in out_dir.iterdir():
        target = staging / entry.name
        if not (target.exists() or target.is_symlink()):
            _link_or_copy(entry, target)
    if _exchange(staging, out_dir):
        return
    for entry in sorted(staging.iterdir()):
        target = out_dir / entry.name
        if target.is_dir() and entry.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` as a hard link of `source` (a folder: its tree, linked file by file), else a copy."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
        return
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sha256_of(path: Path) -> str:
    """The file's sha256 as hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
