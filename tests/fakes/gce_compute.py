"""FAKE Compute Engine: the documented REST subset the gce driver uses, for tests only.

Implements, under ``/compute/v1/projects/{project}``: ``zones/{z}``,
``zones/{z}/machineTypes/{t}``, ``global/images`` (insert, get, list with a label filter,
delete), ``zones/{z}/instances`` (insert, get, list, delete, start, stop,
``serialPort``) and global and zone ``operations/{op}`` (get, ``wait``). Operations are
RUNNING when returned by a mutation and DONE after the first get or wait. It also
serves ``/token`` (the OAuth JWT-bearer grant of a service-account key file written by
:func:`service_account_file`) and refuses compute calls that carry neither that token
nor a JWT self-signed with the key. ``images.insert`` fetches the
``rawDisk.source`` tarball from the Cloud Storage emulator and checks it as GCE does
(one ``disk.raw`` member, a whole number of GiB), failing the operation otherwise.
"""

from __future__ import annotations

import base64
import io
import json
import re
import tarfile
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

GIB = 1 << 30
TOKEN = "fake-gce-token"
ACCOUNT = "capstan-test@capstan-test.iam.gserviceaccount.com"
ZONES = ("us-central1-a", "europe-west1-b")
MACHINE_TYPES = {"e2-small": (2, 2048), "e2-micro": (2, 1024), "n1-standard-1": (1, 3840)}
NETWORKS = ("default",)


