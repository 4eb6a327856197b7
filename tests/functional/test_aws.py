"""The AWS driver against moto_server (EBS direct, EC2) and botocore Stubbers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from capstan.core.config import load
from capstan.core.errors import BackendError, ConfigError, RemoteError
from capstan.drivers.aws import BLOCK, AwsDriver, nonzero_blocks
from capstan.services.disks import LocalDisks, image_facts

from conftest import expect_errors, wait_for

pytestmark = pytest.mark.aws


@pytest.fixture
def sparse(tmp_path: Path) -> Path:
    """An 8 MiB raw disk with data in blocks 0, 3 and 7 only."""
    disk = tmp_path / "sparse.raw"
    with open(disk, "wb") as f:
        f.truncate(16 * BLOCK)
        for index in (0, 3, 7):
            f.seek(index * BLOCK + 100)
            f.write(f"block {index}".encode())
    return disk


def driver(capstan_root: Path, **values: str) -> AwsDriver:
    env = {"CAPSTAN_ROOT": str(capstan_root), **{f"CAPSTAN_{k.upper()}": v
                                                 for k, v in values.items()}}
    config = load({}, env)
    return AwsDriver(config, LocalDisks(config.root))


def our_snapshots(digest: str) -> list[str]:
    found = boto3.client("ec2").describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:capstan:managed", "Values": ["true"]},
        {"Name": "tag:capstan:image-digest", "Values": [digest]}])["Snapshots"]
    return [s["SnapshotId"] for s in found]


def test_ebs_direct_sends_only_nonzero_blocks(cli, aws_env: str, sparse: Path,
                                              capstan_root: Path) -> None:
    result = cli("image", "upload", sparse, "--name", "sparse", "-f", "json")
    assert result.code == 0, result.err
    shown = dict(json.loads(result.out))
    assert shown["Bytes sent"] == 3 * BLOCK and shown["ID"].startswith("ami-")
    digest = image_facts(capstan_root, sparse).sha256
    (snapshot,) = our_snapshots(digest)
    ebs = boto3.client("ebs")
    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot)["Blocks"]
    assert sorted(b["BlockIndex"] for b in listed) == [0, 3, 7]
    raw = sparse.read_bytes()
    for block in listed:
        data = ebs.get_snapshot_block(SnapshotId=snapshot, BlockIndex=block["BlockIndex"],
                                      BlockToken=block["BlockToken"])["BlockData"].read()
        start = block["BlockIndex"] * BLOCK
        assert data == raw[start:start + BLOCK]
    # the same bytes again: the AMI is reused, nothing is sent
    again = dict(json.loads(cli("image", "upload", sparse, "-f", "json").out))
    assert again["ID"] == shown["ID"] and again["Bytes sent"] == 0
    rows = json.loads(cli("images", "-p", "aws", "-f", "json").out)
    assert [(r["Name"], r["ID"]) for r in rows] == [("sparse", shown["ID"])]
    assert cli("rmi", "-p", "aws", "sparse").code == 0
    assert json.loads(cli("images", "-p", "aws", "-f", "json").out) == []
    assert our_snapshots(digest) == []


def test_register_image_request(aws_env: str, sparse: Path, capstan_root: Path) -> None:
    aws = driver(capstan_root)
    sent: dict[str, Any] = {}
    aws.client("ec2").meta.events.register(
        "provide-client-params.ec2.RegisterImage", lambda params, **_: sent.update(params))
    ami = aws.upload(sparse, "re+g").id
    snapshot = our_snapshots(image_facts(capstan_root, sparse).sha256)[0]
    assert sent["Name"].startswith("re-g-")  # AWS takes no + in an AMI name
    assert ami.startswith("ami-")
    assert (sent["Architecture"], sent["VirtualizationType"], sent["BootMode"]) == \
        ("x86_64", "hvm", "legacy-bios")
    assert sent["EnaSupport"] is True and sent["RootDeviceName"] == "/dev/xvda"
    assert sent["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"] == snapshot
    assert {t["Key"] for t in sent["TagSpecifications"][0]["Tags"]} >= {"capstan:managed"}
    aws.remove_image(ami)


def test_killed_upload_resumes(cli, aws_env: str, tmp_path: Path, capstan_root: Path) -> None:
    disk = tmp_path / "big.raw"
    disk.write_bytes(os.urandom(160 * BLOCK))
    digest = image_facts(capstan_root, disk).sha256
    state = capstan_root / "cache" / "aws" / f"{digest}.json"
    upload = subprocess.Popen([sys.executable, "-m", "capstan.shell", "image", "upload",
                               str(disk), "--name", "big"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def some_done() -> bool:
        try:
            return len(json.loads(state.read_text())["done"]) >= 16
        except (OSError, ValueError):
            return False

    wait_for(some_done, 60, "the first blocks")
    upload.send_signal(signal.SIGKILL)
    upload.wait()
    first = set(json.loads(state.read_text())["done"])
    assert 16 <= len(first) < 160
    result = cli("image", "upload", disk, "--name", "big", "-f", "json")
    assert result.code == 0, result.err
    shown = dict(json.loads(result.out))
    assert shown["Bytes sent"] <= (160 - len(first)) * BLOCK  # only what was missing
    (snapshot,) = our_snapshots(digest)
    blocks = boto3.client("ebs").list_snapshot_blocks(SnapshotId=snapshot, MaxResults=1000)
    assert len(blocks["Blocks"]) == 160
    assert not state.exists()
    assert cli("rmi", "-p", "aws", "big").code == 0


def test_run_list_logs_stop_delete(cli, aws_env: str, sparse: Path) -> None:
    planned = cli("run", "-p", "aws", "--dry-run", "-i", sparse, "web")
    assert planned.code == 0 and "would run instance web: t3.micro" in planned.out
    assert cli("instances", "-p", "aws", "-f", "value").out == ""
    result = cli("run", "-p", "aws", "-d", "-i", sparse, "web")
    assert result.code == 0, result.err
    rows = json.loads(cli("instances", "-p", "aws", "-f", "json").out)
    assert [(r["Name"], r["Status"]) for r in rows] == [("web", "running")]
    assert cli("logs", "-p", "aws", "web").code == 0
    assert cli("stop", "-p", "aws", "web").code == 0
    assert json.loads(cli("instances", "-p", "aws", "-f", "json").out)[0]["Status"] == "stopped"
    assert cli("delete", "-p", "aws", "web").code == 0
    assert cli("instances", "-p", "aws", "-f", "value").out == ""
    reservations = boto3.client("ec2").describe_instances(Filters=[
        {"Name": "tag:capstan:name", "Values": ["web"]}])["Reservations"]
    assert {i["State"]["Name"] for r in reservations for i in r["Instances"]} <= \
        {"terminated", "shutting-down"}
    assert cli("rmi", "-p", "aws", "web").code == 0


def test_import_snapshot_via_botocore_stubber(aws_env: str, s3: str, sparse: Path,
                                              capstan_root: Path) -> None:
    """ImportSnapshot is not in moto: S3 is real (moto), EC2 is a botocore Stubber."""
    aws = driver(capstan_root, aws_upload="s3", aws_bucket=s3)
    ec2 = aws.client("ec2")
    stub = Stubber(ec2)
    stub.add_response("import_snapshot", {"ImportTaskId": "import-snap-1"})
    stub.add_response("describe_import_snapshot_tasks", {"ImportSnapshotTasks": [{
        "ImportTaskId": "import-snap-1", "SnapshotTaskDetail": {"Status": "active"}}]})
    stub.add_response("describe_import_snapshot_tasks", {"ImportSnapshotTasks": [{
        "ImportTaskId": "import-snap-1",
        "SnapshotTaskDetail": {"Status": "completed", "SnapshotId": "snap-0123456789abcdef0"}}]})
    stub.add_response("create_tags", {})
    with stub, pytest.MonkeyPatch.context() as m:
        m.setattr("time.sleep", lambda _s: None)
        snapshot = aws.import_via_s3(sparse, "imp", "d" * 64)
    assert snapshot == "snap-0123456789abcdef0"
    stub.assert_no_pending_responses()
    assert boto3.client("s3").list_objects_v2(Bucket=s3).get("KeyCount", 0) == 0


def test_snapshot_error_state_is_cleaned_up(aws_env: str, capstan_root: Path) -> None:
    aws = driver(capstan_root)
    stub = Stubber(aws.client("ec2"))
    stub.add_response("describe_snapshots", {"Snapshots": [{
        "SnapshotId": "snap-1", "State": "error", "StateMessage": "disk fault"}]})
    stub.add_response("delete_snapshot", {}, {"SnapshotId": "snap-1"})
    with stub, pytest.raises(BackendError, match="snap-1 failed: disk fault \\(deleted\\)"):
        aws._wait_snapshot("snap-1")
    stub.assert_no_pending_responses()


def test_throttling_and_credentials_errors(aws_env: str, capstan_root: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    aws = driver(capstan_root)

    def throttled(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}},
                          "PutSnapshotBlock")

    with pytest.raises(RemoteError, match=r"kept throttling .* \(run the command again"):
        aws._call("put_snapshot_block", throttled)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    with pytest.raises(ConfigError, match="no AWS credentials"):
        driver(capstan_root).client("ec2")


def test_bad_cli_input(cli, aws_env: str, sparse: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [
        ({"AWS_DEFAULT_REGION": "mars-1"}, ("images", "-p", "aws"), 78, "unknown AWS region"),
        ({"CAPSTAN_AWS_UPLOAD": "carrier-pigeon"}, ("images", "-p", "aws"), 78,
         "aws_upload must be one of"),
        ({}, ("rmi", "-p", "aws", "nope"), 65, "no pycapstan AMI 'nope'"),
        ({}, ("run", "-p", "aws", "-i", sparse, "-f", "8080:80", "x"), 69, "port forwards"),
        ({}, ("images", "-p", "qemu"), 69, "does not support images"),
    ]
    expect_errors(cli, monkeypatch, cases)
    assert cli("instances", "-p", "aws", "-f", "value").out == ""


def record_ebs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """The EBS direct calls every AWS driver makes from now on: (operation, parameters)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    real = AwsDriver.client

    def client(self: AwsDriver, service: str) -> Any:
        made = service not in self._clients
        found = real(self, service)
        if made and service == "ebs":
            found.meta.events.register("provide-client-params.ebs", lambda params, model, **_:
                                       calls.append((model.name, dict(params))))
        return found

    monkeypatch.setattr(AwsDriver, "client", client)
    return calls


