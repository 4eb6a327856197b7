"""Instances' AMIs as children of one base snapshot per image and region.

An image's blocks are uploaded once per region (the base: an AMI and its snapshot tagged
with the image's digest, resumable as any EBS direct upload). Each instance's command
line changes a block or two near the start of the disk: its snapshot is started with
``ParentSnapshotId`` set to the base's and holds only those blocks, its AMI tagged with
a digest of the image and those blocks, so that the same command line reuses it. With
``aws_upload: s3`` (ImportSnapshot has no parent) each distinct disk is uploaded whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

from capstan.core.errors import BackendError, CapstanError, NotFound
from capstan.drivers.aws.ami import BLOCK, AmiStore
from capstan.drivers.aws.api import DIGEST, TAG, ours
from capstan.drivers.base import DiskDelta, InstanceSpec, UploadResult

__all__ = ["Base", "ChildAmis", "child_digest"]

_SNAPSHOT_ID = re.compile(r"snap-[0-9a-f]{8,17}")
_MAX_GIB = 65536  # the largest EBS snapshot (64 TiB)


def child_digest(delta: DiskDelta) -> str:
    """The digest an instance's AMI is tagged with: its image's and its changed blocks'."""
    text = delta.digest + "".join(f"\n{index}:{hashlib.sha256(data).hexdigest()}"
                                  for index, data in delta.blocks)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Base:
    """An image's AMI in a region and its completed snapshot (*size_gib* GiB)."""

    ami: str
    snapshot: str
    size_gib: int


def _tag(resource: dict[str, Any], key: str) -> str | None:
    tags = resource.get("Tags")
    found = [t.get("Value") for t in tags if isinstance(t, dict) and t.get("Key") == key] \
        if isinstance(tags, list) else []
    return found[0] if len(found) == 1 and isinstance(found[0], str) else None


def _completed_size(snap: dict[str, Any], digest: str) -> int | None:
    """The size in GiB of snapshot *snap* when it is ours, completed and tagged *digest*."""
    size, snapshot = snap.get("VolumeSize"), snap.get("SnapshotId")
    ok = (isinstance(snapshot, str) and _SNAPSHOT_ID.fullmatch(snapshot)
          and snap.get("State") == "completed" and _tag(snap, DIGEST) == digest
          and _tag(snap, TAG) == "true" and isinstance(size, int) and 0 < size <= _MAX_GIB)
    return size if ok else None


class ChildAmis(AmiStore):
    """The AWS image store making each instance's AMI a child of its image's base."""

    def upload_spec(self, spec: InstanceSpec) -> UploadResult:
        """*spec*'s AMI: its image's base (uploaded once per region), or a child of it
        holding the blocks *spec*'s command line changes."""
        if self.upload_mode != "ebs":  # ImportSnapshot: the whole disk, as any cloud
            return super().upload_spec(spec)
        delta = self.disks.delta(spec, BLOCK)
        base, made = self.base(delta, spec.name)
        if not delta.blocks:
            return UploadResult(base.ami, spec.name, delta.digest, reused=not made,
                                bytes_sent=self.bytes_sent if made else 0)
        digest = child_digest(delta)
        with self.upload_lock(digest):
            if existing := self.find_ami(digest):
                return UploadResult(existing, spec.name, digest, reused=True)
            self._drop_leftovers(digest)
            ami = self._child(base, delta, spec.name, digest)
        return UploadResult(ami, spec.name, digest, reused=False,
                            bytes_sent=len(delta.blocks) * BLOCK)

    def base(self, delta: DiskDelta, name: str) -> tuple[Base, bool]:
        """The base of *delta*'s image in this region, and whether it was made now."""
        with self.upload_lock(delta.digest):
            if found := self.find_base(delta.digest):
                return found, False
            self.make_ami(delta.image, name, delta.digest)
            if found := self.find_base(delta.digest):
                return found, True
        raise BackendError(f"AWS does not show the AMI just made of {delta.image} with a "
                           "completed snapshot")

    def find_base(self, digest: str) -> Base | None:
        """Our AMI tagged *digest* and a snapshot of ours tagged *digest*, completed
        (anything else found by the tags is passed over)."""
        ami = self.find_ami(digest)
        if not ami:
            return None
        found = self._call("describe_snapshots", self.client("ec2").describe_snapshots,
                           OwnerIds=["self"], Filters=[
                               *ours(digest), {"Name": "status", "Values": ["completed"]}],
                           )["Snapshots"]
        for snap in found if isinstance(found, list) else []:
            if isinstance(snap, dict) and (size := _completed_size(snap, digest)):
                return Base(ami, str(snap["SnapshotId"]), size)
        return None

    def _drop_leftovers(self, digest: str) -> None:
        """Delete our snapshots tagged *digest*, a child's with no AMI (its run killed
        between the snapshot and the AMI): unlisted, they could not be removed else."""
        ec2 = self.client("ec2")
        found = self._call("describe_snapshots", ec2.describe_snapshots, OwnerIds=["self"],
                           Filters=ours(digest))["Snapshots"]
        for snap in found if isinstance(found, list) else []:
            snapshot = snap.get("SnapshotId") if isinstance(snap, dict) else None
            if (isinstance(snapshot, str) and _SNAPSHOT_ID.fullmatch(snapshot)
                    and _tag(snap, DIGEST) == digest and _tag(snap, TAG) == "true"):
                with contextlib.suppress(NotFound):
                    self._call("delete_snapshot", ec2.delete_snapshot, SnapshotId=snapshot)

    def _child(self, base: Base, delta: DiskDelta, name: str, digest: str) -> str:
        """An AMI of a snapshot of *base* with *delta*'s blocks written over it; what
        was made is deleted again when a step fails."""
        ebs, ec2 = self.client("ebs"), self.client("ec2")
        reply = self._call("start_snapshot", ebs.start_snapshot,
                           ParentSnapshotId=base.snapshot, VolumeSize=base.size_gib,
                           Description=f"pycapstan {name} (child of {base.snapshot})",
                           Timeout=60, ClientToken=f"capstan-{digest[:48]}-{int(time.time())}",
                           Tags=self._tags(name, digest))
        snapshot = reply.get("SnapshotId")
        if not isinstance(snapshot, str) or not _SNAPSHOT_ID.fullmatch(snapshot):
            raise BackendError(f"AWS start_snapshot returned no snapshot id: {snapshot!r:.80}")
        try:
            for block in delta.blocks:
                self.put_block(ebs, snapshot, block)
            self._call("complete_snapshot", ebs.complete_snapshot, SnapshotId=snapshot,
                       ChangedBlocksCount=len(delta.blocks))
            self._wait_snapshot(snapshot)
            return self.register(snapshot, name, digest)
        except CapstanError:
            with contextlib.suppress(CapstanError):
                self._call("delete_snapshot", ec2.delete_snapshot, SnapshotId=snapshot)
            raise
