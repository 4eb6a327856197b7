"""Third review of the session's changes: hostile values that got past the first checks."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
from test_libvirt import libvirtd, lv, pool  # noqa: F401 - fixtures

from capstan.core.errors import InputError
from capstan.drivers import libvirt_net
from capstan.drivers.base import Instance, InstanceState
from capstan.services.fleet.reach import _where

from hostile_kit import Sandbox, check

MAC = "02:aa:bb:cc:dd:ee"
# IPv6 addresses with a zone: ipaddress accepts any zone text, spaces, commas and all
ZONED = ["fe80::1%eth0 --env=X=1", "fe80::1%x,db=198.51.100.6", "fe80::1%a\nb",
         "fe80::1%$(reboot)", "::ffff:10.0.0.5%;reboot"]


class _Dom:
    """A running domain whose (hostile) libvirtd leases *addr* and reserves 10.0.0.7."""

    def __init__(self, addr: str) -> None:
        self.addr = addr

    def isActive(self) -> bool:
        return True

    def interfaceAddresses(self, _source: int, _flags: int) -> Any:
        return {"vnet0": {"hwaddr": MAC, "addrs": [{"addr": self.addr, "prefix": 64}]}}

    def connect(self) -> Any:
        class _Net:
            def XMLDesc(self, _flags: int) -> str:
                return ("<network><ip address='10.0.0.1' prefix='24'><dhcp>"
                        f"<host mac='{MAC}' name='x' ip='10.0.0.7'/></dhcp></ip></network>")

        class _Conn:
            def networkLookupByName(self, _name: str) -> _Net:
                return _Net()
        return _Conn()


@pytest.mark.parametrize("bad", ZONED)
def test_a_lease_with_a_zone_is_no_address(bad: str, sandbox: Sandbox) -> None:
    assert libvirt_net.valid_ip(bad) is None
    meta = {"network": "network:n", "mac": MAC}
    assert libvirt_net.reported(_Dom(bad), meta) == {"address": "10.0.0.7"}


@pytest.mark.parametrize(("extra", "ports"), [
    *(({"address": b}, ()) for b in ZONED),
    *(({}, (f"[{b}]:80->80/tcp",)) for b in ZONED),
    ({}, ("10.0.0.5:\u0668\u0660->80/tcp",)),  # Arabic-Indic digits: isdecimal()
    ({}, ("10.0.0.5:\uff18\uff10->80/tcp",)),  # full-width digits
])
def test_a_zoned_address_or_odd_port_reaches_no_dependent(
        extra: dict[str, str], ports: tuple[str, ...], sandbox: Sandbox) -> None:
    inst = Instance("f-db-1", "libvirt", InstanceState.RUNNING, "", ports=ports, extra=extra)
    with pytest.raises(InputError, match="not a valid") as caught:
        _where(inst, "192.0.2.1", "there")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("base", ["fe80::1%eth0 --env=X=1", "fe80::1%x,db=198.51.100.6"])
def test_a_host_address_with_a_zone_reaches_no_dependent(base: str, sandbox: Sandbox) -> None:
    inst = Instance("f-db-1", "qemu", InstanceState.RUNNING, "", ports=("0.0.0.0:80->80/tcp",))
    with pytest.raises(InputError, match="is not an IP address or host name"):
        _where(inst, base, "there")


@pytest.mark.parametrize(("base", "bound", "want"), [
    ("2001:db8::1", "0.0.0.0", "[2001:db8::1]:80"),  # was 2001:db8::1:80, another address
    ("192.0.2.1", "[::1]", "192.0.2.1:80"),  # loopback there is not reached from here
    ("2001:db8::1", "[::]", "[2001:db8::1]:80"),
])
def test_an_ipv6_host_address_keeps_its_port_apart(base: str, bound: str, want: str,
                                                   sandbox: Sandbox) -> None:
    inst = Instance("f-db-1", "qemu", InstanceState.RUNNING, "", ports=(f"{bound}:80->80/tcp",))
    assert _where(inst, base, "there") == want


@pytest.mark.aws
def test_an_image_replaced_during_its_base_upload_is_not_tagged_with_its_old_digest(
        cli, aws_env: str, sandbox: Sandbox, image: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The base upload reads the repository's image itself (no private copy): a pull that
    replaces it between its digest and its read would give the region a base tagged with
    the old digest holding other bytes, the parent of every later instance of that digest."""
    import boto3

    from capstan.core import proc
    from capstan.services.disks import image_facts

    old = image_facts(sandbox.root, image).sha256
    other = image.with_name("other.qcow2")
    proc.run(["qemu-img", "convert", "-q", "-c", "-O", "qcow2", str(image), str(other)])
    real = proc.run

    def swapping(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        if "convert" in argv and str(image) in argv and other.exists():
            os.replace(other, image)  # the pull lands between the digest and the read
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(proc, "run", swapping)
    check(cli("run", "-p", "aws", "-d", "-i", image, "--env", "FLEET_INDEX=1", "first"), 65,
          "changed while")
    tagged = boto3.client("ec2").describe_images(Owners=["self"], Filters=[
        {"Name": "tag:capstan:image-digest", "Values": [old]}])["Images"]
    assert tagged == []


@pytest.mark.libvirt
def test_an_image_replaced_before_its_base_volume_is_made_is_not_based_on(
        cli, image: Path, lv: str, pool: str, sandbox: Sandbox,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool's base is named by the image's digest, then flattened from the image:
    a pull landing between the two would put other bytes under the old digest's name,
    the base of every later instance of that digest (with its marker: complete)."""
    import libvirt
    from test_libvirt import SYSTEM

    from capstan.core import proc
    from capstan.services.disks import LocalDisks

    other = image.with_name("other.qcow2")
    proc.run(["qemu-img", "convert", "-q", "-c", "-O", "qcow2", str(image), str(other)])
    real = LocalDisks.prepare

    def swapping(self: LocalDisks, spec: Any, *args: Any, **kwargs: Any) -> Any:
        if other.exists():
            os.replace(other, image)  # the pull lands between the digest and the read
        return real(self, spec, *args, **kwargs)

    monkeypatch.setattr(LocalDisks, "prepare", swapping)
    monkeypatch.setenv("CAPSTAN_LIBVIRT_POOL", pool)
    check(cli("run", "-d", "-i", image, "lvh-swapped"), 65, "changed while")
    found = libvirt.open(SYSTEM).storagePoolLookupByName(pool)
    found.refresh(0)
    assert found.listVolumes() == []


def test_a_domain_removed_while_listed_is_left_out(sandbox: Sandbox) -> None:
    """Another client removes a domain between libvirt's listing and its state: the
    listing goes on without it (was exit 69 'Domain not found' for every instance list
    and fleet ps on a busy host)."""
    import libvirt

    from capstan.drivers.libvirt_driver import LibvirtDriver
    from capstan.drivers.libvirt_xml import NS

    def gone(*_args: Any) -> Any:
        err = libvirt.libvirtError("Domain not found: no domain with matching uuid")
        err.err = (libvirt.VIR_ERR_NO_DOMAIN, 0, "Domain not found", 0, "", "", "", 0, 0)
        raise err

    class _Gone:
        def metadata(self, _kind: int, _ns: str) -> str:
            return f"<instance xmlns='{NS}'><image>/x</image></instance>"

        state = gone

    class _Conn:
        def listAllDomains(self, _flags: int) -> list[_Gone]:
            return [_Gone()]

    driver = object.__new__(LibvirtDriver)
    driver.uri, driver._conn = "qemu:///system", _Conn()
    assert list(driver.list()) == []


def _largest_open_file() -> int:
    """The size of the largest regular file this process holds open."""
    import stat

    sizes = [0]
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/self/fd/{fd}")
            if stat.S_ISREG(st.st_mode):
                sizes.append(st.st_size)
    return max(sizes)


def test_a_host_flooding_ssh_stderr_fills_no_local_file(
        sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile host writes without end to the remote command's stderr (ssh passes it
    on): only its last lines are kept, in memory, not all of it in a local temp file;
    the one-line error shows the last line."""
    from capstan.core.errors import BackendError
    from capstan.drivers.libvirt_logs import _Session
    from capstan.drivers.libvirt_ssh import SshTarget

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh").write_text("#!/bin/sh\nhead -c 8388608 /dev/zero | tr '\\0' x >&2\n"
                              "printf '\\nlast words\\n' >&2\nexit 255\n")
    (fake / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    before = _largest_open_file()
    session = _Session(SshTarget("h"), ["true"], 1024)
    try:
        with pytest.raises(BackendError, match="last words"):
            session.wait(60)
        assert _largest_open_file() < before + (1 << 20)
    finally:
        session.stop()
