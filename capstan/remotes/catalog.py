"""Remote repositories: OSv's GitHub releases and S3/HTTP/file buckets.

Layouts and asset names are Capstan's (see the reference, section 10). Every
listing is read whole (GitHub pages, S3 continuation tokens); GitHub answers
are cached with their ETag so a repeated command costs conditional requests.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode, urlparse

from capstan.core.config import Config
from capstan.core.errors import (
    CapstanError,
    InputError,
    NotFound,
    RemoteError,
    ToolMissing,
    UsageError,
)
from capstan.core.fs import atomic_output, atomic_write
from capstan.remotes.download import Artifact, reason, session

__all__ = ["BucketRemote", "Found", "GitHubRemote", "Remote", "host_arch", "remotes"]

_LINK_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


def host_arch() -> str:
    """``x86_64`` or ``aarch64``, as OSv names its release assets."""
    machine = platform.machine().lower()
    return "aarch64" if machine in ("aarch64", "arm64") else "x86_64"


@dataclass(frozen=True)
class Found:
    """What a remote holds for a name: the files to fetch, and where it was found."""

    files: tuple[Artifact, ...]
    source: str


class Remote(ABC):
    """One remote repository."""

    label: str

    @abstractmethod
    def package(self, name: str) -> Found | None:
        """``<name>.yaml`` and ``<name>.mpm``, or None."""

    @abstractmethod
    def image(self, name: str, platform: str) -> Found | None:
        """The image file (and ``index.yaml`` where there is one), or None."""

    @abstractmethod
    def names(self) -> Iterable[tuple[str, str]]:
        """(kind, name) of everything the remote offers: kind is image or package."""


class GitHubRemote(Remote):
    """Releases of a GitHub repository (OSv's by default)."""

    def __init__(self, api: str, repo: str, release: str, token: str | None,
                 cache: Path) -> None:
        self.api = api.rstrip("/")
        self.repo = repo
        self.release = release or "any"
        self.label = f"GitHub {repo} ({self.release})"
        self.cache = cache
        self.http = session(token)
        self._releases: list[dict[str, Any]] | None = None

    def _get(self, url: str) -> tuple[Any, str | None]:
        """JSON at *url* and its next-page link, with ETag revalidation."""
        import requests

        cached = self._cache().get(url)
        headers = {"Accept": "application/vnd.github+json"}
        if cached:
            headers["If-None-Match"] = cached["etag"]
        try:
            reply = self.http.get(url, headers=headers, timeout=(10, 30))
        except requests.RequestException as err:
            raise RemoteError(f"cannot reach the GitHub API at {self.api}: "
                              f"{reason(err)}") from err
        if reply.status_code == 304 and cached:
            return cached["body"], cached.get("next")
        if reply.status_code in (403, 429) and reply.headers.get("X-RateLimit-Remaining") == "0":
            raise RemoteError("GitHub API rate limit exceeded (resets at epoch "
                              f"{reply.headers.get('X-RateLimit-Reset', '?')}): set GITHUB_TOKEN "
                              "or github_token for 5,000 requests an hour")
        if reply.status_code == 404:
            raise NotFound(f"no such release or repository: {url}")
        if reply.status_code != 200:
            raise RemoteError(f"GitHub API {url} answered HTTP {reply.status_code}")
        try:
            body = reply.json()
        except ValueError as err:
            raise InputError(f"GitHub API {url} returned malformed JSON") from err
        match = _LINK_NEXT.search(reply.headers.get("Link", ""))
        nxt = match.group(1) if match else None
        if reply.headers.get("ETag"):
            self._store(url, {"etag": reply.headers["ETag"], "body": body, "next": nxt})
        return body, nxt

    def _cache(self) -> dict[str, Any]:
        try:
            data = json.loads((self.cache / "github.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _store(self, url: str, entry: dict[str, Any]) -> None:
        data = self._cache()
        data[url] = entry
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            atomic_write(self.cache / "github.json", json.dumps(data).encode())
        except CapstanError:
            pass  # the cache is optional

    def releases(self) -> list[dict[str, Any]]:
        """The selected releases, newest first (every page)."""
        if self._releases is None:
            base = f"{self.api}/repos/{self.repo}/releases"
            if self.release == "latest":
                self._releases = [self._get(f"{base}/latest")[0]]
            elif self.release != "any":
                self._releases = [self._get(f"{base}/tags/{self.release}")[0]]
            else:
                found: list[dict[str, Any]] = []
                url: str | None = f"{base}?{urlencode({'per_page': 100})}"
                while url:
                    page, url = self._get(url)
                    if not isinstance(page, list):
                        raise InputError(f"GitHub API {base} did not return a list of releases")
                    found += page
                self._releases = found
            for rel in self._releases:
                if not isinstance(rel, dict) or not isinstance(rel.get("assets"), list):
                    raise InputError(f"GitHub API {base}: a release without assets")
        return self._releases

    def _artifact(self, asset: dict[str, Any]) -> Artifact:
        digest = str(asset.get("digest") or "")
        return Artifact(asset["name"], asset["browser_download_url"], asset.get("size"),
                        digest.removeprefix("sha256:") if digest.startswith("sha256:") else None)

    def package(self, name: str) -> Found | None:
        for rel in self.releases():
            assets = {a["name"]: a for a in rel["assets"]}
            mpm = assets.get(f"{name}.mpm.{host_arch()}") or assets.get(f"{name}.mpm")
            if f"{name}.yaml" in assets and mpm:
                return Found((self._artifact(assets[f"{name}.yaml"]), self._artifact(mpm)),
                             f"{self.label} {rel.get('tag_name', '')}")
        return None

    def image(self, name: str, platform: str) -> Found | None:
        """Loaders: ``<name>.*qemu.<arch>*``, else an unsuffixed ``<name>.qemu``."""
        if "/" in name or platform != "qemu":
            return None
        for rel in self.releases():
            assets = rel["assets"]
            pick = next((a for a in assets if a["name"].startswith(f"{name}.")
                         and f"qemu.{host_arch()}" in a["name"]), None)
            pick = pick or next((a for a in assets if a["name"] in (f"{name}.qemu",
                                                                    f"{name}.qemu.gz")), None)
            if pick:
                return Found((self._artifact(pick),), f"{self.label} {rel.get('tag_name', '')}")
        return None

    def names(self) -> Iterable[tuple[str, str]]:
        seen = set()
        for rel in self.releases():
            for asset in rel["assets"]:
                n = asset["name"]
                if n.endswith(".yaml"):
                    seen.add(("package", n.removesuffix(".yaml")))
                elif ".qemu" in n:
                    seen.add(("image", n.split(".qemu")[0]))
        return sorted(seen)


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
            if reply.status_code != 200:
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
                if reply.status_code != 200:
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


def remotes(config: Config, s3: bool = False) -> list[Remote]:
    """The configured remotes, in order (``--s3``: the bucket at ``repo_url`` only)."""
    if s3:
        return [BucketRemote(config.repo_url)]
    order = [r.strip() for r in str(config.values.get("repositories") or "github").split(",")]
    found: list[Remote] = []
    for entry in filter(None, order):
        if entry == "github":
            token = config.values.get("github_token") or os.environ.get("GITHUB_TOKEN")
            found.append(GitHubRemote(str(config.values.get("github_api")
                                          or "https://api.github.com"),
                                      str(config.values.get("github_repo")
                                          or "cloudius-systems/osv"),
                                      str(config.release_tag), token or None,
                                      config.root / "cache" / "http"))
        elif entry in ("s3", "bucket"):
            found.append(BucketRemote(config.repo_url))
        else:
            found.append(BucketRemote(entry))
    return found