class FakeCompute(ThreadingHTTPServer):
    """The fake's state; ``requests`` records (method, path, body) of every call."""

    daemon_threads = True

    def __init__(self, storage_url: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.storage_url = storage_url
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.images: dict[str, dict[str, Any]] = {}
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, Any] = {}  # operation -> what finishing it does
        self.disks: dict[str, bytes] = {}  # image name -> first 64 KiB of its disk.raw
        self.requests: list[tuple[str, str, Any]] = []
        self.serial = b"OSv v0.57.0\nBooted from the fake.\n"
        self.fail_instances = ""  # when set: instance inserts fail with this, VM left behind
        self._ids = 1000
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> FakeCompute:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def service_account_file(self, path: Path) -> None:
        """Write a service-account key file whose token endpoint is this fake."""
        pem = self.key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()
        path.write_text(json.dumps({
            "type": "service_account", "project_id": "capstan-test",
            "private_key_id": "fake-key-1", "private_key": pem, "client_email": ACCOUNT,
            "client_id": "1", "token_uri": f"{self.url}/token"}))

    def valid_jwt(self, token: str) -> bool:
        """Whether *token* is a JWT signed with our key for our service account."""
        try:
            head, body, sig = token.split(".")
            self.key.public_key().verify(_b64(sig), f"{head}.{body}".encode(),
                                         padding.PKCS1v15(), hashes.SHA256())
            return bool(json.loads(_b64(body)).get("iss") == ACCOUNT)
        except Exception:  # malformed or forged: not valid
            return False

    def next_id(self) -> str:
        self._ids += 1
        return str(self._ids)

    # -- operations -----------------------------------------------------------

    def operation(self, kind: str, target: str, zone: str | None, finish: Any) -> dict[str, Any]:
        name = f"operation-{self.next_id()}"
        op = {"kind": "compute#operation", "id": self.next_id(), "name": name,
              "operationType": kind, "status": "RUNNING", "targetLink": target,
              "selfLink": f"{self.url}/operations/{name}"}
        if zone:
            op["zone"] = f"{self.url}/compute/v1/projects/p/zones/{zone}"
        self.operations[name] = op
        self.pending[name] = finish
        return dict(op)

    def finish(self, name: str) -> dict[str, Any]:
        op = self.operations[name]
        finish = self.pending.pop(name, None)
        if finish is not None:
            error = finish()
            if error:
                op["error"] = {"errors": [{"code": error[0], "message": error[1]}]}
            op["status"] = "DONE"
        return op

    # -- images ---------------------------------------------------------------

    def check_tarball(self, image: dict[str, Any]) -> tuple[str, str] | None:
        """Fetch and check the image's tarball as GCE's importer does."""
        match = re.fullmatch(r"https://storage\.googleapis\.com/([^/]+)/(.+)",
                             image.get("rawDisk", {}).get("source", ""))
        if not match:
            return ("INVALID_FIELD_VALUE", "rawDisk.source is not a Cloud Storage URL")
        bucket, obj = match.groups()
        url = (f"{self.storage_url}/storage/v1/b/{bucket}/o/"
               f"{urllib.parse.quote(obj, safe='')}?alt=media")
        try:
            with urllib.request.urlopen(url) as reply:
                data = reply.read()
        except OSError as err:
            return ("RESOURCE_NOT_FOUND", f"cannot read {obj}: {err}")
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                members = tar.getmembers()
                if [m.name for m in members] != ["disk.raw"] or not members[0].isfile():
                    return ("INVALID_IMAGE_FILE", "the tarball must hold only disk.raw")
                if members[0].size % GIB:
                    return ("INVALID_IMAGE_FILE", "disk.raw is not a whole number of GB")
                disk = tar.extractfile(members[0])
                assert disk is not None
                self.disks[image["name"]] = disk.read(65536)
        except (tarfile.TarError, OSError) as err:
            return ("INVALID_IMAGE_FILE", f"not a gzipped tarball: {err}")
        image["diskSizeGb"] = str(members[0].size // GIB)
        image["archiveSizeBytes"] = str(len(data))
        return None


class _Handler(BaseHTTPRequestHandler):
    server: FakeCompute

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, reason: str = "notFound") -> None:
        self._reply(status, {"error": {"code": status, "message": message,
                                       "errors": [{"reason": reason, "message": message}]}})

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Type", "").startswith("application/x-www-form"):
            return dict(urllib.parse.parse_qsl(raw.decode()))
        return json.loads(raw) if raw else None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        body = self._body()
        fake = self.server
        with fake.lock:
            fake.requests.append((method, url.path, body))
            if url.path == "/token" and method == "POST":
                if not fake.valid_jwt(str((body or {}).get("assertion", ""))):
                    self._error(400, "invalid_grant", "invalid_grant")
                    return
                self._reply(200, {"access_token": TOKEN, "expires_in": 3600,
                                  "token_type": "Bearer"})
                return
            bearer = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if bearer != TOKEN and not fake.valid_jwt(bearer):
                self._error(401, "Request is missing valid authentication credentials",
                            "authError")
                return
            match = re.fullmatch(r"/compute/v1/projects/([^/]+)/(.+)", url.path)
            if not match:
                self._error(404, f"no such path {url.path}")
                return
            self._route(method, match.group(2), query, body)

    def _route(self, method: str, rest: str, query: dict[str, str], body: Any) -> None:
        parts = rest.split("/")
        if parts[0] == "zones" and parts[1] not in ZONES:
            self._error(404, f"The resource 'projects/p/zones/{parts[1]}' was not found")
        elif re.fullmatch(r"(global|zones/[^/]+)/operations/[^/]+(/wait)?", rest):
            self._operation(parts[-2] if parts[-1] == "wait" else parts[-1])
        elif len(parts) == 2 and parts[0] == "zones" and method == "GET":
            self._reply(200, {"kind": "compute#zone", "name": parts[1], "status": "UP"})
        elif len(parts) == 4 and parts[2] == "machineTypes":
            self._machine_type(parts[3])
        elif parts[:2] == ["global", "images"]:
            self._images(method, parts[2:], query, body)
        elif parts[0] == "zones" and len(parts) >= 3 and parts[2] == "instances":
            self._instances(method, parts[1], parts[3:], query, body)
        else:
            self._error(404, f"no such resource {rest}")

    def _operation(self, name: str) -> None:
        if name not in self.server.operations:
            self._error(404, f"operation {name} was not found")
        else:
            self._reply(200, self.server.finish(name))

    def _machine_type(self, name: str) -> None:
        if name not in MACHINE_TYPES:
            self._error(404, f"The resource 'machineTypes/{name}' was not found")
        else:
            cpus, mem = MACHINE_TYPES[name]
            self._reply(200, {"name": name, "guestCpus": cpus, "memoryMb": mem})

    def _images(self, method: str, rest: list[str], query: dict[str, str], body: Any) -> None:
        if not rest and method == "POST":
            self._insert_image(body)
        elif not rest and method == "GET":
            self._list_images(query)
        else:
            self._image(method, rest)

    def _insert_image(self, body: Any) -> None:
        fake = self.server
        name = body.get("name", "")
        if name in fake.images:
            self._error(409, f"The resource 'images/{name}' already exists", "alreadyExists")
            return
        image = {**body, "kind": "compute#image", "id": fake.next_id(), "status": "PENDING",
                 "creationTimestamp": f"2026-01-01T00:00:{len(fake.images):02d}Z",
                 "selfLink": f"{fake.url}/compute/v1/projects/p/global/images/{name}"}
        fake.images[name] = image

        def finish() -> tuple[str, str] | None:
            error = fake.check_tarball(image)
            image["status"] = "FAILED" if error else "READY"
            return error

        self._reply(200, fake.operation("insert", image["selfLink"], None, finish))

    def _list_images(self, query: dict[str, str]) -> None:
        items = list(self.server.images.values())
        label = re.fullmatch(r'labels\.([a-z0-9_-]+) = "([^"]*)"', query.get("filter", ""))
        if query.get("filter") and not label:
            self._error(400, f"Invalid value for field 'filter': {query['filter']}", "invalid")
            return
        if label:
            items = [i for i in items
                     if i.get("labels", {}).get(label.group(1)) == label.group(2)]
        self._reply(200, {"kind": "compute#imageList", "items": items})

    def _image(self, method: str, rest: list[str]) -> None:
        fake = self.server
        image = fake.images.get(rest[0]) if len(rest) == 1 else None
        if image is None:
            self._error(404, f"The resource 'images/{rest[0] if rest else ''}' was not found")
            return
        if method == "GET":
            self._reply(200, image)
        elif method == "DELETE":
            def finish() -> None:
                fake.images.pop(image["name"], None)

            self._reply(200, fake.operation("delete", image["selfLink"], None, finish))
        else:
            self._error(405, "method not allowed", "invalid")

    def _instances(self, method: str, zone: str, rest: list[str], query: dict[str, str],
                   body: Any) -> None:
        fake = self.server
        if not rest and method == "POST":
            self._insert_instance(zone, body)
        elif not rest and method == "GET":
            items = [v for (z, _), v in fake.instances.items() if z == zone]
            self._reply(200, {"kind": "compute#instanceList", "items": items})
        elif (zone, rest[0]) not in fake.instances:
            self._error(404, f"The resource 'instances/{rest[0]}' was not found")
        else:
            self._instance(method, zone, rest, query)

    def _insert_instance(self, zone: str, body: Any) -> None:
        fake = self.server
        name = body.get("name", "")
        problem = _instance_problem(fake, zone, body)
        if problem:
            self._error(400, problem, "invalid")
            return
        if (zone, name) in fake.instances:
            self._error(409, f"The resource 'instances/{name}' already exists", "alreadyExists")
            return
        vm = {**body, "kind": "compute#instance", "id": fake.next_id(),
              "status": "PROVISIONING",
              "zone": f"{fake.url}/compute/v1/projects/p/zones/{zone}",
              "selfLink": f"{fake.url}/compute/v1/projects/p/zones/{zone}/instances/{name}"}
        for nic in vm.get("networkInterfaces", []):
            nic["networkIP"] = "10.128.0.2"
            for access in nic.get("accessConfigs", []):
                access["natIP"] = "203.0.113.7"
        fake.instances[(zone, name)] = vm

        def finish() -> tuple[str, str] | None:
            if fake.fail_instances:
                vm["status"] = "TERMINATED"
                return ("ZONE_RESOURCE_POOL_EXHAUSTED", fake.fail_instances)
            vm["status"] = "RUNNING"
            return None

        self._reply(200, fake.operation("insert", vm["selfLink"], zone, finish))

    def _instance(self, method: str, zone: str, rest: list[str],
                  query: dict[str, str]) -> None:
        fake = self.server
        vm = fake.instances[(zone, rest[0])]
        action = rest[1] if len(rest) > 1 else ""
        if method == "GET" and not action:
            self._reply(200, vm)
        elif method == "GET" and action == "serialPort":
            if query.get("port", "1") != "1":
                self._error(400, "only port 1 is logged", "invalid")
                return
            text = fake.serial.decode() if vm["status"] == "RUNNING" else ""
            self._reply(200, {"kind": "compute#serialPortOutput", "contents": text,
                              "start": "0", "next": str(len(text))})
        elif method == "DELETE" and not action:
            def gone() -> None:
                fake.instances.pop((zone, rest[0]), None)

            self._reply(200, fake.operation("delete", vm["selfLink"], zone, gone))
        elif method == "POST" and action in ("stop", "start"):
            def change() -> None:
                vm["status"] = "TERMINATED" if action == "stop" else "RUNNING"

            self._reply(200, fake.operation(action, vm["selfLink"], zone, change))
        else:
            self._error(405, "method not allowed", "invalid")

def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _instance_problem(fake: FakeCompute, zone: str, body: dict[str, Any]) -> str | None:
    """What GCE would refuse in an instances.insert body, if anything."""
    if not re.fullmatch(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?", body.get("name", "")):
        return "Invalid value for field 'resource.name'"
    machine = re.fullmatch(rf"zones/{zone}/machineTypes/([^/]+)", body.get("machineType", ""))
    if not machine or machine.group(1) not in MACHINE_TYPES:
        return f"Invalid value for field 'resource.machineType': {body.get('machineType')}"
    for nic in body.get("networkInterfaces", []):
        if nic.get("network", "").rpartition("/")[2] not in NETWORKS:
            return f"The resource '{nic.get('network')}' was not found"
    disks = body.get("disks", [])
    boot = [d for d in disks if d.get("boot")]
    if len(boot) != 1:
        return "exactly one boot disk is required"
    source = boot[0].get("initializeParams", {}).get("sourceImage", "")
    image = fake.images.get(source.rpartition("/")[2])
    if image is None or image["status"] != "READY":
        return f"The resource '{source}' is not ready or was not found"
    return None
