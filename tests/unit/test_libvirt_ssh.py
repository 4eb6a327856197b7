"""The ssh command line a libvirt URI gives (drivers/libvirt_ssh.py), the remote log's
frames (drivers/libvirt_logs.py) and the log readers (drivers/logs.py)."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.core.errors import InputError
from capstan.drivers.libvirt_logs import read_frames, remote_log_file
from capstan.drivers.libvirt_ssh import SshTarget
from capstan.drivers.logs import FileLog


def test_argv_from_a_full_uri() -> None:
    target = SshTarget.parse("qemu+ssh://ops@rack1.example:2222/system?keyfile=/k/id%20a%25"
                             "&known_hosts=/k/known%20hosts&no_verify=1")
    argv = target.argv(["tail", "-c", "+1", "/var/log/x y"])
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "ops"
    assert argv[argv.index("-i") + 1] == "/k/id a%%"  # ssh expands % tokens
    assert 'UserKnownHostsFile="/k/known hosts"' in argv
    assert "StrictHostKeyChecking=no" in argv and "BatchMode=yes" in argv
    assert argv[-3:-1] == ["--", "rack1.example"]
    assert shlex.split(argv[-1]) == ["tail", "-c", "+1", "/var/log/x y"]


def test_argv_of_a_plain_uri() -> None:
    argv = SshTarget.parse("qemu+ssh://host/system").argv(["true"])
    assert not {"-p", "-l", "-i"} & set(argv) and "StrictHostKeyChecking=no" not in argv
    assert SshTarget.parse("qemu+libssh2://[::1]/system").host == "::1"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=20),
                min_size=1, max_size=5))
def test_the_remote_command_is_its_words_quoted(words: list[str]) -> None:
    assert shlex.split(SshTarget("h").argv(words)[-1]) == words


def test_remote_log_file_takes_only_instance_names() -> None:
    assert remote_log_file("qemu+ssh://h/system", "web-1") == \
        "/var/log/libvirt/qemu/capstan-web-1.console.log"
    assert remote_log_file("qemu+ssh://h/session", "web-1") is None
    with pytest.raises(InputError):
        remote_log_file("qemu+ssh://h/system", "../../etc/shadow")


@pytest.mark.parametrize(("stream", "message"), [
    (b"0 5\nab", "ended early"),
    (b"0 99\n" + b"x" * 99, "malformed log frame"),  # more than the limit
    (b"-1 2\nab", "malformed log frame"),
    (b"9" * 60 + b" 1\nx", "malformed log frame"),
    (b"0 1 \nx", "malformed log frame"),
])
def test_bad_frames_are_refused(stream: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_frames(io.BytesIO(stream), lambda _o, _d: None, 10)


def test_frames_are_parsed() -> None:
    got: list[tuple[int, bytes]] = []
    read_frames(io.BytesIO(b"0 3\nabc4 0\n3 2\nde"), lambda o, d: got.append((o, d)), 10)
    assert got == [(0, b"abc"), (4, b""), (3, b"de")]


def test_a_file_log_restarts_when_the_file_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    with FileLog(path) as log:
        assert log.read() == b""
        path.write_bytes(b"first\n")
        assert log.read() == b"first\n" and log.read() == b""
        path.write_bytes(b"2\n")
        assert log.rest() == b"2\n"