def raw_blocks(image: Path, tmp_path: Path) -> dict[int, bytes]:
    raw = tmp_path / "image.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    return dict(nonzero_blocks(raw))


def test_runs_of_one_image_upload_it_once(cli, aws_env: str, image: Path, capstan_root: Path,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          ) -> None:
    """Two runs with their own command lines: the image's blocks are sent once, each
    run's snapshot is a child of that base holding only block 0."""
    calls = record_ebs(monkeypatch)
    amis = {}
    for n in (1, 2):
        assert cli("run", "-p", "aws", "-d", "-i", image, "--env", f"FLEET_INDEX={n}",
                   f"web{n}").code == 0
        amis[n] = json.loads(cli("instances", "-p", "aws", "-f", "json").out)
    starts = [p for op, p in calls if op == "StartSnapshot"]
    (base,) = our_snapshots(image_facts(capstan_root, image).sha256)
    assert "ParentSnapshotId" not in starts[0]
    assert [p.get("ParentSnapshotId") for p in starts[1:]] == [base, base]
    puts = [p for op, p in calls if op == "PutSnapshotBlock"]
    to_base = [p["BlockIndex"] for p in puts if p["SnapshotId"] == base]
    want = raw_blocks(image, tmp_path)
    assert sorted(to_base) == sorted(want)  # each non-zero block once
    children = [p for p in puts if p["SnapshotId"] != base]
    assert [p["BlockIndex"] for p in children] == [0, 0]
    for n, put in zip((1, 2), children, strict=True):
        assert f"FLEET_INDEX={n}".encode() in put["BlockData"]
        assert put["BlockData"][1024:] == want[0][1024:]  # the rest of block 0 is the image's
    completes = [p["ChangedBlocksCount"] for op, p in calls if op == "CompleteSnapshot"]
    assert completes == [len(want), 1, 1]
    # the same command line again: its AMI is reused, nothing is sent
    before = len(calls)
    assert cli("run", "-p", "aws", "-d", "-i", image, "--env", "FLEET_INDEX=1", "again").code == 0
    assert len(calls) == before
    rows = json.loads(cli("images", "-p", "aws", "-f", "json").out)
    assert sorted(r["Name"] for r in rows) == ["web1", "web1", "web2"]  # base, two children
    for name in ("web1", "web2", "again"):
        assert cli("delete", "-p", "aws", name).code == 0
    for name in ("web1", "web2"):
        assert cli("rmi", "-p", "aws", name).code == 0
    ec2 = boto3.client("ec2")
    assert ec2.describe_images(Owners=["self"])["Images"] == []
    assert ec2.describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:capstan:managed", "Values": ["true"]}])["Snapshots"] == []


