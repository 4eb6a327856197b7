"""The GCE driver: Cloud Storage against gcp-storage-emulator, Compute Engine against the
FAKE in tests/fakes/gce_compute.py, credentials through Google's standard chain."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("NO_GCE_CHECK", "true")  # read at import: no metadata-server probe

from capstan.image import cmdline as osv_cmdline

from conftest import expect_errors, wait_for
from fakes.gce_compute import GIB, FakeCompute

pytestmark = pytest.mark.gce

BUCKET = "capstan-images"


@pytest.fixture(scope="session")
def gcs() -> Iterator[str]:
    """gcp-storage-emulator on a free loopback port, in memory, with one bucket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "-H", "127.0.0.1", "--port",
         str(port), "--in-memory", "--default-bucket", BUCKET, "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(ready, 30, "gcp-storage-emulator")
    yield f"http://127.0.0.1:{port}"
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=10)


def bucket_objects(gcs: str) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"{gcs}/storage/v1/b/{BUCKET}/o") as reply:
        return [o["name"] for o in json.load(reply).get("items", [])]


@pytest.fixture
def fake(gcs: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCompute]:
    """The fake Compute Engine, and a service-account key file whose token endpoint is
    the fake (found through GOOGLE_APPLICATION_CREDENTIALS)."""
    with FakeCompute(gcs) as compute:
        creds = tmp_path / "adc.json"
        compute.service_account_file(creds)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "capstan-test")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs)
        monkeypatch.setenv("CAPSTAN_GCE_ENDPOINT", compute.url)
        monkeypatch.setenv("CAPSTAN_GCE_BUCKET", BUCKET)
        yield compute
    assert bucket_objects(gcs) == []  # every uploaded tarball was deleted


def disk_of(tarball: Path) -> tuple[tarfile.TarInfo, bytes]:
    """The only member of a GCE tarball and its first 64 KiB."""
    with tarfile.open(tarball, "r:gz") as tar:
        (member,) = tar.getmembers()
        data = tar.extractfile(member)
        assert data is not None
        return member, data.read(65536)


