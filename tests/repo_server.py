"""A local HTTP server shaped like GitHub's release API and an S3 bucket listing.

Files are served with Range support; faults can be injected: cut a body after
some bytes, hold a body after some bytes until released (a client is then
mid-download at a known point), answer the API with a rate-limit error,
corrupt a listing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse
from xml.sax.saxutils import escape


@dataclass
class Release:
    tag: str
    assets: dict[str, bytes]
    digests: bool = True
    lie: set[str] = field(default_factory=set)  # assets whose published digest is wrong


@dataclass
class State:
    releases: list[Release] = field(default_factory=list)  # newest first
    bucket: dict[str, bytes] = field(default_factory=dict)
    page_size: int = 1  # releases per API page and keys per listing page
    cut_after: dict[str, int] = field(default_factory=dict)  # file -> bytes, once
    corrupt_listing: bool = False
    rate_limited: bool = False
    hold_after: dict[str, int] = field(default_factory=dict)  # file -> bytes, then wait
    held: threading.Event = field(default_factory=threading.Event)  # set while holding
    release: threading.Event = field(default_factory=threading.Event)  # ends the hold
    hits: Counter[str] = field(default_factory=Counter)
    ranges: list[str] = field(default_factory=list)


def mpm(name: str, payload: bytes = b"hello", manifest: bytes | None = None) -> bytes:
    """A small package archive in Capstan's format (*manifest*: its package.yaml, by
    default only the name)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for path, data in (("/meta/package.yaml", manifest or f"name: {name}\n".encode()),
                           (f"/{name}/data", payload)):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    """Serves the :class:`State` its server holds (set by :class:`RepoServer`)."""

    protocol_version = "HTTP/1.1"

    @property
    def state(self) -> State:
        return self.server.state  # type: ignore[attr-defined, no-any-return]

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        self.state.hits[url.path] += 1
        if url.path.startswith("/api/"):
            return self.api(url.path[len("/api"):], parse_qs(url.query))
        if url.path.startswith("/dl/"):
            _, _, tag, name = url.path.split("/", 3)
            rel = next((r for r in self.state.releases if r.tag == tag), None)
            data = rel.assets.get(name) if rel else None
            return self.file(name, data)
        if url.path == "/bucket/":
            return self.listing(parse_qs(url.query))
        if url.path.startswith("/bucket/"):
            key = url.path[len("/bucket/"):]
            return self.file(key, self.state.bucket.get(key))
        self.reply(404, b"not found")

    def reply(self, code: int, body: bytes, headers: dict[str, str] | None = None,
              ) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def api(self, path: str, query: dict[str, list[str]]) -> None:
        if self.state.rate_limited:
            return self.reply(403, b'{"message": "API rate limit exceeded"}',
                              {"X-RateLimit-Remaining": "0",
                               "X-RateLimit-Reset": "1900000000"})
        base = "/repos/osv/test/releases"
        host = f"http://{self.headers['Host']}"
        if path == base:
            page = int(query.get("page", ["1"])[0])
            size = self.state.page_size
            chunk = self.state.releases[(page - 1) * size:page * size]
            headers = {}
            if page * size < len(self.state.releases):
                headers["Link"] = (f'<{host}/api{base}?per_page=100&page={page + 1}>; '
                                   'rel="next"')
            return self.json([self.release(r, host) for r in chunk], headers)
        if path == f"{base}/latest" and self.state.releases:
            return self.json(self.release(self.state.releases[0], host))
        if path.startswith(f"{base}/tags/"):
            tag = path.rsplit("/", 1)[1]
            rel = next((r for r in self.state.releases if r.tag == tag), None)
            if rel:
                return self.json(self.release(rel, host))
        self.reply(404, b'{"message": "Not Found"}')

    def release(self, rel: Release, host: str) -> dict[str, object]:
        assets = []
        for name, data in rel.assets.items():
            asset: dict[str, object] = {
                "name": name, "size": len(data),
                "browser_download_url": f"{host}/dl/{rel.tag}/{name}"}
            if rel.digests:
                published = b"other bytes" if name in rel.lie else data
                asset["digest"] = "sha256:" + hashlib.sha256(published).hexdigest()
            assets.append(asset)
        return {"tag_name": rel.tag, "name": rel.tag, "assets": assets}

    def json(self, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        etag = '"' + hashlib.sha1(data).hexdigest() + '"'
        if self.headers.get("If-None-Match") == etag:
            self.state.hits["304"] += 1
            return self.reply(304, b"", {"ETag": etag})
        self.reply(200, data, {"ETag": etag, "Content-Type": "application/json",
                               **(headers or {})})

    def listing(self, query: dict[str, list[str]]) -> None:
        if self.state.corrupt_listing:
            return self.reply(200, b"<ListBucketResult><Contents><Key>")
        keys = sorted(self.state.bucket)
        start = int(query.get("continuation-token", ["0"])[0])
        page = keys[start:start + self.state.page_size]
        more = start + self.state.page_size < len(keys)
        body = "".join(f"<Contents><Key>{escape(k)}</Key></Contents>" for k in page)
        token = f"<NextContinuationToken>{start + self.state.page_size}" \
                "</NextContinuationToken>" if more else ""
        xml = ('<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/'
               f'doc/2006-03-01/"><IsTruncated>{str(more).lower()}</IsTruncated>'
               f"{token}{body}</ListBucketResult>")
        self.reply(200, xml.encode(), {"Content-Type": "application/xml"})

    def file(self, name: str, data: bytes | None) -> None:
        if data is None:
            return self.reply(404, b"not found")
        start = 0
        if self.headers.get("Range"):
            self.state.ranges.append(self.headers["Range"])
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(data):
                return self.reply(416, b"")
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        hold = self.state.hold_after.pop(name, None)
        if hold is not None:  # a client is now mid-download: kill it, or release
            self.wfile.write(body[:hold])
            self.wfile.flush()
            self.state.held.set()
            self.state.release.wait(60)
            body = body[hold:]
        cut = self.state.cut_after.pop(name, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


class RepoServer:
    """Serve :class:`State` on 127.0.0.1 (a free port) in a thread."""

    def __init__(self) -> None:
        self.state = State()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.state = self.state  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RepoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.release.set()  # a held reply would keep server_close() waiting
        self.httpd.shutdown()
        self.httpd.server_close()
