"""The one output policy of every command that writes (no Qt, no torch, no zarr).

- :func:`expand`: ``~`` expanded in a path argument (every command's, see :func:`napari_dfa.cli.main`).
- :func:`check_output`: before any expensive work, an output that is one of the command's own
  inputs (same resolved path, or the same file under another name) is refused; an existing
  output needs ``--overwrite``; a file's folder must exist (an output *folder* is created with
  its parents); a folder in place of a file (or the reverse), an unwritable folder, or a name too
  long for its hidden temporary twin is one message naming the path.
- :class:`OutputLock` / :func:`claim`: one writer per output across processes (an ``flock`` on
  ``<output>.lock``, released by the OS when the holder dies); while holding it, the leftovers of an
  earlier interrupted write (hidden ``.<name>.*.tmp*`` / ``.old`` / ``.partial`` siblings) are
  cleared, and an old output moved aside by a killed swap is put back.
- :func:`atomic_output`: the writer writes a hidden temporary twin that becomes the output only
  when complete; without ``overwrite`` the last step refuses to replace an output that appeared
  meanwhile (a link, not a rename), so two writers can never both say "wrote".
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from ..errors import DataError

logger = logging.getLogger(__name__)

NAME_MAX = 255  # bytes of one file name on the common file systems (ext4, xfs, APFS, NTFS)
_TMP_EXTRA = len(".") + 8 + len(".tmp") + len(".")  # what a hidden twin adds to a name (plus suffix)


class OutputError(DataError):
    """An output that must not or cannot be written."""


class OutputBusy(OutputError):
    """Another process is writing the same output."""


def expand(path) -> Path | None:
    """``path`` as a Path with ``~`` expanded (None stays None)."""
    return None if path is None else Path(os.path.expanduser(str(path)))


def same_file(a, b) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder: the same resolved path (links
    followed), or, both existing, the same inode (a hard link under another name)."""
    a, b = expand(a), expand(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _within(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def check_output(dst, *, inputs=(), overwrite: bool = False, flag: str = "--overwrite", what: str = "",
                 folder: bool = False, foreign=None) -> Path:
    """Refuse an output path that must not or cannot be written; returns it (``~`` expanded).

    ``inputs``: ``(name, path)`` pairs (path may be None) the same command reads; the output is
    never one of them, and a file output never lies inside a folder input (a store, an OME-Zarr). ``folder``: the output is a folder (created later with its parents); else a
    file or a store folder. ``foreign(path) -> str | None``: for outputs that exist, a reason why
    napari-dfa never replaces it, whatever the flags (e.g. a folder that is not our store)."""
    dst = expand(dst)
    label = f"{what} {dst}".strip()
    check_not_input(dst, inputs, label=label, folder=folder)
    if folder:
        if dst.exists() and not dst.is_dir():
            raise OutputError(f"{label}: a file, not a folder; choose a folder for the outputs")
        _check_creatable(dst, label)
        return dst
    parent = dst.parent
    recover(dst)  # an interrupted write's old output is back before it is judged
    if not parent.is_dir():
        what_is = "is a file, not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"{label}: the folder {parent} {what_is}; create it first or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{label}: the folder {parent} is not writable (read-only, or not yours)")
    check_name_length(dst, label)
    if dst.is_symlink() or dst.exists():
        reason = foreign(dst) if foreign is not None else None
        if reason:
            raise OutputError(f"{label}: exists and is {reason}; napari-dfa never replaces it. "
                              "Choose another name, or move it away yourself")
        if dst.is_dir() and foreign is None:
            raise OutputError(f"{label}: a folder is in the way of this file; choose another name")
        if not overwrite:
            raise OutputError(f"{label}: exists; pass {flag} to replace it")
    return dst


def check_not_input(dst, inputs, *, label: str = "", folder: bool = False) -> None:
    """OutputError when ``dst`` is one of ``inputs`` (``(name, path)`` pairs, None skipped), or a
    file output lies inside a folder input (see :func:`check_output`)."""
    dst = expand(dst)
    label = label or str(dst)
    for name, src in inputs:
        if src is None or str(src) == "demo":
            continue
        src = expand(src)
        if same_file(dst, src):
            raise OutputError(f"{label}: this is {name} ({src}) that this command reads; write to another path")
        if not folder and src.is_dir() and _within(dst, src):
            raise OutputError(f"{label}: inside {name} ({src}) that this command reads; write elsewhere")


def check_distinct(outputs) -> None:
    """``outputs``: ``(name, path)`` pairs one command writes; two of them never the same path."""
    seen: dict[str, str] = {}
    for name, path in outputs:
        if path is None:
            continue
        key = os.path.realpath(expand(path))
        if key in seen:
            raise OutputError(f"{path}: written twice by this command ({seen[key]} and {name}); give each its own path")
        seen[key] = name


def check_name_length(dst, label: str = "") -> None:
    """Refuse a name whose hidden temporary twin (:func:`temp_twin`) would pass the file system's
    limit: found before the work, not when the result is renamed into place."""
    dst = Path(dst)
    size = len(os.fsencode(dst.name))
    longest = size + _TMP_EXTRA + len(os.fsencode("".join(dst.suffixes[-1:])))
    if longest > NAME_MAX:
        raise OutputError(f"{label or dst}: the name is too long ({size} bytes; its hidden temporary twin needs "
                          f"{longest}, the file system allows {NAME_MAX}); choose a shorter name")


def _check_creatable(folder: Path, label: str) -> None:
    """The nearest existing ancestor of ``folder`` is a writable folder (so it can be created)."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{label}: {probe} is a file, so the folder cannot be created there")
    target = folder if folder.exists() else probe
    if target.exists() and not os.access(target, os.W_OK | os.X_OK):
        raise OutputError(f"{label}: {target} is not writable (read-only, or not yours)")


# --- temporary twins and their leftovers ------------------------------------------------------------
def temp_twin(dst, kind: str = "tmp") -> Path:
    """A hidden sibling of ``dst`` for writing it (``kind`` "tmp": same suffix, so writers that go
    by the suffix write the right format; "old": where a replaced store waits to be removed)."""
    dst = Path(dst)
    token = uuid.uuid4().hex[:8]
    if kind == "old":
        return dst.with_name(f".{dst.name}.{token}.old")
    return dst.with_name(f".{dst.name}.{token}.tmp{''.join(dst.suffixes[-1:])}")


# after ".<name>": our twins, a store copy's, export-model's, and mkstemp's (8 random characters)
_LEFTOVER = re.compile(r"^(?:\.[0-9a-f]{8}\.(?:tmp(?:\.[^/]*)?|old)|\.tmp-\d+|\.partial|\.[a-z0-9_]{8}\.tmp"
                       r"|-[a-z0-9_]{8})$")


def leftovers(dst) -> list[Path]:
    """Hidden twins of ``dst`` that an interrupted write left: ``.<name>.<token>.tmp…`` and
    ``.old`` (:func:`temp_twin`), ``.<name>.tmp-<pid>`` (a store copy), ``.<name>.partial`` (an
    export-model package) and ``.<name>.<random>.tmp`` / ``.<name>-<random>`` (checkpoint and
    training-state writers)."""
    dst = Path(dst)
    prefix = f".{dst.name}"
    try:
        names = [p for p in dst.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []
    return sorted(p for p in names if _LEFTOVER.match(p.name[len(prefix):]))


def clear_leftovers(dst) -> list[Path]:
    """Remove the leftovers of ``dst`` (call only while holding its lock: a writer's live twin is
    never a leftover then). An old output that a killed swap moved aside, with nothing in its
    place, is put back first. Returns what was removed or restored; each is logged."""
    dst = Path(dst)
    found = leftovers(dst)
    done = []
    if not (dst.exists() or dst.is_symlink()):
        olds = [p for p in found if p.name.endswith(".old")]
        if olds:
            keep = max(olds, key=lambda p: p.stat().st_mtime)
            os.replace(keep, dst)
            found.remove(keep)
            logger.warning("%s: put back the output an interrupted write had moved aside (%s)", dst, keep.name)
            done.append(keep)
    for path in found:
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("%s: cannot remove the leftover %s of an interrupted write (%s)", dst, path.name, exc)
            continue
        logger.warning("%s: removed %s, left by an interrupted write", dst, path.name)
        done.append(path)
    return done


def recover(dst) -> None:
    """Clear the leftovers of an interrupted write of ``dst`` now, before the checks (an old output
    a killed swap moved aside is put back, so it is judged as what it is). Skipped while another
    process holds ``dst``: its twins are live, and its claim refuses this command anyway."""
    if not leftovers(dst):
        return
    try:
        with OutputLock(dst):
            pass
    except OutputBusy:
        pass


# --- one writer per output -----------------------------------------------------------------------------
def lock_path(path) -> Path:
    """``<output>.lock``, beside the output (a lock inside a store would go with a replaced store)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


class OutputLock:
    """Keeps two writers off one output: ``with OutputLock(path): ...``.

    An advisory ``flock`` on ``<output>.lock`` (released by the OS when the process dies, so a
    killed run leaves no stale lock, only a file the next holder removes); the file names the
    holder (pid, host, start) for the message the second writer gets. Without ``fcntl`` (Windows)
    the file is created exclusively and a stale one must be removed by hand (the message says so).
    ``tidy``: clear the output's leftovers once the lock is held (:func:`clear_leftovers`)."""

    busy = OutputBusy

    def __init__(self, path, *, tidy: bool = True):
        self.path = Path(path)
        self.file = lock_path(self.path)
        self.tidy = tidy
        self._fd = None

    def message(self, holder: str) -> str:
        return (f"{self.path}: another napari-dfa process is writing it ({holder}); wait for it to finish "
                "or choose another output")

    def __enter__(self):
        import datetime as _dt
        import socket

        self.file.parent.mkdir(parents=True, exist_ok=True)
        holder = f"pid {os.getpid()} on {socket.gethostname()} since " \
                 f"{_dt.datetime.now().isoformat(timespec='seconds')}"
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            try:
                self._fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raise self.busy(self.message(self._holder()) + f"; delete {self.file} if none runs") from None
        else:
            while True:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise self.busy(self.message(self._holder())) from None
                try:  # the previous holder may have removed the file between our open and lock
                    same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    self._fd = fd
                    break
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, holder.encode())
        if self.tidy:
            try:
                clear_leftovers(self.path)
            except BaseException:
                self.__exit__(None, None, None)
                raise
        return self

    def _holder(self) -> str:
        try:
            return self.file.read_text(encoding="utf-8", errors="replace").strip() or "unknown"
        except OSError:
            return "unknown"

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.file)
            except OSError:
                pass
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def claim(path) -> OutputLock:
    """``with claim(out): ...``: the output is this process's until the block ends (see :class:`OutputLock`)."""
    return OutputLock(path)


