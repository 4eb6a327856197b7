"""The OpenStack driver's connection: openstacksdk (clouds.yaml / ``OS_*``), its and
keystoneauth's errors as ours, and the settings every part reads."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from capstan.core.config import Config
from capstan.core.errors import (
    BackendError,
    CapstanError,
    ConfigError,
    Conflict,
    NotFound,
    RemoteError,
)
from capstan.drivers.base import DiskPreparer
from capstan.drivers.cloud import CloudDriver

__all__ = ["OpenStackApi"]

_MISSING = "the openstack driver needs openstacksdk: pip install 'pycapstan[openstack]'"


class OpenStackApi(CloudDriver):
    """OpenStack settings and the connection, under the image store and the servers."""

    def __init__(self, config: Config, disks: DiskPreparer | None = None) -> None:
        super().__init__(config, disks)
        self.cloud = self.setting("openstack_cloud") or None
        self.flavor = self.setting("openstack_flavor") or None
        self.network = self.setting("openstack_network") or None
        self.floating_ip = bool(self.config.values.get("openstack_floating_ip"))
        self.floating_network = self.setting("openstack_floating_network") or None
        self._conn: Any = None
        self.bytes_sent = 0  # by the last upload

    # -- connection -----------------------------------------------------------

    def conn(self) -> Any:
        """An openstacksdk connection (clouds.yaml / OS_* through openstacksdk)."""
        if self._conn is None:
            try:
                openstack = importlib.import_module("openstack")
            except ImportError as err:
                raise BackendError(_MISSING) from err
            self._conn = self._call("connect", lambda: openstack.connect(
                cloud=self.cloud, app_name="pycapstan"))
        return self._conn

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """*fn()* with openstacksdk's and keystoneauth's errors as ours."""
        from keystoneauth1 import exceptions as ks
        from openstack import exceptions as sdk

        try:
            return fn()
        except (sdk.SDKException, ks.ClientException, ks.RetriableConnectionFailure) as err:
            raise _translated(what, err) from err


def _line(err: BaseException) -> str:
    """The first line of *err*'s message."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _translated(what: str, err: Exception) -> CapstanError:
    """Our error for openstacksdk's or keystoneauth's *err*, raised by operation *what*."""
    from keystoneauth1 import exceptions as ks
    from openstack import exceptions as sdk

    table: tuple[tuple[type[Exception] | tuple[type[Exception], ...],
                       Callable[[], CapstanError]], ...] = (
        ((ks.MissingRequiredOptions, ks.MissingAuthPlugin), lambda: ConfigError(
            "no OpenStack credentials: set openstack_cloud (a clouds.yaml entry), OS_CLOUD "
            "or the OS_* variables")),
        (ks.Unauthorized, lambda: ConfigError("OpenStack rejected the credentials")),
        ((ks.ConnectFailure, ks.ConnectTimeout, ks.SSLError, ks.RetriableConnectionFailure,
          ks.DiscoveryFailure, ks.EndpointNotFound),
         lambda: RemoteError(f"OpenStack {what}: {type(err).__name__}: {_line(err)}")),
        (sdk.ConfigException, lambda: ConfigError(f"OpenStack configuration: {_line(err)}")),
        (sdk.NotFoundException, lambda: NotFound(f"OpenStack {what}: {_line(err)}")),
        (sdk.ConflictException, lambda: Conflict(f"OpenStack {what}: {_line(err)}")),
    )
    for kinds, make in table:
        if isinstance(err, kinds):
            return make()
    status = getattr(err, "status_code", None) if isinstance(err, sdk.HttpException) else None
    if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
        return ConfigError(f"OpenStack {what}: access denied: {_line(err)}")
    if status and status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        return RemoteError(f"OpenStack {what}: {_line(err)}")
    return BackendError(f"OpenStack {what}: {_line(err)}")
