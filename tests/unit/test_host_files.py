"""Host files are copied one after another through one buffer, each opened (and its reading
started) ahead of its turn, but never more than AHEAD bytes or AHEAD_FILES files ahead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from capstan.core.errors import InputError, LocalIOError
from capstan.image import sources
from capstan.image.sources import HostFiles, Span

MIB = 1 << 20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_many_small_files_are_opened_at_most_ahead_files_ahead(tmp_path: Path) -> None:
    paths = []
    for n in range(3 * sources.AHEAD_FILES):
        paths.append(tmp_path / f"f{n}")
        paths[-1].write_bytes(b"x" * n)
    before = open_fds()
    with HostFiles([(p, 0, n) for n, p in enumerate(paths)]) as files:
        fd, st = files.take()
        assert st.st_size == 0
        os.close(fd)
        assert open_fds() - before <= sources.AHEAD_FILES
    assert open_fds() == before  # those opened ahead are closed with it


def test_big_files_are_opened_at_most_ahead_bytes_ahead(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "AHEAD", 3 * MIB)
    paths = []
    for n in range(8):
        paths.append(tmp_path / f"f{n}")
        paths[-1].write_bytes(bytes([n]) * MIB)
    out_path = tmp_path / "out"
    before = open_fds()
    with HostFiles([(p, 0, MIB) for p in paths]) as files, open(out_path, "wb") as out:
        for n, path in enumerate(paths):
            fd, _ = files.take()
            assert open_fds() - before <= 1 + 3 + 1  # out, this one, three more MiB
            assert files.copy(fd, out.fileno(), n * MIB, Span(path, 0, MIB)) == MIB
            os.close(fd)
    assert out_path.read_bytes() == b"".join(bytes([n]) * MIB for n in range(8))


def test_a_file_ahead_that_is_no_regular_file_is_refused_and_nothing_leaks(
        tmp_path: Path) -> None:
    good, fifo, gone = tmp_path / "good", tmp_path / "fifo", tmp_path / "gone"
    good.write_bytes(b"ok")
    os.mkfifo(fifo)
    before = open_fds()
    with pytest.raises(InputError, match="is a FIFO"), HostFiles(
            [(good, 0, 2), (fifo, 0, 2)]) as files:
        files.take()
    with pytest.raises(LocalIOError, match=r"cannot read .*gone"), HostFiles(
            [(good, 0, 2), (gone, 0, 2)]) as files:
        files.take()
    assert open_fds() == before
