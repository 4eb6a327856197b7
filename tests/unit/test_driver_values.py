"""Parsing of the driver value types: forwards, volumes, MAC addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from capstan.core.errors import UsageError
from capstan.drivers.base import PortForward, Volume, mac_address


@pytest.mark.parametrize(("text", "expected"), [
    ("8080:80", PortForward(8080, 80)),
    ("0:53/udp", PortForward(0, 53, "udp")),
    ("0.0.0.0:2222:22", PortForward(2222, 22, "tcp", "0.0.0.0")),
    ("[::1]:8443:443/tcp", PortForward(8443, 443, "tcp", "::1")),
])
def test_forward_rules(text: str, expected: PortForward) -> None:
    assert PortForward.parse(text) == expected


@pytest.mark.parametrize(("text", "path", "fmt", "cache"), [
    # the format is probed and the default cache chosen when attached (issue 17, gap 6)
    ("/v.img", "/v.img", None, ""),
    ("/v.img:format=qcow2:cache=none", "/v.img", "qcow2", "none"),
    (r"/a\:b.img:format=vdi", "/a:b.img", "vdi", ""),
    ("path=/c:d.img:format=raw", "/c:d.img", "raw", ""),
])
def test_volume_specs(text: str, path: str, fmt: str | None, cache: str) -> None:
    vol = Volume.parse(text)
    assert (vol.path, vol.format, vol.cache) == (Path(path), fmt, cache)


def test_volume_defaults_yield_to_the_text() -> None:
    vol = Volume.parse("/v.img:aio=native:cache=none", {"format": "qcow2", "aio": "threads"})
    assert (vol.format, vol.aio, vol.cache) == ("qcow2", "native", "none")


def test_mac_addresses() -> None:
    assert mac_address("52-54-00-AA-bb-CC") == "52:54:00:aa:bb:cc"
    random = mac_address(None)
    first = int(random[:2], 16)
    assert first & 0x02 and not first & 0x01 and len(random) == 17
    for bad in ("52:54:00:aa:bb", "52:54-00:aa:bb:cc", "03:00:00:00:00:00"):
        with pytest.raises(UsageError):
            mac_address(bad)
