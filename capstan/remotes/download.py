"""Downloads that never leave a partial or unverified file behind.

A download goes to ``<target>.part`` (resumed with HTTP ``Range`` after an
interruption), is checked against its SHA-256 when one is known, decompressed
when its bytes are gzip, then renamed into place. Callers hold the lock of the
target (capstan.core.fs.lock), so concurrent downloads wait for one another.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import queue
import re
import sys
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from capstan.core.errors import InputError, LocalIOError, NotFound, RemoteError
from capstan.core.fs import atomic_output, sha256_of, write_error
from capstan.core.limits import CappedReader, expansion_limit

__all__ = ["Artifact", "fetch", "progress_bar", "reason", "session"]

_CHUNK = 1 << 20
_NET_CHUNK = 1 << 20  # also what an interruption can lose; the rest is resumed
_TIMEOUT = (10, 60)  # connect, read
_GZIP = b"\x1f\x8b"


@dataclass(frozen=True)
class Artifact:
    """A remote file: where it is and, when the remote publishes one, its digest."""

    name: str
    url: str
    size: int | None = None
    sha256: str | None = None
    opener: Callable[[Path], None] | None = None  # for non-HTTP sources (S3, files)


def session(token: str | None = None) -> Any:
    """A requests session with retries on connection errors, 429 and 5xx."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    s = requests.Session()
    retry = Retry(total=4, connect=2, backoff_factor=0.3,
                  status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=frozenset({"GET", "HEAD"}), respect_retry_after_header=True)
    s.mount("http://", HTTPAdapter(max_retries=retry))
    s.mount("https://", HTTPAdapter(max_retries=retry))
    s.headers["User-Agent"] = "pycapstan"
    if token:
        s.headers["Authorization"] = f"Bearer {token}"
    return s


def fetch(artifact: Artifact, target: Path, *, http: Any = None, quiet: bool = False,
          unpack: bool = False) -> str:
    """Download *artifact* to *target*; return the SHA-256 of the bytes as published.

    With *unpack*, gzip data (found by its magic bytes, whatever the name) is
    stored decompressed: images are published gzipped, packages are not.

    The caller holds the lock of *target*. An existing *target* is replaced only
    by verified bytes: a digest mismatch raises InputError naming both digests
    and leaves nothing behind; an interruption keeps the partial download for
    the next call to resume.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    # a stable name, so the next call resumes it; a temporary target's stays one
    part = target.with_name(f"{'' if target.name.startswith('.') else '.'}{target.name}.part")
    if artifact.opener is not None:
        part.unlink(missing_ok=True)
        try:
            artifact.opener(part)
        except OSError as err:
            part.unlink(missing_ok=True)
            raise write_error(part, err) from err
        digest = sha256_of(part)
    else:
        digest = _http_get(artifact, part, http or session(), quiet)
    if artifact.sha256 and digest != artifact.sha256:
        part.unlink()
        raise InputError(f"{artifact.name}: checksum mismatch: expected sha256 "
                         f"{artifact.sha256}, got {digest}; the download was discarded")
    _place(part, target, unpack)
    return digest


def _http_get(artifact: Artifact, part: Path, http: Any, quiet: bool) -> str:
    """Fetch into *part* (resuming it) and return the SHA-256 of all its bytes,
    hashed as they arrive."""
    import requests

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with http.get(artifact.url, headers=headers, stream=True, timeout=_TIMEOUT) as reply:
            # nothing left to fetch: start over
            if reply.status_code == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE and have:
                part.unlink()
                return _http_get(artifact, part, http, quiet)
            if reply.status_code == HTTPStatus.NOT_FOUND:
                raise NotFound(f"{artifact.name}: not found at {artifact.url}")
            if reply.status_code not in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
                raise RemoteError(f"{artifact.name}: {artifact.url} answered HTTP "
                                  f"{reply.status_code} {reply.reason}")
            mode = "ab" if reply.status_code == HTTPStatus.PARTIAL_CONTENT else "wb"
            done = have if mode == "ab" else 0
            with _Sha256Worker() as h:
                if done:
                    with open(part, "rb") as old:
                        while block := old.read(_CHUNK):
                            h.update(block)
                total = int(reply.headers.get("Content-Length", 0)) + done or artifact.size
                progress = progress_bar(total, artifact.name, done=done, quiet=quiet)
                try:
                    with open(part, mode) as out:
                        for chunk in reply.iter_content(_NET_CHUNK):
                            out.write(chunk)
                            h.update(chunk)
                            progress(len(chunk))
                        out.flush()
                        os.fsync(out.fileno())
                finally:
                    progress(0, done=True)
            digest = h.hexdigest()
    except requests.RequestException as err:
        raise RemoteError(f"{artifact.name}: download from {artifact.url} failed: "
                          f"{reason(err)} (run the command again to resume)") from err
    except OSError as err:
        raise LocalIOError(f"cannot write {part}: {err.strerror}") from err
    if artifact.size is not None and part.stat().st_size != artifact.size:
        raise RemoteError(f"{artifact.name}: got {part.stat().st_size} of {artifact.size} "
                          "bytes (run the command again to resume)")
    return digest


class _Sha256Worker:
    """SHA-256 on a worker thread, so hashing overlaps the network and the disk
    (hashlib releases the GIL). Use as a context manager; ``hexdigest()`` after it."""

    def __init__(self) -> None:
        self._blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._hash = hashlib.sha256()
        self._thread = threading.Thread(target=self._work, name="sha256", daemon=True)

    def _work(self) -> None:
        while (block := self._blocks.get()) is not None:
            self._hash.update(block)

    def __enter__(self) -> _Sha256Worker:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._blocks.put(None)
        self._thread.join()

    def update(self, block: bytes) -> None:
        self._blocks.put(block)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def reason(err: Exception) -> str:
    """The useful part of a requests/urllib3 error: ``[Errno 111] Connection refused``."""
    text = str(err)
    match = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if match:
        return match.group(0)
    match = re.search(r"(Read timed out|Connection (?:aborted|broken)[^'\")]*)", text)
    return match.group(1) if match else text.split(": ")[-1][:160]


def _place(part: Path, target: Path, unpack: bool) -> None:
    """Rename *part* to *target*, gunzipping it first if asked and its bytes are gzip.

    Corrupt gzip data discards *part*; a write error (ENOSPC) keeps the verified
    *part* and names the file that could not be written."""
    with open(part, "rb") as f:
        gz = unpack and f.read(2) == _GZIP
    if not gz:
        os.replace(part, target)
        return
    limit = expansion_limit(part.stat().st_size)  # a gzip bomb is refused, not unpacked
    with gzip.open(part, "rb") as src, atomic_output(target) as dst:
        capped = CappedReader(src, limit, target.name)
        while True:
            try:
                block = capped.read(_CHUNK)
            except InputError:
                part.unlink()
                raise
            except (OSError, EOFError, zlib.error) as err:
                part.unlink()
                raise InputError(f"{target.name}: corrupt gzip data ({err})") from err
            if not block:
                break
            dst.write(block)
    part.unlink()


def progress_bar(total: int | None, label: str, *, done: int = 0,
                 quiet: bool = False) -> Callable[..., None]:
    """``update(nbytes, done=False)``: a byte progress bar on a terminal, else a no-op."""
    if quiet or not sys.stderr.isatty():
        return lambda _n, done=False: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=label, leave=False)

    def update(n: int, done: bool = False) -> None:
        bar.update(n)
        if done:
            bar.close()

    return update
