"""Remote repositories: a GitHub-shaped API and buckets over HTTP, S3 (moto) and files."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from capstan.image.loader import probe_loader_path

from conftest import expect_errors
from repo_server import Release, RepoServer
from repo_server import mpm as archive

pytestmark = pytest.mark.qemu

PROBE = probe_loader_path().read_bytes()


def manifest(name: str) -> bytes:
    """A package manifest as OSv publishes one."""
    return f"name: {name}\ntitle: {name}\nauthor: OSv\n".encode()


def mpm(name: str, payload: bytes = b"hello") -> bytes:
    """A small package archive in Capstan's format, with that manifest."""
    return archive(name, payload, manifest(name))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RepoServer]:
    with RepoServer() as srv:
        srv.state.releases = [
            Release("v0.58.0", {"osv.nginx.yaml": manifest("osv.nginx"),
                                "osv.nginx.mpm.x86_64": mpm("osv.nginx")}),
            Release("v0.57.0", {"osv-loader.qemu.x86_64": PROBE,
                                "osv.bootstrap.yaml": manifest("osv.bootstrap"),
                                "osv.bootstrap.mpm.x86_64": mpm("osv.bootstrap")}),
            Release("v0.54.0", {"osv-loader.qemu": b"old"}),
        ]
        monkeypatch.setenv("CAPSTAN_REPOSITORIES", "github")
        monkeypatch.setenv("CAPSTAN_GITHUB_API", f"{srv.url}/api")
        monkeypatch.setenv("CAPSTAN_GITHUB_REPO", "osv/test")
        yield srv


