"""Hostile AWS answers around the one upload per image and region: a base snapshot found
by its tags is used as an instance's parent only when it is ours, completed and of the
image's digest; a failed child leaves no snapshot behind (moto_server, answers rewritten
through botocore's event hooks)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from capstan.drivers.aws import AwsDriver
from capstan.services.disks import image_facts

from hostile_kit import Sandbox, check

pytestmark = pytest.mark.aws

DIGEST = "capstan:image-digest"
Handler = Callable[..., Any]


def hook(monkeypatch: pytest.MonkeyPatch, service: str, event: str, handler: Handler,
         ) -> list[tuple[str, dict[str, Any]]]:
    """Register *handler* for *event* on every *service* client the AWS driver makes;
    the EBS calls made, recorded."""
    calls: list[tuple[str, dict[str, Any]]] = []
    real = AwsDriver.client

    def client(self: AwsDriver, name: str) -> Any:
        made = name not in self._clients
        found = real(self, name)
        if made and name == service:
            found.meta.events.register(event, handler)
        if made and name == "ebs":
            found.meta.events.register("provide-client-params.ebs", lambda params, model, **_:
                                       calls.append((model.name, dict(params))))
        return found

    monkeypatch.setattr(AwsDriver, "client", client)
    return calls


def run(cli, image: Path, name: str, index: int):  # type: ignore[no-untyped-def]
    return cli("run", "-p", "aws", "-d", "-i", image, "--env", f"FLEET_INDEX={index}", name)


def base_of(image: Path, root: Path) -> str:
    (snapshot,) = [s["SnapshotId"] for s in boto3.client("ec2").describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": f"tag:{DIGEST}",
                                     "Values": [image_facts(root, image).sha256]}])["Snapshots"]]
    return str(snapshot)


def parents(calls: list[tuple[str, dict[str, Any]]]) -> list[str | None]:
    return [p.get("ParentSnapshotId") for op, p in calls if op == "StartSnapshot"]


def _pending(snap: dict[str, Any]) -> None:
    snap["State"] = "pending"


def _other_digest(snap: dict[str, Any]) -> None:
    snap["Tags"] = [t if t["Key"] != DIGEST else {"Key": DIGEST, "Value": "0" * 64}
                    for t in snap["Tags"]]


def _path_tag(snap: dict[str, Any]) -> None:
    snap["Tags"] = [t if t["Key"] != DIGEST else {"Key": DIGEST, "Value": "../../outside"}
                    for t in snap["Tags"]]


def _huge_tag(snap: dict[str, Any]) -> None:
    digest = next(t["Value"] for t in snap["Tags"] if t["Key"] == DIGEST)
    snap["Tags"] = [*snap["Tags"], {"Key": DIGEST, "Value": digest + "x" * (1 << 20)}]


def _path_id(snap: dict[str, Any]) -> None:
    snap["SnapshotId"] = "snap-../../outside/victim"


def _huge_size(snap: dict[str, Any]) -> None:
    snap["VolumeSize"] = 1 << 40


@pytest.mark.parametrize("spoof", [_pending, _other_digest, _path_tag, _huge_tag, _path_id,
                                   _huge_size])
def test_a_spoofed_base_is_never_a_parent(cli, aws_env: str, sandbox: Sandbox, image: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          spoof: Callable[[dict[str, Any]], None]) -> None:
    """The base found by its tags is described as not completed, of another digest, with
    a path or a huge value in its tags or id, or an impossible size: it is passed over and
    a base of the image's own blocks is uploaded again."""
    assert run(cli, image, "first", 1).code == 0
    old = base_of(image, sandbox.root)

    def rewrite(parsed: dict[str, Any], **_: Any) -> None:
        for snap in parsed.get("Snapshots", []):
            if snap.get("SnapshotId") == old:
                spoof(snap)

    calls = hook(monkeypatch, "ec2", "after-call.ec2.DescribeSnapshots", rewrite)
    result = run(cli, image, "second", 2)
    assert result.code == 0, result.err
    fresh = parents(calls)
    assert fresh[0] is None and fresh[1] not in (None, old)  # a new base, then its child
    assert "Traceback" not in result.err and len(result.err) < 4096
    assert not list(sandbox.root.rglob("*outside*"))


def test_an_injected_snapshot_is_not_taken_for_the_base(cli, aws_env: str, sandbox: Sandbox,
                                                       image: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing that adds a completed, well-tagged snapshot of a foreign form (an id
    holding a path, a tag repeated): ignored, the real base is the parent."""
    assert run(cli, image, "first", 1).code == 0
    old = base_of(image, sandbox.root)
    digest = image_facts(sandbox.root, image).sha256
    tags = [{"Key": "capstan:managed", "Value": "true"}, {"Key": DIGEST, "Value": digest}]
    fakes = [{"SnapshotId": "../../outside/victim", "State": "completed", "VolumeSize": 1,
              "Tags": tags},
             {"SnapshotId": "snap-0123456789abcdef0", "State": "completed", "VolumeSize": 1,
              "Tags": [*tags, {"Key": DIGEST, "Value": "f" * 64}]}]

    def inject(parsed: dict[str, Any], **_: Any) -> None:
        if "Snapshots" in parsed:
            parsed["Snapshots"][:0] = [dict(f) for f in fakes]

    calls = hook(monkeypatch, "ec2", "after-call.ec2.DescribeSnapshots", inject)
    assert run(cli, image, "second", 2).code == 0
    assert parents(calls) == [old]


def _error(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
    return (AWSResponse("http://moto/", 500, {}, None),
            {"Error": {"Code": "InternalError", "Message": "disk on fire"},
             "ResponseMetadata": {}})


def test_a_failed_child_leaves_no_snapshot(cli, aws_env: str, sandbox: Sandbox, image: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """PutSnapshotBlock of the instance's block fails: one line, exit 69, the child
    snapshot deleted, no AMI or record left; the base stays for the next run."""
    assert run(cli, image, "first", 1).code == 0
    old = base_of(image, sandbox.root)
    hook(monkeypatch, "ebs", "before-call.ebs.PutSnapshotBlock", _error)
    check(run(cli, image, "second", 2), 69, "disk on fire")
    ours = boto3.client("ec2").describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:capstan:managed", "Values": ["true"]}])["Snapshots"]
    named = {s["SnapshotId"]: {t["Key"]: t["Value"] for t in s["Tags"]}["capstan:name"]
             for s in ours}
    assert old in named and sorted(named.values()) == ["first", "first"]  # base, child
    names = [r["Name"] for r in json.loads(cli("images", "-p", "aws", "-f", "json").out)]
    assert sorted(names) == ["first", "first"]
    assert not (sandbox.root / "instances" / "aws" / "second").exists()


def test_a_start_snapshot_reply_without_an_id(cli, aws_env: str, sandbox: Sandbox,
                                              image: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """StartSnapshot answers with a path for the child's id: refused before it is used."""
    assert run(cli, image, "first", 1).code == 0

    def spoof(parsed: dict[str, Any], **_: Any) -> None:
        parsed["SnapshotId"] = "../../outside/victim"

    calls = hook(monkeypatch, "ebs", "after-call.ebs.StartSnapshot", spoof)
    check(run(cli, image, "second", 2), 69, "returned no snapshot id")
    assert [op for op, _ in calls] == ["StartSnapshot"]
