"""The AWS driver's connection: boto3 clients (the standard credential chain, adaptive
retries), AWS errors as ours, and the settings every part reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from capstan.core.config import Config
from capstan.core.errors import BackendError, ConfigError, NotFound, RemoteError, ToolMissing
from capstan.drivers.base import DiskPreparer
from capstan.drivers.cloud import CloudDriver

__all__ = ["DIGEST", "TAG", "AwsApi", "ours"]

TAG = "capstan:managed"
#: the tag holding the SHA-256 of the image (or disk) an AMI or snapshot was made of
DIGEST = "capstan:image-digest"


def ours(digest: str | None = None) -> list[dict[str, Any]]:
    """The EC2 ``Filters`` of what pycapstan made (of the image *digest*, when given)."""
    found: list[dict[str, Any]] = [{"Name": f"tag:{TAG}", "Values": ["true"]}]
    if digest is not None:
        found.append({"Name": f"tag:{DIGEST}", "Values": [digest]})
    return found


class AwsApi(CloudDriver):
    """AWS settings and clients, under the image store and the instances."""

    def __init__(self, config: Config, disks: DiskPreparer | None = None) -> None:
        super().__init__(config, disks)
        self.region = self.setting("aws_region") or None
        self.instance_type = self.setting("aws_instance_type")
        self.subnet = self.setting("aws_subnet") or None
        self.security_group = self.setting("aws_security_group") or None
        self.upload_mode = self.setting("aws_upload")
        self.bucket = self.setting("aws_bucket") or None
        self._clients: dict[str, Any] = {}
        self.jobs = 8
        self.bytes_sent = 0  # by the last EBS direct upload (for benchmarks)

    # -- clients --------------------------------------------------------------

    def client(self, service: str) -> Any:
        """A boto3 client (standard credential chain; region from config or profile)."""
        if service not in self._clients:
            try:
                import boto3
                from botocore.config import Config as BotoConfig
            except ImportError as err:
                raise ToolMissing("the aws driver needs boto3: pip install "
                                  "'pycapstan[aws]'") from err
            session = boto3.session.Session(region_name=self.region)
            region = session.region_name
            if not region:
                raise ConfigError("no AWS region: set aws_region, AWS_REGION or a profile's "
                                  "region")
            if region not in session.get_available_regions("ec2"):
                raise ConfigError(f"unknown AWS region '{region}'")
            if session.get_credentials() is None:
                raise ConfigError("no AWS credentials: run 'aws configure' or set "
                                  "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
            retries = {"mode": "adaptive", "max_attempts": 10}
            self._clients[service] = session.client(
                service, config=BotoConfig(retries=retries, max_pool_connections=self.jobs * 2))
        return self._clients[service]

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """*fn(**kwargs)* with AWS errors as ours (credentials, throttling, the rest)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(**kwargs)
        except NoCredentialsError as err:
            raise ConfigError("no AWS credentials: run 'aws configure' or set "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from err
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            message = err.response.get("Error", {}).get("Message", str(err))
            if "Throttl" in code or code == "RequestLimitExceeded":
                raise RemoteError(f"AWS kept throttling {what} after retries: {message} "
                                  "(run the command again to resume)") from err
            if code in ("AuthFailure", "UnrecognizedClientException", "InvalidClientTokenId"):
                raise ConfigError(f"AWS rejected the credentials: {message}") from err
            if code.endswith("NotFound") or code.endswith(".NotFound"):
                raise NotFound(f"{what}: {message}") from err
            raise BackendError(f"AWS {what}: {code}: {message}") from err
        except BotoCoreError as err:
            raise RemoteError(f"AWS {what}: {err}") from err

    def _tags(self, name: str, digest: str) -> list[dict[str, str]]:
        return [{"Key": TAG, "Value": "true"}, {"Key": "capstan:name", "Value": name},
                {"Key": DIGEST, "Value": digest}, {"Key": "Name", "Value": name}]