def test_gce_disk_format(cli, app_tree: Path, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "app.tar.gz"
    result = cli("compose", "-l", "probe-loader", "-o", out, "--disk-format", "gce",
                 "-c", "/hello one", app_tree)
    assert result.code == 0, result.err
    member, head = disk_of(out)
    assert (member.name, member.size % GIB, member.issparse()) == ("disk.raw", 0, True)
    with gzip.open(out) as f:
        assert f.read(512)[257:265] == b"ustar  \0"  # the oldgnu magic GCE documents
    assert osv_cmdline.read_area(head[512:]) == "--rootfs=rofs /hello one"
    # image export writes the same layout from a qcow2 image, whose command line it keeps
    exported = tmp_path / "exp.tar.gz"
    result = cli("image", "export", image, "-o", exported, "--disk-format", "gce", "-f",
                 "json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["Members"] == "disk.raw"
    member, head = disk_of(exported)
    assert member.name == "disk.raw" and member.size == GIB and member.issparse()
    assert osv_cmdline.read_area(head[512:]) == "--rootfs=rofs runscript /run/default;"
    # and the disk inside is one our image reader opens
    from capstan.image.inspect import OsvImage

    with tarfile.open(exported, "r:gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    with OsvImage(tmp_path / "x" / "disk.raw") as img:
        assert img.cmdline == "--rootfs=rofs runscript /run/default;"
        assert "/hello" in {item.path for item in img.items()}


def test_upload_reuse_list_rmi(cli, fake: FakeCompute, image: Path, gcs: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud.storage import Blob

    def no_multipart(*args: object, **kwargs: object) -> None:
        raise AssertionError("the upload must be resumable")

    monkeypatch.setattr(Blob, "_do_multipart_upload", no_multipart)
    result = cli("image", "upload", "-p", "gce", image, "--name", "Web App", "-f", "json")
    assert result.code == 0, result.err
    shown = json.loads(result.out)
    name = shown["ID"]
    assert name.startswith("web-app-") and shown["Bytes sent"] > 0
    gce_image = fake.images[name]
    assert gce_image["status"] == "READY" and gce_image["labels"]["capstan-managed"] == "true"
    assert gce_image["rawDisk"]["source"].startswith(f"https://storage.googleapis.com/{BUCKET}/")
    assert osv_cmdline.read_area(fake.disks[name][512:]) == "--rootfs=rofs runscript /run/default;"
    # the same bytes again: the image is reused, nothing is sent
    again = json.loads(cli("image", "upload", "-p", "gce", image, "-f", "json").out)
    assert (again["ID"], again["Bytes sent"]) == (name, 0)
    rows = json.loads(cli("images", "-p", "gce", "-f", "json").out)
    assert [(r["Name"], r["ID"].isdigit()) for r in rows] == [(name, True)]
    assert cli("rmi", "-p", "gce", name).code == 0
    assert fake.images == {}
    assert json.loads(cli("images", "-p", "gce", "-f", "json").out) == []


def test_run_instances_logs_stop_delete(cli, fake: FakeCompute, image: Path,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    planned = cli("run", "-p", "gce", "--dry-run", "-i", image, "web")
    assert planned.code == 0, planned.err
    assert "would create instance web: e2-small in us-central1-a, network default" in planned.out
    assert fake.requests == [] and cli("instances", "-p", "gce", "-f", "value").out == ""
    result = cli("run", "-p", "gce", "-d", "-i", image, "-e", "/hello two", "web")
    assert result.code == 0, result.err
    assert "203.0.113.7" in result.out
    body = next(b for m, p, b in fake.requests if m == "POST" and p.endswith("/instances"))
    assert body["machineType"] == "zones/us-central1-a/machineTypes/e2-small"
    assert body["networkInterfaces"][0]["network"] == "global/networks/default"
    assert body["labels"] == {"capstan-managed": "true", "capstan-name": "web"}
    (disk,) = body["disks"]
    assert disk["boot"] and disk["autoDelete"]
    gce_image = disk["initializeParams"]["sourceImage"].rpartition("/")[2]
    # the run's command line went into the uploaded disk, not into the image file
    assert osv_cmdline.read_area(fake.disks[gce_image][512:]) == "--rootfs=rofs /hello two"
    rows = json.loads(cli("instances", "-p", "gce", "-f", "json").out)
    assert [(r["Name"], r["Status"]) for r in rows] == [("web", "running")]
    capfd.readouterr()
    assert cli("logs", "-p", "gce", "web").code == 0  # written to the real stdout
    assert "Booted from the fake." in capfd.readouterr().out
    assert cli("stop", "-p", "gce", "web").code == 0
    assert fake.instances[("us-central1-a", "web")]["status"] == "TERMINATED"
    assert json.loads(cli("instances", "-p", "gce", "-f", "json").out)[0]["Status"] == "stopped"
    assert cli("start", "-p", "gce", "web").code == 0
    assert fake.instances[("us-central1-a", "web")]["status"] == "RUNNING"
    assert cli("delete", "-p", "gce", "web").code == 0
    assert fake.instances == {} and cli("instances", "-p", "gce", "-f", "value").out == ""
    assert cli("rmi", "-p", "gce", "web").code == 0 and fake.images == {}


def test_foreground_run_prints_the_serial_console(cli, fake: FakeCompute, image: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    from capstan.drivers.gce import GceDriver

    monkeypatch.setattr(GceDriver, "poll_seconds", 0.0)
    fake.serial = b"OSv v0.57.0\nprogram exited with status 3\n"
    polls = []

    def power_off_on_second_poll(self: GceDriver, name: str) -> bytes:
        polls.append(name)
        if len(polls) == 2:
            fake.instances[("us-central1-a", name)]["status"] = "TERMINATED"
        return original(self, name)

    original = GceDriver.read_log
    monkeypatch.setattr(GceDriver, "read_log", power_off_on_second_poll)
    result = cli("run", "-p", "gce", "-i", image, "--rm", "fg")
    assert result.code == 3, result.err
    assert capfd.readouterr().out.count("program exited with status 3") == 1
    assert fake.instances == {}
    assert cli("rmi", "-p", "gce", "fg").code == 0


def test_failed_creates_remove_what_they_made(cli, fake: FakeCompute, image: Path,
                                              capstan_root: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # the import fails: the FAILED image and the uploaded tarball are deleted
    with monkeypatch.context() as m:
        m.setattr(fake, "check_tarball", lambda image: ("INVALID_IMAGE_FILE", "bad"))
        result = cli("run", "-p", "gce", "-d", "-i", image, "web")
    assert (result.code, result.err.count("\n")) == (69, 1), result.err
    assert "images.insert failed: INVALID_IMAGE_FILE: bad" in result.err
    assert fake.images == {} and not (capstan_root / "instances" / "gce" / "web").exists()
    # the VM's insert operation fails: the VM it left is deleted, and so is the record
    fake.fail_instances = "no capacity"
    result = cli("run", "-p", "gce", "-d", "-i", image, "web")
    assert (result.code, result.err.count("\n")) == (69, 1), result.err
    assert "ZONE_RESOURCE_POOL_EXHAUSTED: no capacity" in result.err
    assert fake.instances == {} and not (capstan_root / "instances" / "gce" / "web").exists()
    assert cli("rmi", "-p", "gce", "web").code == 0


def test_bad_input(cli, fake: FakeCompute, image: Path, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [
        ({"CAPSTAN_GCE_ZONE": "mars"}, ("run", "-p", "gce", "-d", "-i", image, "x"), 78,
         "invalid GCE zone 'mars'"),
        ({"CAPSTAN_GCE_ZONE": "mars-north1-z"}, ("run", "-p", "gce", "-d", "-i", image, "x"),
         78, "unknown GCE zone 'mars-north1-z'"),
        ({"CAPSTAN_GCE_MACHINE_TYPE": "huge-1"}, ("run", "-p", "gce", "-d", "-i", image, "x"),
         78, "unknown GCE machine type 'huge-1'"),
        ({"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json")},
         ("images", "-p", "gce"), 78, "is not a readable Google credentials file"),
        ({"GOOGLE_APPLICATION_CREDENTIALS": ""}, ("images", "-p", "gce"), 78,
         "no Google credentials"),
        ({"CAPSTAN_GCE_BUCKET": ""}, ("image", "upload", "-p", "gce", image), 78,
         "gce_bucket is not set"),
        ({"CAPSTAN_GCE_NETWORK": "nowhere"}, ("run", "-p", "gce", "-d", "-i", image, "x"),
         69, "resource 'global/networks/nowhere' was not found"),
        ({}, ("run", "-p", "gce", "-i", image, "Bad_Name"), 64,
         "invalid gce instance name 'Bad_Name'"),
        ({}, ("run", "-p", "gce", "-i", image, "-f", "8080:80", "x"), 69, "port forwards"),
        ({}, ("rmi", "-p", "gce", "nope"), 65, "no pycapstan GCE image 'nope'"),
        ({}, ("logs", "-p", "gce", "nope"), 65, "no such instance: nope"),
        ({}, ("logs", "-p", "gce", "-f", "nope"), 69, "following logs"),
    ]
    expect_errors(cli, monkeypatch, cases)
    assert cli("instances", "-p", "gce", "-f", "value").out == ""
    with monkeypatch.context() as m:  # a key Google does not know
        m.setattr(fake, "valid_jwt", lambda token: False)
        expect_errors(cli, monkeypatch, [({}, ("images", "-p", "gce"), 78,
                                          "GCE images.list: access denied")])
    for module in ("google.auth", "google.cloud.compute_v1"):
        with monkeypatch.context() as m:  # the extra is not installed
            m.setitem(sys.modules, module, None)
            expect_errors(cli, monkeypatch, [({}, ("images", "-p", "gce"), 69,
                                              "pip install 'pycapstan[gce]'")])


def test_help_imports_no_cloud_library() -> None:
    code = ("import sys; from capstan.shell import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "print('CLOUD', sorted({m.split('.')[0] for m in sys.modules} & "
            "{'google', 'openstack', 'keystoneauth1', 'gcp_storage_emulator'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "CLOUD []" in done.stdout


def test_identical_disks_made_at_once_share_one_upload(fake: FakeCompute, image: Path) -> None:
    """No block deltas on GCE: each distinct command line is one upload, and instances
    whose disks are identical share it, also when created in parallel (a fleet's up)."""
    from concurrent.futures import ThreadPoolExecutor

    from capstan.core.config import load
    from capstan.drivers.model import InstanceSpec
    from capstan.services.disks import open_driver

    driver = open_driver("gce", load())
    specs = [InstanceSpec(f"w{n}", image, cmdline=f"--env=GROUP={n % 2} /hello")
             for n in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(driver.create, specs))
    assert len(fake.images) == 2
    for s in specs:
        driver.delete(s.name)