def show(cli, *args: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    result = cli(*args, "-f", "json")
    assert result.code == 0, result.err
    return dict(json.loads(result.out))


def test_pull_a_loader_from_every_release_page_compose_and_boot(cli, server: RepoServer,
                                                              app_tree: Path,
                                                              tmp_path: Path) -> None:
    pulled = show(cli, "pull", "osv-loader")
    assert pulled["Status"] == "downloaded" and "v0.57.0" in pulled["Source"]
    assert pulled["SHA256"] == hashlib.sha256(PROBE).hexdigest()
    assert server.state.hits["/api/repos/osv/test/releases"] >= 2  # page 2 was read
    assert show(cli, "pull", "osv-loader")["Status"] == "present"
    out = tmp_path / "app.qcow2"
    assert cli("compose", "-l", "osv-loader", "-o", out, app_tree).code == 0
    done = cli.program("run", "-i", out, "--rm", "pulled")
    assert "PROBE rofs-magic=ok" in done.stdout, done.stderr
    # a package app composed from pulled packages, on the pulled loader
    pkg = tmp_path / "pkg"
    (pkg / "meta").mkdir(parents=True)
    (pkg / "meta" / "package.yaml").write_text("name: app\ntitle: app\nauthor: me\n"
                                               "require: [osv.nginx]\n")
    (pkg / "meta" / "run.yaml").write_text("runtime: native\nconfig_set:\n  web:\n"
                                           "    bootcmd: /nginx.so\n")
    composed = tmp_path / "pkg.qcow2"
    result = cli("package", "compose", "-C", pkg, "-l", "osv-loader", "--pull-missing", "-o",
                 composed)
    assert result.code == 0, result.err
    files = cli("image", "ls", "-R", composed, "-f", "value", "-c", "Path").out.split()
    assert "/osv.bootstrap/data" in files and "/osv.nginx/data" in files
    done = cli.program("run", "-i", composed, "--rm", "pkgapp")
    assert "PROBE cmdline=[--rootfs=rofs runscript /run/web;]" in done.stdout, done.stderr
    images = json.loads(cli("images", "-f", "json").out)
    assert images[0]["Name"] == "osv-loader" and images[0]["SHA256"] == pulled["SHA256"]
    assert cli("rmi", "osv-loader").code == 0
    assert json.loads(cli("images", "-f", "json").out) == []


def test_release_selection_and_etag_cache(cli, server: RepoServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_RELEASE_TAG", "v0.54.0")  # no arch suffix back then
    assert show(cli, "pull", "osv-loader")["Source"].endswith("v0.54.0")
    assert cli("rmi", "osv-loader").code == 0
    monkeypatch.setenv("CAPSTAN_RELEASE_TAG", "latest")
    result = cli("pull", "osv-loader")
    assert result.code == 65 and "not available in GitHub osv/test (latest)" in result.err
    monkeypatch.setenv("CAPSTAN_RELEASE_TAG", "any")
    names = {r["Name"] for r in json.loads(cli("search", "osv", "-f", "json").out)}
    assert {"osv.nginx", "osv.bootstrap", "osv-loader"} <= names
    before = server.state.hits["304"]
    assert cli("package", "search", "nginx").code == 0
    assert server.state.hits["304"] > before  # revalidated, not downloaded again


def test_package_pull_records_digests(cli, server: RepoServer, capstan_root: Path) -> None:
    pulled = show(cli, "package", "pull", "osv.bootstrap")
    packages = capstan_root / "packages"
    assert (packages / "osv.bootstrap.mpm").read_bytes() == mpm("osv.bootstrap")
    assert (packages / "osv.bootstrap.yaml").read_text().startswith("name: osv.bootstrap\n")
    assert (packages / "osv.bootstrap.mpm.sha256").read_text().strip() == pulled["SHA256"]


def test_interrupted_download_resumes(cli, server: RepoServer, capstan_root: Path) -> None:
    big = mpm("osv.big", os.urandom(3 << 20))  # random: the archive stays about 3 MiB
    server.state.releases[0].assets.update({"osv.big.yaml": b"name: osv.big\n",
                                            "osv.big.mpm": big})
    server.state.cut_after["osv.big.mpm"] = (2 << 20) + 1000
    result = cli("package", "pull", "osv.big")
    assert result.code == 75 and "run the command again to resume" in result.err
    assert not (capstan_root / "packages" / "osv.big.mpm").exists()
    assert show(cli, "package", "pull", "osv.big")["Status"] == "downloaded"
    assert server.state.ranges == [f"bytes={2 << 20}-"]  # whole MiBs that arrived were kept
    assert (capstan_root / "packages" / "osv.big.mpm").read_bytes() == big


def test_corrupt_artifact_is_refused(cli, server: RepoServer, capstan_root: Path) -> None:
    server.state.releases[1].lie.add("osv-loader.qemu.x86_64")
    result = cli("pull", "osv-loader")
    published = hashlib.sha256(b"other bytes").hexdigest()
    assert result.code == 65 and "checksum mismatch" in result.err
    assert published in result.err and hashlib.sha256(PROBE).hexdigest() in result.err
    folder = capstan_root / "repository" / "osv-loader"
    assert not folder.exists() or [p.name for p in folder.iterdir()] == []


def test_concurrent_pulls_share_one_download(cli, server: RepoServer,
                                             capstan_root: Path) -> None:
    def pull(_: int) -> subprocess.CompletedProcess[str]:
        return cli.program("package", "pull", "osv.nginx")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(pull, range(8)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert server.state.hits["/dl/v0.58.0/osv.nginx.mpm.x86_64"] == 1
    packages = capstan_root / "packages"
    assert (packages / "osv.nginx.mpm").read_bytes() == mpm("osv.nginx")
    assert sorted(p.name for p in packages.iterdir() if not p.name.startswith(".")) == [
        "osv.nginx.mpm", "osv.nginx.mpm.sha256", "osv.nginx.yaml"]


def test_http_bucket_with_paged_listing(cli, server: RepoServer,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capstan_root: Path) -> None:
    packed = gzip.compress(PROBE, mtime=0)
    server.state.bucket = {
        "mike/probe/index.yaml": b"format_version: '1'\ndescription: a probe\n",
        "mike/probe/probe.qemu.gz": packed,
        "packages/osv.cli.yaml": b"name: osv.cli\n",
        "packages/osv.cli.mpm": mpm("osv.cli"),
    }
    monkeypatch.setenv("CAPSTAN_REPO_URL", f"{server.url}/bucket/")
    pulled = show(cli, "--s3", "pull", "--insecure", "mike/probe")  # the bucket has no digests
    assert (capstan_root / "repository" / "mike" / "probe" / "probe.qemu").read_bytes() == PROBE
    assert pulled["SHA256"] == hashlib.sha256(packed).hexdigest()
    assert pulled["Status"] == "downloaded (unverified)"
    index = capstan_root / "repository" / "mike" / "probe" / "index.yaml"
    assert "verified: false" in index.read_text()
    images = {r["Name"]: r for r in json.loads(cli("images", "-f", "json").out)}
    assert "mike/probe" in images
    assert show(cli, "--s3", "package", "pull", "--insecure", "osv.cli")["Status"] == \
        "downloaded (unverified)"
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", f"github,{server.url}/bucket/")
    kinds = {(r["Kind"], r["Name"]) for r in json.loads(cli("search", "-f", "json").out)}
    assert ("image", "mike/probe") in kinds and ("package", "osv.nginx") in kinds


def test_file_repository_push_and_pull(cli, tmp_path: Path, capstan_root: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    loader = tmp_path / "my-loader.raw"
    loader.write_bytes(PROBE)
    assert show(cli, "base", "import", str(loader), "--name", "me/loader")["Status"] == \
        "imported"
    mirror = tmp_path / "mirror"
    assert show(cli, "push", "me/loader", str(mirror))["Status"] == "pushed"
    pkg = tmp_path / "osv.tool.mpm"
    pkg.write_bytes(mpm("osv.tool"))
    pkg.with_suffix(".yaml").write_text("name: osv.tool\n")
    assert show(cli, "package", "push", str(pkg), mirror.as_uri())["Status"] == "pushed"
    assert (mirror / "packages" / "osv.tool.mpm.sha256").is_file()
    assert cli("rmi", "me/loader").code == 0
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", mirror.as_uri())
    assert show(cli, "pull", "me/loader")["Source"] == mirror.as_uri()
    assert show(cli, "package", "pull", "osv.tool")["Status"] == "downloaded"
    (mirror / "packages" / "osv.tool.mpm").write_bytes(b"tampered")
    result = cli("package", "pull", "--force", "osv.tool")
    assert result.code == 65 and "checksum mismatch" in result.err


def test_s3_bucket_through_boto3_and_anonymous_http(cli, s3: str, moto: str, tmp_path: Path,
                                                     capstan_root: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    loader = tmp_path / "l.raw"
    loader.write_bytes(PROBE)
    assert cli("base", "import", str(loader), "--name", "ci/loader").code == 0
    assert show(cli, "push", "ci/loader", f"s3://{s3}")["Status"] == "pushed"
    pkg = tmp_path / "osv.s3pkg.mpm"
    pkg.write_bytes(mpm("osv.s3pkg"))
    pkg.with_suffix(".yaml").write_text("name: osv.s3pkg\n")
    assert cli("package", "push", str(pkg), f"s3://{s3}").code == 0
    assert cli("rmi", "ci/loader").code == 0

    monkeypatch.setenv("CAPSTAN_REPOSITORIES", f"s3://{s3}")
    assert show(cli, "pull", "ci/loader")["SHA256"] == hashlib.sha256(PROBE).hexdigest()
    assert show(cli, "package", "pull", "osv.s3pkg")["Status"] == "downloaded"
    assert cli("rmi", "ci/loader").code == 0
    (capstan_root / "packages" / "osv.s3pkg.mpm").unlink()

    import boto3  # a public bucket: anyone may read its objects

    boto3.client("s3").put_bucket_policy(Bucket=s3, Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{s3}", f"arn:aws:s3:::{s3}/*"]}]}))
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", f"{moto}/{s3}/")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")  # plain anonymous HTTP, as for a public bucket
    assert show(cli, "pull", "ci/loader")["Status"] == "downloaded"
    assert show(cli, "package", "pull", "osv.s3pkg")["Status"] == "downloaded"


def test_bad_remote_input_leaves_the_repository_unchanged(cli, server: RepoServer,
                                                          capstan_root: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    cases = [
        ({}, ("package", "pull", "osv.nope"), 65, "package osv.nope is not available"),
        ({"CAPSTAN_REPOSITORIES": "http://127.0.0.1:1/"}, ("pull", "a/b"), 75,
         "cannot reach repository"),
        ({"CAPSTAN_GITHUB_API": "http://127.0.0.1:1"}, ("pull", "osv-loader"), 75,
         "cannot reach the GitHub API"),
        ({"CAPSTAN_REPOSITORIES": f"{server.url}/nowhere/"}, ("pull", "a/b"), 75,
         "answered HTTP 404"),
        ({"CAPSTAN_REPOSITORIES": "/no/such/dir"}, ("pull", "a/b"), 65,
         "no repository directory"),
        ({}, ("pull", "../escape"), 64, "invalid image name"),
    ]
    expect_errors(cli, monkeypatch, cases)
    server.state.corrupt_listing = True
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", f"{server.url}/bucket/")
    result = cli("pull", "a/b")
    assert result.code == 65 and "did not return an S3 bucket listing" in result.err
    server.state.corrupt_listing = False
    server.state.rate_limited = True
    monkeypatch.setenv("CAPSTAN_REPOSITORIES", "github")
    result = cli("pull", "osv-loader")
    assert result.code == 75 and "rate limit exceeded" in result.err and "GITHUB_TOKEN" in \
        result.err
    leftovers = [p for p in (capstan_root).rglob("*") if p.is_file()
                 and "cache" not in p.parts and not p.name.endswith(".lock")]
    assert leftovers == []
