"""A driver that lives only in the tests: each instance is a JSON file under
``$CAPSTAN_ROOT/instances/toy``. It imports nothing of pycapstan but the driver
base module, and proves that a driver registered by entry point alone shows up in
``run -p``, ``instances``, ``config print`` and ``doctor``."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from capstan.core.errors import Conflict, NotFound
from capstan.drivers.base import (
    Capability,
    Driver,
    Finding,
    Instance,
    InstanceSpec,
    InstanceState,
    Setting,
    Status,
)


class ToyDriver(Driver):
    """Instances that are records only: started and stopped by rewriting the record."""

    name = "toy"
    capabilities = frozenset({Capability.DETACH})
    settings: ClassVar[tuple[Setting, ...]] = (
        Setting("toy_flavour", default="plain", choices=("plain", "fancy"),
                help="how the toy looks"),
        Setting("toy_token", secret=True, help="a secret the toy never shows"),
        Setting("toy_loud", type=bool, default=False, help="whether the toy shouts"),
    )

    @classmethod
    def doctor(cls, config: object) -> Sequence[Finding]:
        flavour = config.toy_flavour
        return [Finding("toy", Status.OK, f"toy driver ready ({flavour})")]

    def _path(self, name: str) -> Path:
        return self.config.instances / "toy" / f"{name}.json"

    def _write(self, inst: Instance) -> Instance:
        path = self._path(inst.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"state": inst.state.value, "image": inst.image}))
        return inst

    def create(self, spec: InstanceSpec) -> Instance:
        if self._path(spec.name).exists():
            raise Conflict(f"instance {spec.name} exists: delete it first")
        return self._write(Instance(spec.name, self.name, InstanceState.STOPPED,
                                    str(spec.image)))

    def start(self, name: str) -> Instance:
        inst = self.get(name)
        return self._write(Instance(name, self.name, InstanceState.RUNNING, inst.image))

    def stop(self, name: str, timeout: float = 30) -> Instance:
        inst = self.get(name)
        return self._write(Instance(name, self.name, InstanceState.STOPPED, inst.image))

    def delete(self, name: str) -> None:
        self.get(name)
        self._path(name).unlink()

    def get(self, name: str) -> Instance:
        try:
            data = json.loads(self._path(name).read_text())
        except FileNotFoundError:
            raise NotFound(f"no such instance: {name}") from None
        return Instance(name, self.name, InstanceState(data["state"]), data["image"])

    def list(self) -> Iterator[Instance]:
        home = self.config.instances / "toy"
        for path in sorted(home.glob("*.json")) if home.is_dir() else []:
            yield self.get(path.stem)
