"""OSv's GitHub releases as a remote repository.

Asset names are Capstan's (see the reference, section 10). Every page of a listing is
read; answers are cached with their ETag so a repeated command costs conditional requests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from capstan.core.errors import CapstanError, InputError, NotFound, RemoteError
from capstan.core.fs import atomic_write
from capstan.remotes.base import Found, Remote, host_arch
from capstan.remotes.download import Artifact, reason, session

__all__ = ["GitHubRemote"]

_LINK_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


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
        if reply.status_code == HTTPStatus.NOT_MODIFIED and cached:
            return cached["body"], cached.get("next")
        if reply.status_code in (403, 429) and reply.headers.get("X-RateLimit-Remaining") == "0":
            raise RemoteError("GitHub API rate limit exceeded (resets at epoch "
                              f"{reply.headers.get('X-RateLimit-Reset', '?')}): set GITHUB_TOKEN "
                              "or github_token for 5,000 requests an hour")
        if reply.status_code == HTTPStatus.NOT_FOUND:
            raise NotFound(f"no such release or repository: {url}")
        if reply.status_code != HTTPStatus.OK:
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
        """Loaders: ``<name>.*qemu.<arch>*``, else an unsuffixed ``<name>.qemu``;
        kernels (platform ``kernel``): ``<name>*.elf.<arch>*``."""
        if "/" in name or platform not in ("qemu", "kernel"):
            return None
        for rel in self.releases():
            assets = rel["assets"]
            if platform == "kernel":
                pick = next((a for a in assets if a["name"].startswith(name)
                             and f".elf.{host_arch()}" in a["name"]), None)
            else:
                pick = self._loader(assets, name)
            if pick:
                return Found((self._artifact(pick),), f"{self.label} {rel.get('tag_name', '')}")
        return None

    @staticmethod
    def _loader(assets: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
        pick = next((a for a in assets if a["name"].startswith(f"{name}.")
                     and f"qemu.{host_arch()}" in a["name"]), None)
        return pick or next((a for a in assets if a["name"] in (f"{name}.qemu",
                                                                f"{name}.qemu.gz")), None)

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