@contextlib.contextmanager
def claims(paths):
    """Claim every path in ``paths`` (None skipped), released in reverse order."""
    with contextlib.ExitStack() as stack:
        for path in paths:
            if path is not None:
                stack.enter_context(claim(path))
        yield


@contextlib.contextmanager
def atomic_output(dst, *, overwrite: bool = True, claimed: bool = False):
    """``with atomic_output(dst) as tmp: write(tmp)``: ``tmp`` (a hidden twin, same folder, same
    suffix) becomes ``dst`` when the block ends without an error; otherwise it is removed and
    ``dst`` is untouched.

    ``claimed``: the caller holds ``dst``'s lock already (else it is taken here). Without
    ``overwrite`` an output that exists by the end is not replaced (OutputError). A store folder
    replaces an existing store of ours by two renames; a kill between them leaves the old one
    aside, which the next claim of ``dst`` puts back (:func:`clear_leftovers`)."""
    dst = Path(dst)
    with contextlib.ExitStack() as stack:
        if not claimed:
            stack.enter_context(claim(dst))
        tmp = temp_twin(dst)
        try:
            yield tmp
            publish(tmp, dst, overwrite=overwrite)
        finally:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists() or tmp.is_symlink():
                tmp.unlink()


def publish(tmp, dst, *, overwrite: bool = True) -> None:
    """Put the complete ``tmp`` in place of ``dst`` (see :func:`atomic_output`)."""
    tmp, dst = Path(tmp), Path(dst)
    if not overwrite and (dst.exists() or dst.is_symlink()):
        raise OutputError(f"{dst}: appeared while this command was writing it; not replaced (pass --overwrite "
                          f"to replace it)")
    if tmp.is_dir():
        old = None
        if dst.exists():
            old = temp_twin(dst, "old")
            os.replace(dst, old)
        os.replace(tmp, dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    elif overwrite:
        os.replace(tmp, dst)
    else:
        try:  # a link fails when dst exists: no other writer's file is ever replaced
            os.link(tmp, dst)
        except FileExistsError:
            raise OutputError(f"{dst}: appeared while this command was writing it; not replaced (pass "
                              "--overwrite to replace it)") from None
        except OSError:  # a file system without hard links: the check above is what we have
            os.replace(tmp, dst)
        else:
            tmp.unlink()