def test_instances_made_at_once_share_the_base(aws_env: str, image: Path, capstan_root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A fleet's instances are created in parallel: the base is still sent once."""
    from concurrent.futures import ThreadPoolExecutor

    from capstan.drivers.model import InstanceSpec

    calls = record_ebs(monkeypatch)
    aws = driver(capstan_root)
    own = image_facts(capstan_root, image).cmdline
    specs = [InstanceSpec(f"w{n}", image, cmdline=f"--env=FLEET_INDEX={n} {own}")
             for n in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(aws.create, specs))
    starts = [p for op, p in calls if op == "StartSnapshot"]
    (base,) = our_snapshots(image_facts(capstan_root, image).sha256)
    assert sorted(str(p.get("ParentSnapshotId")) for p in starts) == ["None"] + [base] * 4
    assert len({aws.load_record(s.name)["ami"] for s in specs}) == 4
    for s in specs:
        aws.delete(s.name)


def test_a_fleet_on_an_aws_host_uploads_its_image_once(cli, aws_env: str, image: Path,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       ) -> None:
    """``up`` of 3 instances of one image on an AWS host: one base, three children of one
    block each (every instance has its own FLEET_* command line); ``down`` ends them."""
    work = tmp_path / "fleet"
    work.mkdir()
    image.rename(work / "app.qcow2")
    (work / "capstan-fleet.yaml").write_text(
        "name: shop\nprivate_network: false\nhosts:\n  cloud: {driver: aws}\n"
        "services:\n  web: {image: app.qcow2, count: 3, host: cloud}\n")
    monkeypatch.chdir(work)
    calls = record_ebs(monkeypatch)
    result = cli("up", "-f", "json")
    assert result.code == 0, result.err + result.out
    starts = [p.get("ParentSnapshotId") for op, p in calls if op == "StartSnapshot"]
    assert starts.count(None) == 1 and len(set(starts)) == 2 and len(starts) == 4
    base = starts[1]
    children = [p for op, p in calls if op == "PutSnapshotBlock" and p["SnapshotId"] != base]
    assert [p["BlockIndex"] for p in children] == [0, 0, 0]
    assert len({p["SnapshotId"] for p in children}) == 3
    assert sorted(re.search(rb"FLEET_INDEX=(\d)", p["BlockData"])[1]  # type: ignore[index]
                  for p in children) == [b"1", b"2", b"3"]
    assert cli("down").code == 0
    assert json.loads(cli("instances", "-p", "aws", "-f", "json").out) == []


def test_a_killed_childs_snapshot_is_removed_by_the_next_run(aws_env: str, image: Path,
                                                             capstan_root: Path) -> None:
    """A run killed between its child snapshot and its AMI left a snapshot no listing
    shows: the next run of that command line deletes it (only ours, only that digest)."""
    from capstan.drivers.aws.child import child_digest
    from capstan.drivers.model import InstanceSpec

    aws = driver(capstan_root)
    own = image_facts(capstan_root, image).cmdline
    spec = InstanceSpec("w", image, cmdline=f"--env=FLEET_INDEX=7 {own}")
    digest = child_digest(aws.disks.delta(spec, BLOCK))
    ebs = boto3.client("ebs")
    tag = {"Key": "capstan:image-digest", "Value": digest}
    left = ebs.start_snapshot(VolumeSize=1, Tags=[{"Key": "capstan:managed", "Value": "true"},
                                                  tag])["SnapshotId"]
    foreign = ebs.start_snapshot(VolumeSize=1, Tags=[tag])["SnapshotId"]
    aws.create(spec)
    ids = {s["SnapshotId"] for s in boto3.client("ec2").describe_snapshots(
        OwnerIds=["self"])["Snapshots"]}
    assert left not in ids and foreign in ids
    assert our_snapshots(digest) and our_snapshots(digest) != [left]
    aws.delete("w")
