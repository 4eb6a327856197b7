"""S3-style buckets as remote repositories: HTTP(S) listings, ``s3://`` and directories.

Layouts are Capstan's (see the reference, section 10). Every listing is read whole
(S3 continuation tokens); a ``<key>.sha256`` beside a file is its digest.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from capstan.core.errors import InputError, NotFound, RemoteError, ToolMissing, UsageError
from capstan.core.fs import atomic_output
from capstan.remotes.base import Found, Remote
from capstan.remotes.download import Artifact, reason, session

__all__ = ["BucketRemote"]


class BucketRemote(Remote):
    """An S3-style bucket: ``https://…/`` (listing XML), ``s3://bucket/prefix``, or a
    directory (``file:///…`` or a path)."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urlparse(url)
        self.scheme = parsed.scheme if parsed.scheme in ("http", "https", "s3") else "file"
        if self.scheme == "file":
            self.dir = Path(unquote(parsed.path) if parsed.scheme == "file" else url)
        elif self.scheme == "s3":
            self.bucket, self.prefix = parsed.netloc, parsed.path.lstrip("/")
        elif not url.endswith("/"):
            self.url = url + "/"
        self.label = url
        self._keys: set[str] | None = None
        self.http: Any = session() if self.scheme in ("http", "https") else None

    # -- listing --------------------------------------------------------------

    def keys(self) -> set[str]:
        """Every key of the bucket (all pages)."""
        if self._keys is None:
            if self.scheme == "file":
                if not self.dir.is_dir():
                    raise NotFound(f"no repository directory {self.dir}")
                self._keys = {p.relative_to(self.dir).as_posix()
                              for p in self.dir.rglob("*") if p.is_file()}
            elif self.scheme == "s3":
                self._keys = self._s3_keys()
            else:
                self._keys = self._http_keys()
        return self._keys

    def _http_keys(self) -> set[str]:
        import requests

        keys: set[str] = set()
        params: dict[str, str] = {"list-type": "2"}
        while True:
            try:
                reply = self.http.get(self.url, params=params, timeout=(10, 60))
            except requests.RequestException as err:
                raise RemoteError(f"cannot reach repository {self.url}: "
                                  f"{reason(err)}") from err
            if reply.status_code != HTTPStatus.OK:
                raise RemoteError(f"repository {self.url} answered HTTP {reply.status_code}")
            try:
                doc = ET.fromstring(reply.content)
            except ET.ParseError as err:
                raise InputError(f"repository {self.url} did not return an S3 bucket "
                                 f"listing: {err}") from err
            if _local(doc.tag) != "ListBucketResult":
                raise InputError(f"repository {self.url} did not return an S3 bucket listing "
                                 f"(got <{_local(doc.tag)}>)")
            page = [_text(c, "Key") for c in doc if _local(c.tag) == "Contents"]
            keys.update(k for k in page if k)
            if _text(doc, "IsTruncated") != "true":
                return keys
            token = _text(doc, "NextContinuationToken")
            if token:
                params = {"list-type": "2", "continuation-token": token}
            elif page:
                params = {"marker": _text(doc, "NextMarker") or max(page)}
            else:
                return keys

    def _s3_client(self) -> Any:
        try:
            import boto3
        except ImportError as err:
            raise ToolMissing("s3:// repositories need boto3: pip install "
                              "'pycapstan[aws]'") from err
        return boto3.client("s3")

    def _s3_keys(self) -> set[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self._s3_client().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix)
            keys = {o["Key"] for page in pages for o in page.get("Contents", [])}
        except (BotoCoreError, ClientError) as err:
            raise RemoteError(f"cannot list {self.url}: {err}") from err
        return {k[len(self.prefix):].lstrip("/") for k in keys}

    # -- artifacts ------------------------------------------------------------

    def artifact(self, key: str) -> Artifact:
        """The file *key*, with its digest when the bucket has ``<key>.sha256``."""
        digest = self._digest(key) if f"{key}.sha256" in self.keys() else None
        name = key.rsplit("/", 1)[-1]
        if self.scheme == "file":
            return Artifact(name, (self.dir / key).as_uri(), sha256=digest,
                            opener=lambda target: _copy(self.dir / key, target))
        if self.scheme == "s3":
            full = f"{self.prefix.rstrip('/')}/{key}" if self.prefix else key
            return Artifact(name, f"s3://{self.bucket}/{full}", sha256=digest,
                            opener=lambda target: self._s3_get(full, target))
        return Artifact(name, self.url + key, sha256=digest)

    def _digest(self, key: str) -> str:
        fd, name = tempfile.mkstemp(prefix="capstan-digest-")
        os.close(fd)
        target = Path(name)
        try:
            art = self.artifact(key + ".sha256")
            if art.opener:
                art.opener(target)
                text = target.read_text()
            else:
                import requests

                try:
                    reply = self.http.get(art.url, timeout=(10, 30))
                except requests.RequestException as err:
                    raise RemoteError(f"cannot fetch {art.url}: {reason(err)}") from err
                if reply.status_code != HTTPStatus.OK:
                    raise RemoteError(f"{art.url} answered HTTP {reply.status_code}")
                text = reply.text
        finally:
            target.unlink(missing_ok=True)
        digest = text.split()[0].lower() if text.split() else ""
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise InputError(f"{self.url}{key}.sha256 is not a SHA-256 digest")
        return digest

    def _s3_get(self, key: str, target: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._s3_client().download_file(self.bucket, key, str(target))
        except (BotoCoreError, ClientError) as err:
            raise RemoteError(f"cannot download s3://{self.bucket}/{key}: {err}") from err

    def package(self, name: str) -> Found | None:
        keys = self.keys()
        files = (f"packages/{name}.yaml", f"packages/{name}.mpm")
        if all(k in keys for k in files):
            return Found(tuple(self.artifact(k) for k in files), self.label)
        return None

    def image(self, name: str, platform: str) -> Found | None:
        keys = self.keys()
        base = name.rsplit("/", 1)[-1]
        for key in (f"{name}/{base}.{platform}.gz", f"{name}/{base}.{platform}"):
            if key in keys:
                index = f"{name}/index.yaml"
                extra = (self.artifact(index),) if index in keys else ()
                return Found((self.artifact(key), *extra), self.label)
        return None

    def names(self) -> Iterable[tuple[str, str]]:
        found = set()
        for key in self.keys():
            if key.startswith("packages/") and key.endswith(".yaml"):
                found.add(("package", key[len("packages/"):-len(".yaml")]))
            elif key.endswith("/index.yaml"):
                found.add(("image", key.rsplit("/", 1)[0]))
        return sorted(found)

    # -- publishing -----------------------------------------------------------

    def put(self, source: Path, key: str) -> None:
        """Upload *source* as *key*; readers see the old file or the whole new one."""
        if self.scheme == "file":
            target = self.dir / key
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(source, "rb") as src, atomic_output(target) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        elif self.scheme == "s3":
            from botocore.exceptions import BotoCoreError, ClientError

            full = f"{self.prefix.rstrip('/')}/{key}" if self.prefix else key
            try:  # an S3 PUT replaces an object atomically
                self._s3_client().upload_file(str(source), self.bucket, full)
            except (BotoCoreError, ClientError) as err:
                raise RemoteError(f"cannot upload to s3://{self.bucket}/{full}: {err}") from err
        else:
            raise UsageError(f"{self.url} is read-only over HTTP: push to an s3:// URL or "
                             "a directory")
        if self._keys is not None:
            self._keys.add(key)


def _copy(source: Path, target: Path) -> None:
    try:
        shutil.copyfile(source, target)
    except FileNotFoundError as err:
        raise NotFound(f"no such file in the repository: {source}") from err


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(el: ET.Element, name: str) -> str:
    for child in el:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return ""
