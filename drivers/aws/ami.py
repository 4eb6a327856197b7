"""AMIs made of pycapstan images: an EBS direct snapshot of the raw disk (zero blocks
skipped, resumable) or an S3 upload and ImportSnapshot, registered and tagged with
the image's digest so that the same bytes reuse the same AMI."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from capstan.core import proc
from capstan.core.errors import (
    BackendError,
    CapstanError,
    ConfigError,
    GuestTimeout,
    ImageError,
    NotFound,
)
from capstan.core.fs import atomic_write
from capstan.drivers.aws.api import DIGEST, TAG, AwsApi, ours
from capstan.drivers.base import StoredImage, UploadResult

LOG = logging.getLogger(__name__)

__all__ = ["BLOCK", "AmiStore", "image_drivers", "nonzero_blocks"]

BLOCK = 512 * 1024
_SAVE_EVERY = 16  # blocks between saves of an upload's progress
_NITRO = ("a1", "c5", "c6", "c7", "m5", "m6", "m7", "r5", "r6", "r7", "t3", "t4", "z1", "x2")


def nonzero_blocks(raw: Path) -> Iterator[tuple[int, bytes]]:
    """(index, data) of every 512 KiB block of *raw* that is not all zeros."""
    zero = bytes(BLOCK)
    with open(raw, "rb") as f:
        index = 0
        while data := f.read(BLOCK):
            if data != zero[:len(data)]:
                yield index, data.ljust(BLOCK, b"\0")
            index += 1


def image_drivers(raw: Path) -> set[str]:
    """Storage and network drivers the image's kernel names (a heuristic scan)."""
    markers = {"nvme": b"nvme", "ena": b"ena:", "xen": b"xen", "virtio": b"virtio"}
    with open(raw, "rb") as f:
        head = f.read(64 << 20)
    return {name for name, marker in markers.items() if marker in head}


@dataclass
class _BlockUpload:
    """The progress of one EBS direct upload, saved so that an interrupted one resumes."""

    state_file: Path
    snapshot: str
    done: set[int]
    progress: Callable[..., None] | None
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_file, json.dumps({"snapshot": self.snapshot,
                                                  "done": sorted(self.done)}).encode())

    def sent_block(self, index: int, size: int) -> None:
        """Record block *index* (*size* bytes) as sent; saved every 16 blocks."""
        with self.lock:
            self.done.add(index)
            self.sent += size
            if len(self.done) % _SAVE_EVERY == 0:
                self.save()
        if self.progress:
            self.progress(size)


