"""The libvirt driver: XML against test:///default, boots against qemu:///system (TCG)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from filelock import FileLock

from capstan.drivers.base import InstanceSpec, PortForward, Volume
from capstan.drivers.libvirt_driver import NS, DomainHost, domain_xml

from conftest import wait_for

pytestmark = pytest.mark.libvirt

SYSTEM = "qemu:///system"


def test_domain_xml_defines_on_the_test_driver(tmp_path: Path) -> None:
    spec = InstanceSpec(name=f"x{uuid.uuid4().hex[:8]}", image=tmp_path / "i.qcow2",
                        memory_mib=256, cpus=3, volumes=(Volume(tmp_path / "v.img", "raw"),))
    xml = domain_xml(spec, DomainHost(domain_type="test", disk={"file": "/d.qcow2"},
                     console_log="/c.log", network="", meta={"image": "/i.qcow2"},
                     forwards=(PortForward(8080, 80),)))
    root = ET.fromstring(xml)
    assert root.get("type") == "test" and root.findtext("vcpu") == "3"
    assert root.find("memory").text == "256"  # type: ignore[union-attr]
    assert [d.get("dev") for d in root.iter("target") if d.get("bus")] == ["vda", "vdb"]
    assert root.find("devices/serial/log").get("file") == "/c.log"  # type: ignore[union-attr]
    args = [a.get("value") for a in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert "hostfwd=tcp:127.0.0.1:8080-:80" in args[1]
    conn = libvirt.open("test:///default")
    dom = conn.defineXML(xml)
    meta = ET.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS))
    assert meta.findtext("image") == "/i.qcow2"  # libvirt returns it without a prefix
    dom.create()
    assert dom.isActive()
    dom.destroy()
    dom.undefine()


def test_network_and_volume_sources() -> None:
    spec = InstanceSpec(name="n", image=Path("/i"), mac="52:54:00:00:00:01")
    root = ET.fromstring(domain_xml(spec, DomainHost(domain_type="qemu",
                                    disk={"pool": "p", "volume": "n.qcow2"}, console_log=None,
                                    network="bridge:br0", meta={})))
    iface = root.find("devices/interface")
    assert iface is not None and iface.get("type") == "bridge"
    assert iface.find("source").get("bridge") == "br0"  # type: ignore[union-attr]
    assert iface.find("mac").get("address") == "52:54:00:00:00:01"  # type: ignore[union-attr]
    disk = root.find("devices/disk")
    assert disk is not None and disk.get("type") == "volume"
    assert disk.find("source").attrib == {"pool": "p", "volume": "n.qcow2"}  # type: ignore


# -- against libvirtd -----------------------------------------------------------


BACKENDS = Path(__file__).resolve().parents[1] / "backends"


def _answers() -> bool:
    return subprocess.run(["virsh", "-c", SYSTEM, "version"], capture_output=True,
                          check=False, timeout=60).returncode == 0


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """libvirtd: the one already running (CI starts it), else started and stopped here.

    pytest-xdist workers share one daemon: the first starts it, the last stops it.
    """
    users = tmp_path_factory.getbasetemp().parent / "libvirtd-users"
    lock = FileLock(f"{users}.lock")
    with lock:
        users.mkdir(exist_ok=True)
        if not _answers():
            subprocess.run([BACKENDS / "start-libvirtd.sh"], check=True, capture_output=True)
            (users / "started-here").touch()
        (users / f"worker-{os.getpid()}").touch()
    yield SYSTEM
    with lock:
        (users / f"worker-{os.getpid()}").unlink(missing_ok=True)
        if not any(users.glob("worker-*")) and (users / "started-here").exists():
            subprocess.run([BACKENDS / "stop-libvirtd.sh"], check=False, capture_output=True)
            (users / "started-here").unlink()


@pytest.fixture
def lv(libvirtd: str, capstan_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Environment for -p libvirt; the test's directories are made passable for QEMU."""
    for d in [capstan_root, *capstan_root.parents]:
        d.chmod(stat.S_IMODE(d.stat().st_mode) | stat.S_IXOTH)
    monkeypatch.setenv("CAPSTAN_LIBVIRT_URI", libvirtd)
    monkeypatch.setenv("CAPSTAN_HYPERVISOR", "libvirt")
    yield libvirtd
    conn = libvirt.open(libvirtd)
    for dom in conn.listAllDomains(0):
        try:
            dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS)
        except libvirt.libvirtError:
            continue
        if str(capstan_root.parent) in dom.XMLDesc(0):  # this test's (image in tmp_path)
            if dom.isActive():
                dom.destroy()
            dom.undefine()


