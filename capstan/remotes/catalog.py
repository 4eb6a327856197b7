"""The configured remote repositories: OSv's GitHub releases and S3/HTTP/file buckets."""

from __future__ import annotations

import os

from capstan.core.config import Config
from capstan.remotes.base import Found, Remote, host_arch
from capstan.remotes.bucket import BucketRemote
from capstan.remotes.github import GitHubRemote

__all__ = ["BucketRemote", "Found", "GitHubRemote", "Remote", "host_arch", "remotes"]


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
