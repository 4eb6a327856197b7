"""EC2 instances from AMIs made of pycapstan images (``-p aws``)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capstan.core.config import Config
from capstan.core.errors import NotFound
from capstan.drivers.aws.api import TAG
from capstan.drivers.aws.child import ChildAmis
from capstan.drivers.base import (
    Finding,
    Instance,
    InstanceSpec,
    InstanceState,
    Setting,
    Status,
)

__all__ = ["AwsDriver"]

#: EC2 instance states (a terminated instance is not mapped: it is gone)
_STATES = {"pending": InstanceState.STARTING, "running": InstanceState.RUNNING,
           "stopping": InstanceState.STOPPING, "stopped": InstanceState.STOPPED,
           "shutting-down": InstanceState.STOPPING}


class AwsDriver(ChildAmis):
    """EC2 instances from AMIs made of pycapstan images (``-p aws``)."""

    name = "aws"
    settings = (
        Setting("aws_region", help="empty: AWS_REGION or the profile's region"),
        Setting("aws_instance_type", default="t3.micro", help="EC2 instance type"),
        Setting("aws_subnet", help="empty: the default VPC's"),
        Setting("aws_security_group", help="empty: the default group"),
        Setting("aws_upload", default="ebs", choices=("ebs", "s3"),
                help="ebs (EBS direct, zero blocks skipped) or s3 (+ ImportSnapshot)"),
        Setting("aws_bucket", help="the S3 bucket for aws_upload: s3"),
    )

    @classmethod
    def doctor(cls, config: Config) -> Sequence[Finding]:
        if missing := cls.missing_library("boto3", "boto3"):
            return missing
        home = Path.home() / ".aws"
        sources = [name for name, present in (
            ("environment", "AWS_ACCESS_KEY_ID" in os.environ),
            ("profile " + os.environ.get("AWS_PROFILE", ""), "AWS_PROFILE" in os.environ),
            (str(home / "credentials"), (home / "credentials").is_file()),
            (str(home / "config"), (home / "config").is_file()),
        ) if present]
        if not sources:
            return [Finding("aws", Status.WARN, "boto3 found, no AWS credentials configured",
                            "aws configure, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")]
        return [Finding("aws", Status.OK, "credentials from " + ", ".join(sources))]

    name_pattern = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,254}")
    name_rule = ("letters, digits, '.', '_', '+' and '-', starting with a letter or digit, "
                 "at most 255 characters")
    image_key, source_key = "ami", "image"

    # -- instances -------------------------------------------------------------

    def dry_run(self, spec: InstanceSpec) -> Sequence[str]:
        """What create and start would do, without calling AWS to change anything."""
        once = ("as an EBS snapshot (EBS direct), skipping zero blocks, once per region; "
                "then the blocks its command line changes as a child snapshot"
                if self.upload_mode == "ebs" else "through S3 and ImportSnapshot")
        return [f"upload {spec.image} {once}, unless an AMI of the same bytes exists",
                "register an AMI (x86_64, HVM, ENA), tagged capstan:managed",
                f"run instance {spec.name}: {self.instance_type}, subnet "
                f"{self.subnet or 'default'}, security group {self.security_group or 'default'}"]

    def plan(self, spec: InstanceSpec) -> dict[str, Any]:
        return {"instance": None}

    def start(self, name: str) -> Instance:
        data = self.load_record(name)
        ec2 = self.client("ec2")
        if data.get("instance"):
            self._call("start_instances", ec2.start_instances,
                       InstanceIds=[data["instance"]])
            return self.get(name)
        tags = [{"Key": TAG, "Value": "true"}, {"Key": "capstan:name", "Value": name},
                {"Key": "Name", "Value": name}]
        kwargs: dict[str, Any] = {
            "ImageId": data["ami"], "InstanceType": self.instance_type, "MinCount": 1,
            "MaxCount": 1, "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}]}
        if self.subnet:
            kwargs["SubnetId"] = self.subnet
        if self.security_group:
            kwargs["SecurityGroupIds"] = [self.security_group]
        reply = self._call("run_instances", ec2.run_instances, **kwargs)
        data["instance"] = reply["Instances"][0]["InstanceId"]
        self.save_record(name, data)
        return self.get(name)

    def _describe(self, instance_id: str) -> dict[str, Any]:
        found = self._call("describe_instances", self.client("ec2").describe_instances,
                           InstanceIds=[instance_id])
        for reservation in found["Reservations"]:
            for inst in reservation["Instances"]:
                return dict(inst)
        raise NotFound(f"EC2 instance {instance_id} is gone")

    def stop(self, name: str, timeout: float = 30) -> Instance:
        data = self.load_record(name)
        if data.get("instance"):
            self._call("stop_instances", self.client("ec2").stop_instances,
                       InstanceIds=[data["instance"]])
        return self.get(name)

    def delete(self, name: str) -> None:
        data = self.load_record(name)
        if data.get("instance"):
            with contextlib.suppress(NotFound):
                self._call("terminate_instances", self.client("ec2").terminate_instances,
                           InstanceIds=[data["instance"]])
        self.drop_record(name)

    def get(self, name: str) -> Instance:
        data = self.load_record(name)
        state = InstanceState.STOPPED
        extra: dict[str, Any] = {"ami": data["ami"]}
        if data.get("instance"):
            inst = self._describe(data["instance"])
            state = _STATES.get(inst["State"]["Name"], InstanceState.UNKNOWN)
            extra.update(instance=data["instance"], ip=inst.get("PublicIpAddress", ""),
                         type=inst.get("InstanceType", ""))
        return Instance(name, self.name, state, data.get("image", ""),
                        ports=tuple(filter(None, [extra.get("ip", "")])), extra=extra)

    def read_log(self, name: str) -> bytes:
        """The instance's console output (EC2 keeps the last 64 KiB)."""
        data = self.load_record(name)
        if not data.get("instance"):
            return b""
        reply = self._call("get_console_output", self.client("ec2").get_console_output,
                           InstanceId=data["instance"])
        return str(reply.get("Output", "")).encode()