def _log(capstan_root: Path, name: str) -> str:
    path = capstan_root / "instances" / "libvirt" / name / "console.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_run_list_logs_stop_delete(cli, image: Path, lv: str, capstan_root: Path) -> None:
    name = f"lvt-{uuid.uuid4().hex[:6]}"
    result = cli("run", "-d", "-i", image, "-e", "/x @hold", "-f", "0:80", name)
    assert result.code == 0, result.err
    rows = cli("instances", "-f", "value", "-c", "Name", "-c", "Status", "-c", "Ports").out
    row = next(r for r in rows.splitlines() if r.startswith(name))
    assert " running 127.0.0.1:" in row
    wait_for(lambda: "PROBE done" in _log(capstan_root, name), what="probe report")
    assert "PROBE cmdline=[--rootfs=rofs /x @hold]" in cli.program("logs", name).stdout
    port = int(row.split("127.0.0.1:")[1].split("->")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # QEMU's forward under libvirt
    assert cli("stop", name).code == 0
    assert "PROBE power-button" in _log(capstan_root, name)  # a graceful power-off
    assert " stopped" in cli("instances", "-f", "value").out
    assert cli("delete", name).code == 0
    assert name not in [d.name() for d in libvirt.open(lv).listAllDomains(0)]
    assert not (capstan_root / "instances" / "libvirt" / name).exists()


def test_foreground_run_and_escalated_stop(cli, image: Path, lv: str) -> None:
    done = cli.program("run", "-i", image, "--rm", f"lvt-{uuid.uuid4().hex[:6]}")
    assert done.returncode == 0, done.stderr
    assert "PROBE rofs-magic=ok" in done.stdout
    name = f"lvt-{uuid.uuid4().hex[:6]}"
    assert cli("run", "-d", "-i", image, "-e", "/x @deaf", name).code == 0
    assert cli("stop", "-t", "1", name).code == 0
    assert cli("delete", name).code == 0


@pytest.fixture
def pool(lv: str, tmp_path: Path) -> Iterator[str]:
    name = f"capstan-test-{uuid.uuid4().hex[:6]}"
    target = tmp_path / "pool"
    target.mkdir(mode=0o711)
    conn = libvirt.open(lv)
    xml = f"<pool type='dir'><name>{name}</name><target><path>{target}</path></target></pool>"
    p = conn.storagePoolCreateXML(xml, 0)  # transient: gone when destroyed
    yield name
    for vol in p.listAllVolumes(0):
        vol.delete(0)
    p.destroy()


def test_disk_uploaded_into_a_pool(cli, image: Path, pool: str, lv: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_LIBVIRT_POOL", pool)
    name = f"lvt-{uuid.uuid4().hex[:6]}"
    done = cli.program("run", "-i", image, "-e", "/pooled", name)
    assert done.returncode == 0, done.stderr
    assert "PROBE cmdline=[--rootfs=rofs /pooled]" in done.stdout
    volumes = libvirt.open(lv).storagePoolLookupByName(pool).listVolumes()
    assert sorted(v for v in volumes if not v.startswith("capstan-base-")) == [f"{name}.qcow2"]
    assert len(volumes) == 3  # with the image's base volume and its marker
    assert cli("delete", name).code == 0
    assert libvirt.open(lv).storagePoolLookupByName(pool).listVolumes() == []


@pytest.fixture(scope="session")
def ssh_uri(libvirtd: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """qemu+ssh://root@127.0.0.1:PORT/system through a private sshd."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.access(sshd, os.X_OK):
        pytest.fail("sshd is missing: apt-get install openssh-server")
    work = tmp_path_factory.mktemp("sshd")
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", work / key],
                       check=True)
    shutil.copy(work / "client.pub", work / "authorized_keys")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (work / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work}/host\n"
        f"AuthorizedKeysFile {work}/authorized_keys\nPermitRootLogin prohibit-password\n"
        f"PasswordAuthentication no\nStrictModes no\nUsePAM no\nPidFile {work}/sshd.pid\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    subprocess.run([sshd, "-f", work / "sshd_config", "-E", work / "sshd.log"], check=True)
    wait_for(lambda: (work / "sshd.pid").exists(), 10, "sshd")
    yield f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={work}/client&no_verify=1"
    os.kill(int((work / "sshd.pid").read_text()), 15)


def test_remote_uri_uploads_and_runs(cli, image: Path, pool: str, ssh_uri: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_LIBVIRT_URI", ssh_uri)
    name = f"lvt-{uuid.uuid4().hex[:6]}"
    result = cli("run", "-d", "-i", image, "-e", "/remote @hold", name)
    assert result.code == 78 and "needs a storage pool" in result.err
    monkeypatch.setenv("CAPSTAN_LIBVIRT_POOL", pool)
    assert cli("run", "-d", "-i", image, "-e", "/remote @hold", name).code == 0
    assert f"{name} libvirt running" in cli("instances", "-f", "value").out
    console = subprocess.Popen([sys.executable, "-m", "capstan.shell", "console", name],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert console.stdin is not None and console.stdout is not None
    received = bytearray()

    def read() -> None:
        while chunk := console.stdout.read1(4096):  # type: ignore[union-attr]
            received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    console.stdin.write(b"hello-remote")
    console.stdin.flush()
    wait_for(lambda: b"hello-remote" in received, what="the echo through the remote console")
    assert cli("stop", name).code == 0
    console.stdin.close()
    assert console.wait(timeout=30) == 0, console.stderr.read()  # type: ignore[union-attr]
    reader.join(timeout=5)
    assert b"PROBE power-button" in received
    assert cli("delete", name).code == 0


def test_bad_libvirt_input_leaves_nothing(cli, image: Path, lv: str, capstan_root: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"lvt-{uuid.uuid4().hex[:6]}"
    assert cli("run", "-d", "-i", image, "-e", "/x @hold", name).code == 0
    result = cli("run", "-d", "-i", image, name)
    assert result.code == 65 and "already exists" in result.err
    wait_for(lambda: "PROBE done" in _log(capstan_root, name), what="probe report")
    assert cli("delete", name).code == 0
    cases = [
        ({"CAPSTAN_LIBVIRT_URI": "qemu+tcp://127.0.0.1:1/system"}, 69, "cannot connect"),
        ({"CAPSTAN_LIBVIRT_URI": "qemu:///system?socket=/nonexistent/libvirt-sock"}, 69,
         "is libvirtd running"),
        ({"CAPSTAN_LIBVIRT_POOL": "no-such-pool"}, 65, "no storage pool 'no-such-pool'"),
    ]
    for env, code, text in cases:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        result = cli("run", "-d", "-i", image, name)
        assert (result.code, result.err.count("\n")) == (code, 1), (env, result)
        assert text in result.err, (env, result.err)
        for key in env:
            monkeypatch.delenv(key)
        monkeypatch.setenv("CAPSTAN_LIBVIRT_URI", lv)
    assert name not in [d.name() for d in libvirt.open(lv).listAllDomains(0)]
    assert not (capstan_root / "instances" / "libvirt" / name).exists()


def remote_log(name: str) -> Path:
    """The console log libvirt keeps for *name* on the remote host (this machine)."""
    from capstan.drivers.libvirt_logs import REMOTE_LOG_DIR

    return Path(REMOTE_LOG_DIR) / f"capstan-{name}.console.log"


def test_remote_logs_over_ssh(cli, image: Path, pool: str, ssh_uri: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_LIBVIRT_URI", ssh_uri)
    monkeypatch.setenv("CAPSTAN_LIBVIRT_POOL", pool)
    name = f"lvt-{uuid.uuid4().hex[:6]}"
    assert cli("run", "-d", "-i", image, "-e", "/remote-log @hold", name).code == 0
    follower = subprocess.Popen([sys.executable, "-m", "capstan", "logs", "-f", name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: "PROBE done" in cli.program("logs", name).stdout, 60, "probe report")
        shown = cli.program("logs", name)
        assert shown.returncode == 0, shown.stderr
        assert "PROBE cmdline=[--rootfs=rofs /remote-log @hold]" in shown.stdout
        assert cli("stop", name).code == 0
        out, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    whole = remote_log(name).read_bytes()
    assert out == whole and b"PROBE power-button" in out  # followed to its end, once
    assert cli.program("logs", name).stdout == whole.decode().replace("\r\n", "\n")
    assert cli("delete", name).code == 0
    assert not remote_log(name).exists()  # delete removes it on the host

    name = f"lvt-{uuid.uuid4().hex[:6]}"  # a foreground run follows it over ssh too
    done = cli.program("run", "--rm", "-i", image, "-e", "/remote-fg", name)
    assert done.returncode == 0, done.stderr
    assert "PROBE cmdline=[--rootfs=rofs /remote-fg]" in done.stdout
    assert "PROBE power-button" not in done.stdout and not remote_log(name).exists()
