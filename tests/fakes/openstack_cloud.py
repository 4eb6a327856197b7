"""FAKE OpenStack cloud: the Keystone v3, Glance v2, Nova v2.1 and Neutron v2.0 subset
that openstacksdk calls for the openstack driver, for tests only.

Keystone: version discovery and ``POST /v3/auth/tokens`` (password method; the
catalog lists the other three services). Glance: images list (``tag``, ``name``),
create, ``PUT .../file`` (md5 ``checksum`` and sha512 ``os_hash_value`` computed
here), get, delete. Nova: flavors (detail, get), servers (create, detail, get, delete,
``os-stop``, ``os-start``, ``os-getConsoleOutput``); a new server is BUILD until read
once, then ACTIVE (or ERROR when ``fail_servers`` is set). Neutron: networks, ports
(one per server), floating IPs (create, get, list, delete). Every request but the
token request must carry the token.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USER, PASSWORD, PROJECT = "capstan", "fake-os-password", "demo"
FLAVORS = [  # Capstan's picker cases use disk and RAM; vCPUs matter too
    {"id": "1", "name": "m1.tiny", "ram": 512, "vcpus": 1, "disk": 1},
    {"id": "2", "name": "m1.small", "ram": 2048, "vcpus": 1, "disk": 20},
    {"id": "3", "name": "m1.medium", "ram": 4096, "vcpus": 2, "disk": 40},
    {"id": "4", "name": "c1.small", "ram": 1024, "vcpus": 2, "disk": 10},
    {"id": "5", "name": "m1.large", "ram": 8192, "vcpus": 4, "disk": 80},
]
NETWORKS = [
    {"id": "net-private", "name": "private", "router:external": False, "status": "ACTIVE",
     "subnets": [], "admin_state_up": True},
    {"id": "net-public", "name": "public", "router:external": True, "status": "ACTIVE",
     "subnets": [], "admin_state_up": True},
]


class FakeOpenStack(ThreadingHTTPServer):
    """The cloud's state; ``requests`` records (method, path, body) of every call."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.token = uuid.uuid4().hex
        self.images: dict[str, dict[str, Any]] = {}
        self.data: dict[str, bytes] = {}
        self.servers: dict[str, dict[str, Any]] = {}
        self.ports: dict[str, dict[str, Any]] = {}
        self.floating: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.console = "OSv v0.57.0\nBooted on the fake cloud.\n"
        self.fail_servers = ""  # when set: new servers go to ERROR with this fault
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenStack:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def clouds_yaml(self, cloud: str = "fake") -> str:
        """A clouds.yaml entry for this cloud."""
        return json.dumps({"clouds": {cloud: {
            "auth": {"auth_url": f"{self.url}/identity/v3", "username": USER,
                     "password": PASSWORD, "project_name": PROJECT,
                     "user_domain_name": "Default", "project_domain_name": "Default"},
            "region_name": "RegionOne", "identity_api_version": 3}}})

    def token_body(self) -> dict[str, Any]:
        def endpoint(kind: str, name: str, path: str) -> dict[str, Any]:
            return {"type": kind, "name": name, "id": name, "endpoints": [
                {"id": f"{name}-public", "interface": "public", "region": "RegionOne",
                 "region_id": "RegionOne", "url": f"{self.url}/{path}"}]}

        return {"token": {
            "methods": ["password"], "expires_at": "2099-01-01T00:00:00.000000Z",
            "issued_at": "2026-01-01T00:00:00.000000Z",
            "user": {"id": "u1", "name": USER, "domain": {"id": "default", "name": "Default"}},
            "project": {"id": "p1", "name": PROJECT,
                        "domain": {"id": "default", "name": "Default"}},
            "roles": [{"id": "r1", "name": "member"}],
            "catalog": [endpoint("identity", "keystone", "identity/v3"),
                        endpoint("image", "glance", "image"),
                        endpoint("compute", "nova", "compute/v2.1"),
                        endpoint("network", "neutron", "network")]}}


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenStack

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
               ) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._reply(status, {"error": {"code": status, "message": message},
                             "itemNotFound" if status == 404 else "badRequest":
                             {"code": status, "message": message}})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = self._read_chunked()
        path = url.path.rstrip("/")
        fake = self.server
        with fake.lock:
            is_json = self.headers.get("Content-Type", "").startswith("application/json")
            body = json.loads(raw) if raw and is_json else raw
            fake.requests.append((method, path, body if is_json else len(raw)))
            if path in ("/identity", "/identity/v3") and method == "GET":
                self._reply(200, {"version": {
                    "id": "v3.14", "status": "stable", "updated": "2020-01-01T00:00:00Z",
                    "links": [{"rel": "self", "href": f"{fake.url}/identity/v3/"}],
                    "media-types": [{"base": "application/json",
                                     "type": "application/vnd.openstack.identity-v3+json"}]}})
                return
            if path == "/identity/v3/auth/tokens" and method == "POST":
                user = body.get("auth", {}).get("identity", {}).get("password", {}).get(
                    "user", {})
                if (user.get("name"), user.get("password")) != (USER, PASSWORD):
                    self._error(401, "The request you have made requires authentication.")
                    return
                self._reply(201, fake.token_body(), {"X-Subject-Token": fake.token})
                return
            if path in ("/image", "/compute", "/compute/v2.1", "/network"):
                self._versions(path)
                return
            if self.headers.get("X-Auth-Token") != fake.token:
                self._error(401, "The request you have made requires authentication.")
                return
            if path.startswith("/image/v2/"):
                self._glance(method, path.removeprefix("/image/v2/").split("/"), query, body)
            elif path.startswith("/compute/v2.1/"):
                self._nova(method, path.removeprefix("/compute/v2.1/").split("/"), query,
                           body)
            elif path.startswith("/network/v2.0/"):
                self._neutron(method, path.removeprefix("/network/v2.0/").split("/"), query,
                              body)
            else:
                self._error(404, f"no such path {path}")

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while True:
            size = int(self.rfile.readline().strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return bytes(data)
            data += self.rfile.read(size)
            self.rfile.readline()

    def _versions(self, path: str) -> None:
        base = self.server.url
        if path == "/image":
            self._reply(200, {"versions": [{"id": "v2.9", "status": "CURRENT", "links": [
                {"rel": "self", "href": f"{base}/image/v2/"}]}]})
        elif path == "/network":
            self._reply(200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
                {"rel": "self", "href": f"{base}/network/v2.0/"}]}]})
        else:
            version = {"id": "v2.1", "status": "CURRENT", "version": "2.1",
                       "min_version": "2.1", "updated": "2013-07-23T11:33:21Z",
                       "links": [{"rel": "self", "href": f"{base}/compute/v2.1/"}]}
            self._reply(200, {"version": version} if path.endswith("v2.1")
                        else {"versions": [version]})

    # -- Glance ---------------------------------------------------------------

    def _glance(self, method: str, parts: list[str], query: dict[str, list[str]],
                body: Any) -> None:
        fake = self.server
        if parts == ["images"] and method == "GET":
            images = list(fake.images.values())
            for tag in query.get("tag", []):
                images = [i for i in images if tag in i["tags"]]
            if "name" in query:
                images = [i for i in images if i["name"] == query["name"][0]]
            self._reply(200, {"images": images, "first": "/v2/images",
                              "schema": "/v2/schemas/images"})
            return
        if parts == ["images"] and method == "POST":
            image_id = str(uuid.uuid4())
            image = {"id": image_id, "status": "queued", "visibility": "private",
                     "tags": [], "min_disk": 0, "min_ram": 0, "checksum": None,
                     "os_hash_algo": None, "os_hash_value": None, "size": None,
                     "created_at": f"2026-01-01T00:00:{len(fake.images):02d}Z",
                     "updated_at": "2026-01-01T00:00:00Z", "protected": False,
                     "file": f"/v2/images/{image_id}/file", "self": f"/v2/images/{image_id}",
                     "schema": "/v2/schemas/image", **body}
            fake.images[image_id] = image
            self._reply(201, image)
            return
        image = fake.images.get(parts[1]) if len(parts) >= 2 else None
        if image is None:
            self._error(404, f"No image found with ID {parts[1] if len(parts) > 1 else ''}")
            return
        if len(parts) == 3 and parts[2] == "file" and method == "PUT":
            data = bytes(body) if isinstance(body, (bytes, bytearray)) else b""
            fake.data[image["id"]] = data
            image.update(status="active", size=len(data),
                         checksum=hashlib.md5(data).hexdigest(), os_hash_algo="sha512",
                         os_hash_value=hashlib.sha512(data).hexdigest())
            self._reply(204)
        elif len(parts) == 2 and method == "GET":
            self._reply(200, image)
        elif len(parts) == 2 and method == "DELETE":
            del fake.images[image["id"]]
            fake.data.pop(image["id"], None)
            self._reply(204)
        else:
            self._error(405, "method not allowed")

    # -- Nova -----------------------------------------------------------------

    def _nova(self, method: str, parts: list[str], query: dict[str, list[str]],
              body: Any) -> None:
        fake = self.server
        if parts[0] == "flavors":
            self._flavors(parts)
        elif parts[0] != "servers":
            self._error(404, f"no such resource {parts[0]}")
        elif parts == ["servers"] and method == "POST":
            self._create_server(body.get("server", {}))
        elif parts[1:] in (["detail"], []) and method == "GET":
            servers = list(fake.servers.values())
            if "name" in query:
                servers = [s for s in servers if re.search(query["name"][0], s["name"])]
            self._reply(200, {"servers": [self._show(s) for s in servers]})
        elif parts[1] not in fake.servers:
            self._error(404, f"Instance {parts[1]} could not be found.")
        else:
            self._server(method, parts, body)

    def _flavors(self, parts: list[str]) -> None:
        if parts[1:] in (["detail"], []):
            self._reply(200, {"flavors": [_flavor(f) for f in FLAVORS]})
            return
        found = [f for f in FLAVORS if f["id"] == parts[1]]
        if found:
            self._reply(200, {"flavor": _flavor(found[0])})
        else:
            self._error(404, f"Flavor {parts[1]} could not be found.")

    def _server(self, method: str, parts: list[str], body: Any) -> None:
        fake = self.server
        server = fake.servers[parts[1]]
        if len(parts) == 2 and method == "GET":
            self._reply(200, {"server": self._show(server)})
        elif len(parts) == 2 and method == "DELETE":
            del fake.servers[server["id"]]
            for port_id in [p for p, port in fake.ports.items()
                            if port["device_id"] == server["id"]]:
                del fake.ports[port_id]
                for fip in fake.floating.values():
                    if fip["port_id"] == port_id:
                        fip.update(port_id=None, fixed_ip_address=None, status="DOWN")
            self._reply(204)
        elif parts[2:] == ["action"] and method == "POST":
            self._server_action(server, body)
        else:
            self._error(405, "method not allowed")

    def _server_action(self, server: dict[str, Any], body: Any) -> None:
        if "os-stop" in body:
            server["status"] = "SHUTOFF"
            self._reply(202)
        elif "os-start" in body:
            server["status"] = "ACTIVE"
            self._reply(202)
        elif "os-getConsoleOutput" in body:
            self._reply(200, {"output": self.server.console if server["status"] == "ACTIVE"
                              else ""})
        else:
            self._error(400, f"unknown action {sorted(body)}")

    def _create_server(self, spec: dict[str, Any]) -> None:
        fake = self.server
        image = fake.images.get(spec.get("imageRef", ""))
        flavor = next((f for f in FLAVORS if f["id"] == spec.get("flavorRef")), None)
        if image is None or image["status"] != "active":
            self._error(400, f"Image {spec.get('imageRef')} could not be found.")
            return
        if flavor is None:
            self._error(400, f"Flavor {spec.get('flavorRef')} could not be found.")
            return
        if flavor["disk"] < image["min_disk"] or flavor["ram"] < image["min_ram"]:
            self._error(400, "Flavor's disk is too small for requested image.")
            return
        networks = spec.get("networks") or [{"uuid": "net-private"}]
        if not isinstance(networks, list) or any(
                n.get("uuid") not in {x["id"] for x in NETWORKS} for n in networks):
            self._error(400, f"Network {networks} could not be found.")
            return
        server_id = str(uuid.uuid4())
        server = {"id": server_id, "name": spec.get("name", ""), "status": "BUILD",
                  "image": {"id": image["id"]}, "flavor": {"id": flavor["id"]},
                  "metadata": spec.get("metadata", {}), "created": "2026-01-01T00:00:00Z",
                  "networks": networks, "fault": None, "reads": 0}
        fake.servers[server_id] = server
        for index, net in enumerate(networks):
            port_id = f"port-{server_id[:8]}-{index}"
            fake.ports[port_id] = {"id": port_id, "device_id": server_id,
                                   "network_id": net["uuid"], "status": "ACTIVE",
                                   "fixed_ips": [{"ip_address": f"10.0.0.{10 + len(fake.ports)}",
                                                  "subnet_id": "sub"}]}
        self._reply(202, {"server": {"id": server_id, "adminPass": "x", "links": []}})

    def _show(self, server: dict[str, Any]) -> dict[str, Any]:
        fake = self.server
        server["reads"] += 1
        if server["status"] == "BUILD" and server["reads"] > 1:
            if fake.fail_servers:
                server["status"] = "ERROR"
                server["fault"] = {"code": 500, "message": fake.fail_servers}
            else:
                server["status"] = "ACTIVE"
        addresses: dict[str, list[dict[str, Any]]] = {}
        for port in fake.ports.values():
            if port["device_id"] != server["id"]:
                continue
            net = next(n["name"] for n in NETWORKS if n["id"] == port["network_id"])
            rows = addresses.setdefault(net, [])
            rows.append({"addr": port["fixed_ips"][0]["ip_address"], "version": 4,
                         "OS-EXT-IPS:type": "fixed"})
            for fip in fake.floating.values():
                if fip["port_id"] == port["id"]:
                    rows.append({"addr": fip["floating_ip_address"], "version": 4,
                                 "OS-EXT-IPS:type": "floating"})
        shown = {k: v for k, v in server.items() if k not in ("reads", "networks")}
        if not shown["fault"]:
            del shown["fault"]
        return {**shown, "addresses": addresses, "tenant_id": "p1", "user_id": "u1"}

    # -- Neutron --------------------------------------------------------------

    def _neutron(self, method: str, parts: list[str], query: dict[str, list[str]],
                 body: Any) -> None:
        fake = self.server
        if parts[0] == "networks" and len(parts) <= 2 and method == "GET":
            self._networks(parts, query)
        elif parts == ["ports"] and method == "GET":
            ports = list(fake.ports.values())
            if "device_id" in query:
                ports = [p for p in ports if p["device_id"] == query["device_id"][0]]
            self._reply(200, {"ports": ports})
        elif parts == ["floatingips"] and method == "POST":
            self._create_floating_ip(body.get("floatingip", {}))
        elif parts == ["floatingips"] and method == "GET":
            self._reply(200, {"floatingips": list(fake.floating.values())})
        elif parts[0] == "floatingips" and len(parts) == 2:
            self._floating_ip(method, parts[1])
        else:
            self._error(404, f"no such resource {'/'.join(parts)}")

    def _networks(self, parts: list[str], query: dict[str, list[str]]) -> None:
        if len(parts) == 2:
            found = [n for n in NETWORKS if n["id"] == parts[1]]
            if found:
                self._reply(200, {"network": found[0]})
            else:
                self._error(404, f"Network {parts[1]} could not be found.")
            return
        nets = NETWORKS
        if "name" in query:
            nets = [n for n in nets if n["name"] == query["name"][0]]
        if "router:external" in query:
            wanted = query["router:external"][0].lower() == "true"
            nets = [n for n in nets if n["router:external"] is wanted]
        self._reply(200, {"networks": nets})

    def _create_floating_ip(self, spec: dict[str, Any]) -> None:
        fake = self.server
        port = fake.ports.get(spec.get("port_id") or "")
        if spec.get("floating_network_id") != "net-public" or (
                spec.get("port_id") and port is None):
            self._error(400, "invalid floating IP request")
            return
        fip_id = str(uuid.uuid4())
        fip = {"id": fip_id, "floating_ip_address": f"198.51.100.{len(fake.floating) + 5}",
               "floating_network_id": "net-public", "port_id": spec.get("port_id"),
               "fixed_ip_address": port["fixed_ips"][0]["ip_address"] if port else None,
               "status": "ACTIVE" if port else "DOWN", "description": spec.get(
                   "description", "")}
        fake.floating[fip_id] = fip
        self._reply(201, {"floatingip": fip})

    def _floating_ip(self, method: str, fip_id: str) -> None:
        fake = self.server
        fip = fake.floating.get(fip_id)
        if fip is None:
            self._error(404, f"Floating IP {fip_id} could not be found.")
        elif method == "GET":
            self._reply(200, {"floatingip": fip})
        elif method == "DELETE":
            del fake.floating[fip_id]
            self._reply(204)
        else:
            self._error(405, "method not allowed")

def _flavor(flavor: dict[str, Any]) -> dict[str, Any]:
    return {**flavor, "swap": "", "OS-FLV-EXT-DATA:ephemeral": 0, "rxtx_factor": 1.0,
            "os-flavor-access:is_public": True, "OS-FLV-DISABLED:disabled": False,
            "links": []}