class AmiStore(AwsApi):
    """The AWS driver as an image store of AMIs."""

    def find_ami(self, digest: str) -> str | None:
        """Our AMI made from an image with SHA-256 *digest*, if there is one."""
        images = self._call("describe_images", self.client("ec2").describe_images,
                            Owners=["self"], Filters=ours(digest))
        ready = [i for i in images["Images"] if i.get("State", "available") == "available"]
        return str(ready[0]["ImageId"]) if ready else None

    def upload(self, image: Path, name: str, progress: Callable[..., None] | None = None,
               ) -> UploadResult:
        """Make an AMI of *image* (reusing one made of the same bytes)."""
        digest = self.disks.facts(image).sha256
        existing = self.find_ami(digest)
        if existing:
            return UploadResult(existing, name, digest, reused=True)
        return self.make_ami(image, name, digest, progress)

    def make_ami(self, image: Path, name: str, digest: str,
                 progress: Callable[..., None] | None = None) -> UploadResult:
        """A new AMI of *image* (SHA-256 *digest*), its snapshot made in full (an EBS
        direct upload resumes one that was interrupted)."""
        with tempfile.TemporaryDirectory(prefix="capstan-aws-") as tmp:
            raw = Path(tmp) / "disk.raw"
            proc.run(["qemu-img", "convert", "-q", "-O", "raw", str(image), str(raw)])
            if self.disks.facts(image).sha256 != digest:  # replaced since its digest
                raise ImageError(f"image {image} changed while it was read: not uploaded "
                                 "(run again)")
            self.warn_drivers(raw)
            if self.upload_mode == "s3":
                snapshot = self.import_via_s3(raw, name, digest)
            else:
                from capstan.remotes.download import progress_bar

                bar = progress or progress_bar(None, f"snapshot of {name}")
                snapshot = self.snapshot_ebs_direct(raw, name, digest, bar)
                if progress is None:
                    bar(0, done=True)
        return UploadResult(self.register(snapshot, name, digest), name, digest, reused=False,
                            bytes_sent=self.bytes_sent)

    def warn_drivers(self, raw: Path) -> None:
        """Warn when the instance type needs drivers the image's kernel lacks."""
        family = self.instance_type.split(".")[0]
        found = image_drivers(raw)
        if family.startswith(_NITRO) and not {"nvme", "ena"} <= found:
            LOG.warning("instance type %s is a Nitro type (NVMe disks, ENA network) but the "
                        "image's kernel names %s: it may not boot or reach the network",
                        self.instance_type, ", ".join(sorted(found)) or "neither")

    def snapshot_ebs_direct(self, raw: Path, name: str, digest: str,
                            progress: Callable[..., None] | None = None) -> str:
        """An EBS snapshot of *raw* through the EBS direct APIs; resumable."""
        ebs = self.client("ebs")
        state_file = self.config.root / "cache" / "aws" / f"{digest}.json"
        snapshot, done = self._ebs_snapshot(ebs, raw, name, digest, _load_json(state_file))
        upload = _BlockUpload(state_file, snapshot, done, progress)
        upload.save()

        def put(block: tuple[int, bytes]) -> None:
            self.put_block(ebs, snapshot, block)
            upload.sent_block(block[0], len(block[1]))

        try:
            total = self._send_blocks(raw, upload, put)
        finally:
            upload.save()
        self._call("complete_snapshot", ebs.complete_snapshot, SnapshotId=snapshot,
                   ChangedBlocksCount=total)
        self._wait_snapshot(snapshot)
        state_file.unlink(missing_ok=True)
        self.bytes_sent = upload.sent
        return str(snapshot)

    def put_block(self, ebs: Any, snapshot: str, block: tuple[int, bytes]) -> None:
        """PutSnapshotBlock of *block* (index, 512 KiB) into *snapshot*, checksummed."""
        index, data = block
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        self._call("put_snapshot_block", ebs.put_snapshot_block, SnapshotId=snapshot,
                   BlockIndex=index, BlockData=data, DataLength=len(data),
                   Checksum=checksum, ChecksumAlgorithm="SHA256")

    def _ebs_snapshot(self, ebs: Any, raw: Path, name: str, digest: str,
                      state: dict[str, Any]) -> tuple[str, set[int]]:
        """The snapshot to upload into, and the blocks it already holds: the unfinished
        one of *state* when it can go on, else a new one."""
        snapshot = state.get("snapshot")
        if snapshot and self._resumable(snapshot):
            return str(snapshot), set(state.get("done", []))
        size_gib = max(1, -(-raw.stat().st_size // (1 << 30)))
        reply = self._call("start_snapshot", ebs.start_snapshot, VolumeSize=size_gib,
                           Description=f"pycapstan {name}", Timeout=60,
                           ClientToken=f"capstan-{digest[:48]}-{int(time.time())}",
                           Tags=self._tags(name, digest))
        return str(reply["SnapshotId"]), set()

    def _send_blocks(self, raw: Path, upload: _BlockUpload,
                     put: Callable[[tuple[int, bytes]], None]) -> int:
        """*put* each non-zero block of *raw* not sent yet, *jobs* at a time; how many
        non-zero blocks *raw* has (sent now or before an interruption)."""
        total = 0
        with ThreadPoolExecutor(self.jobs) as pool:
            # bounded: at most 2 * jobs blocks in memory
            pending: list[Any] = []
            for block in nonzero_blocks(raw):
                total += 1
                if block[0] in upload.done:
                    continue
                pending.append(pool.submit(put, block))
                if len(pending) >= 2 * self.jobs:
                    pending.pop(0).result()
            for future in pending:
                future.result()
        return total

    def _resumable(self, snapshot: str) -> bool:
        """Whether an upload we left unfinished can go on: the snapshot still exists and
        has not failed (AWS says pending; some simulators already say completed)."""
        try:
            found = self._call("describe_snapshots", self.client("ec2").describe_snapshots,
                               SnapshotIds=[snapshot])["Snapshots"]
        except (NotFound, BackendError):
            return False
        return bool(found) and found[0].get("State") in ("pending", "completed")

    def _wait_snapshot(self, snapshot: str, timeout: float = 1800) -> None:
        ec2 = self.client("ec2")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self._call("describe_snapshots", ec2.describe_snapshots,
                              SnapshotIds=[snapshot])["Snapshots"][0]
            if snap.get("State") == "completed":
                return
            if snap.get("State") == "error":
                with contextlib.suppress(CapstanError):
                    self._call("delete_snapshot", ec2.delete_snapshot, SnapshotId=snapshot)
                raise BackendError(f"snapshot {snapshot} failed: "
                                   f"{snap.get('StateMessage', 'error state')} (deleted)")
            time.sleep(2)
        raise GuestTimeout(f"snapshot {snapshot} did not complete within {timeout:.0f} s")

    def import_via_s3(self, raw: Path, name: str, digest: str) -> str:
        """The fallback: multipart upload to S3, then ImportSnapshot, polled."""
        if not self.bucket:
            raise ConfigError("aws_upload is s3 but aws_bucket is not set")
        key = f"capstan/{digest}.raw"
        s3, ec2 = self.client("s3"), self.client("ec2")
        self._call("upload to S3", s3.upload_file, Filename=str(raw), Bucket=self.bucket,
                   Key=key, ExtraArgs={"Tagging": urlencode({TAG: "true", "capstan:name": name})})
        try:
            task = self._call("import_snapshot", ec2.import_snapshot,
                              Description=f"pycapstan {name}",
                              DiskContainer={"Format": "RAW", "UserBucket": {
                                  "S3Bucket": self.bucket, "S3Key": key}},
                              TagSpecifications=[{"ResourceType": "import-snapshot-task",
                                                  "Tags": self._tags(name, digest)}])
            task_id = task["ImportTaskId"]
            while True:
                detail = self._call("describe_import_snapshot_tasks",
                                    ec2.describe_import_snapshot_tasks,
                                    ImportTaskIds=[task_id])["ImportSnapshotTasks"][0][
                                        "SnapshotTaskDetail"]
                status = detail.get("Status")
                if status == "completed":
                    snapshot = str(detail["SnapshotId"])
                    self._call("create_tags", ec2.create_tags, Resources=[snapshot],
                               Tags=self._tags(name, digest))
                    return snapshot
                if status in ("deleted", "deleting", "error"):
                    raise BackendError(f"ImportSnapshot {task_id} failed: "
                                       f"{detail.get('StatusMessage', status)}")
                time.sleep(5)
        finally:
            with contextlib.suppress(CapstanError):
                self._call("delete S3 object", s3.delete_object, Bucket=self.bucket, Key=key)

    def register(self, snapshot: str, name: str, digest: str) -> str:
        """RegisterImage of *snapshot* (x86_64, HVM, BIOS, ENA), tagged as ours."""
        ec2 = self.client("ec2")
        ami_name = f"{name.replace('+', '-')}-{digest[:12]}"  # AWS takes no + in AMI names
        reply = self._call(
            "register_image", ec2.register_image, Name=ami_name,
            Description=f"pycapstan image {name}", Architecture="x86_64",
            VirtualizationType="hvm", RootDeviceName="/dev/xvda", BootMode="legacy-bios",
            EnaSupport=True, SriovNetSupport="simple",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {
                "SnapshotId": snapshot, "DeleteOnTermination": True, "VolumeType": "gp3"}}],
            TagSpecifications=[{"ResourceType": "image", "Tags": self._tags(name, digest)}])
        ami = str(reply["ImageId"])
        # Again explicitly: some endpoints (and simulators) drop RegisterImage's tags.
        self._call("create_tags", ec2.create_tags, Resources=[ami],
                   Tags=self._tags(name, digest))
        return ami

    def images(self) -> list[StoredImage]:
        """Our AMIs (their detail: the snapshots)."""
        found = self._call("describe_images", self.client("ec2").describe_images,
                           Owners=["self"], Filters=ours())
        rows = []
        for image in found["Images"]:
            tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
            snaps = [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", [])
                     if "Ebs" in m and "SnapshotId" in m["Ebs"]]
            rows.append(StoredImage(image["ImageId"], tags.get("capstan:name", ""),
                                    tags.get(DIGEST, ""), ",".join(snaps),
                                    image.get("CreationDate", "")))
        return sorted(rows, key=lambda r: r.created)

    def remove_image(self, ref: str) -> None:
        """Deregister our AMI *ref* (id or name) and delete its snapshots."""
        ec2 = self.client("ec2")
        matches = [i for i in self.images() if ref in (i.id, i.name)]
        if not matches:
            raise NotFound(f"no pycapstan AMI '{ref}' in {self.client('ec2').meta.region_name}")
        for image in matches:
            self._call("deregister_image", ec2.deregister_image, ImageId=image.id)
            tagged = self._call("describe_snapshots", ec2.describe_snapshots,
                                OwnerIds=["self"],
                                Filters=ours(image.digest or "-"))["Snapshots"]
            snapshots = set(filter(None, image.detail.split(",")))
            for snap in snapshots | {t["SnapshotId"] for t in tagged}:
                with contextlib.suppress(NotFound):
                    self._call("delete_snapshot", ec2.delete_snapshot, SnapshotId=snap)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
