"""The vSphere driver against vcsim (govmomi's simulator), and the OVA export."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.core.fs import sha256_of

pytestmark = pytest.mark.vsphere

VCSIM = Path(__file__).resolve().parents[1] / "backends" / "vcsim"


@pytest.fixture(scope="module")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """vcsim on a free port with a 2048-bit certificate (its own is too weak for OpenSSL)."""
    subprocess.run([VCSIM / "build.sh"], check=True, capture_output=True)
    work = tmp_path_factory.mktemp("vcsim")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", work / "key.pem", "-out", work / "cert.pem"],
                   check=True, capture_output=True)
    sim = subprocess.Popen([VCSIM / "bin" / "vcsim", "-l", "127.0.0.1:0",
                            "-tlscert", work / "cert.pem",
                            "-tlskey", work / "key.pem", "-username", "capstan", "-password",
                            "s3cret"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True)
    assert sim.stdout is not None
    line = sim.stdout.readline()
    match = re.search(r"GOVC_URL=https://[^@]+@([^/]+)/sdk", line)
    assert match, line
    yield {"url": f"https://{match.group(1)}/sdk", "cafile": str(work / "cert.pem")}
    sim.terminate()
    sim.wait(timeout=10)


@pytest.fixture
def vs(vcsim: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("CAPSTAN_VSPHERE_URL", vcsim["url"])
    monkeypatch.setenv("CAPSTAN_VSPHERE_USER", "capstan")
    monkeypatch.setenv("CAPSTAN_VSPHERE_PASSWORD", "s3cret")
    monkeypatch.setenv("CAPSTAN_VSPHERE_CAFILE", vcsim["cafile"])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", vcsim["cafile"])
    return vcsim


def test_upload_create_power_cycle_list_destroy(cli, image: Path, vs: dict[str, str]) -> None:
    result = cli("run", "-p", "vsphere", "-d", "-i", image, "-e", "/vs", "-m", "256M", "vm1")
    assert result.code == 0, result.err
    rows = {r["Name"]: r for r in json.loads(cli("instances", "-p", "vsphere", "-f",
                                                 "json").out)}
    assert set(rows) == {"vm1"}  # vcsim's own VMs are not ours
    assert rows["vm1"]["Status"] == "running"
    assert cli("stop", "-p", "vsphere", "-t", "1", "vm1").code == 0
    assert json.loads(cli("instances", "-p", "vsphere", "-f", "json").out)[0]["Status"] \
        == "stopped"
    assert cli("start", "-p", "vsphere", "vm1").code == 0
    assert cli("delete", "-p", "vsphere", "vm1").code == 0
    assert json.loads(cli("instances", "-p", "vsphere", "-f", "json").out) == []
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim

    host, port = vs["url"].split("//")[1].split("/")[0].split(":")
    si = SmartConnect(host=host, port=int(port), user="capstan", pwd="s3cret",
                      sslContext=ssl.create_default_context(cafile=vs["cafile"]))
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder,
                                                       [vim.VirtualMachine], True)
        assert "vm1" not in [v.name for v in view.view]
    finally:
        Disconnect(si)


def test_vsphere_bad_input(cli, image: Path, vs: dict[str, str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli("run", "-p", "vsphere", "-d", "-i", image, "taken").code == 0
    cases = [
        ({}, "taken", 65, "already has a VM named taken"),
        ({"CAPSTAN_VSPHERE_PASSWORD": "wrong"}, "n1", 78, "rejected the login"),
        ({"CAPSTAN_VSPHERE_DATASTORE": "nope"}, "n2", 65, "no datastore 'nope'"),
        ({"CAPSTAN_VSPHERE_DATACENTER": "nope"}, "n3", 65, "no datacenter 'nope'"),
        ({"CAPSTAN_VSPHERE_CAFILE": ""}, "n4", 75, "TLS verification"),
    ]
    for env, name, code, text in cases:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            if env.get("CAPSTAN_VSPHERE_CAFILE") == "":
                m.delenv("REQUESTS_CA_BUNDLE")
                m.setenv("SSL_CERT_FILE", "/nonexistent")
            result = cli("run", "-p", "vsphere", "-d", "-i", image, name)
        assert (result.code, result.err.count("\n")) == (code, 1), (env, result)
        assert text in result.err and "s3cret" not in result.err, (env, result.err)
    names = [r["Name"] for r in json.loads(cli("instances", "-p", "vsphere", "-f",
                                               "json").out)]
    assert names == ["taken"]
    assert cli("delete", "-p", "vsphere", "taken").code == 0


def test_ova_export_is_valid(cli, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "app.ova"
    result = cli("image", "export", image, "-o", out, "--disk-format", "ova", "-f", "json")
    assert result.code == 0, result.err
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert names == ["app.ovf", "app.mf", "app-disk1.vmdk"]  # descriptor first
        tar.extractall(tmp_path / "x", filter="data")
    x = tmp_path / "x"
    manifest = dict(re.findall(r"SHA256\((.+)\)= ([0-9a-f]{64})", (x / "app.mf").read_text()))
    assert manifest == {n: sha256_of(x / n) for n in ("app.ovf", "app-disk1.vmdk")}
    ovf = ET.parse(x / "app.ovf").getroot()
    ns = "{http://schemas.dmtf.org/ovf/envelope/1}"
    disk = ovf.find(f"{ns}DiskSection/{ns}Disk")
    assert disk is not None
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", image],
                                     capture_output=True, check=True).stdout)
    assert int(disk.get(f"{ns}capacity", "0")) == info["virtual-size"]
    ref = ovf.find(f"{ns}References/{ns}File")
    assert ref is not None and int(ref.get(f"{ns}size", "0")) == \
        (x / "app-disk1.vmdk").stat().st_size
    check = subprocess.run(["qemu-img", "check", x / "app-disk1.vmdk"], capture_output=True)
    assert check.returncode == 0
    vmdk = json.loads(subprocess.run(["qemu-img", "info", "--output=json",
                                      x / "app-disk1.vmdk"], capture_output=True,
                                     check=True).stdout)
    assert vmdk["format-specific"]["data"]["create-type"] == "streamOptimized"
