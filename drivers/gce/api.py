"""The GCE driver's connection: credentials from Google's standard chain, Compute and
Storage clients, Google's errors as ours, and waits on operations."""

from __future__ import annotations

import importlib
import os
import re
import time
from collections.abc import Callable
from typing import Any

from capstan.core.config import Config
from capstan.core.errors import (
    BackendError,
    ConfigError,
    Conflict,
    GuestTimeout,
    NotFound,
    RemoteError,
)
from capstan.drivers.base import DiskPreparer
from capstan.drivers.cloud import CloudDriver

__all__ = ["GceApi"]

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_NO_CREDENTIALS = ("no Google credentials: run 'gcloud auth application-default login' or "
                   "set GOOGLE_APPLICATION_CREDENTIALS")


class GceApi(CloudDriver):
    """GCE settings and clients, under the image store and the instances."""

    def __init__(self, config: Config, disks: DiskPreparer | None = None) -> None:
        super().__init__(config, disks)
        self.project = self.setting("gce_project") or None
        self.zone = self.setting("gce_zone")
        self.machine_type = self.setting("gce_machine_type")
        self.network = self.setting("gce_network")
        self.bucket = self.setting("gce_bucket") or None
        self.endpoint = self.setting("gce_endpoint") or None
        self._clients: dict[str, Any] = {}
        self._credentials: Any = None
        self.bytes_sent = 0  # by the last upload

    # -- clients --------------------------------------------------------------

    def _auth(self) -> tuple[Any, str]:
        """Credentials from Google's standard chain and the project to use."""
        if self._credentials is None:
            try:
                import google.auth
                from google.auth.exceptions import DefaultCredentialsError
            except ImportError as err:
                raise BackendError("the gce driver needs the Google Cloud libraries: pip "
                                   "install 'pycapstan[gce]'") from err
            try:
                creds, found = google.auth.default(scopes=SCOPES)
            except (DefaultCredentialsError, OSError, ValueError) as err:
                named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
                if named:  # its content is never shown: it may be a private key
                    raise ConfigError(f"GOOGLE_APPLICATION_CREDENTIALS ({named[:200]}) is not "
                                      "a readable Google credentials file") from err
                raise ConfigError(_NO_CREDENTIALS) from err
            self._credentials = creds
            self.project = self.project or found
        if not self.project:
            raise ConfigError("no GCE project: set gce_project or GOOGLE_CLOUD_PROJECT")
        return self._credentials, self.project

    def client(self, service: str) -> Any:
        """A Compute Engine client (``images``, ``instances``, ``zones``, ``machine_types``,
        ``global_operations``, ``zone_operations``) or ``storage``."""
        if service not in self._clients:
            if not _ZONE.fullmatch(self.zone):
                raise ConfigError(f"invalid GCE zone '{self.zone[:80]}': e.g. us-central1-a")
            try:
                compute_v1 = importlib.import_module("google.cloud.compute_v1")
                storage = importlib.import_module("google.cloud.storage")
            except ImportError as err:
                raise BackendError("the gce driver needs the Google Cloud libraries: pip "
                                   "install 'pycapstan[gce]'") from err
            creds, project = self._auth()
            if service == "storage":
                self._clients[service] = storage.Client(project=project, credentials=creds)
            else:
                cls = getattr(compute_v1, "".join(p.title() for p in service.split("_"))
                              + "Client")
                options = {"api_endpoint": self.endpoint} if self.endpoint else None
                self._clients[service] = cls(credentials=creds, client_options=options)
        return self._clients[service]

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """*fn(**kwargs)* with Google's errors as ours."""
        import requests
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth

        try:
            return fn(**kwargs)
        except auth.DefaultCredentialsError as err:
            raise ConfigError(_NO_CREDENTIALS) from err
        except auth.RefreshError as err:
            raise ConfigError("Google rejected the credentials (refreshing the access "
                              "token failed)") from err
        except (auth.TransportError, requests.ConnectionError, requests.Timeout) as err:
            raise RemoteError(f"GCE {what}: cannot reach Google: {type(err).__name__}") from err
        except api.NotFound as err:
            raise NotFound(f"GCE {what}: {err.message}") from err
        except (api.Unauthorized, api.Forbidden) as err:
            raise ConfigError(f"GCE {what}: access denied: {err.message}") from err
        except api.Conflict as err:
            raise Conflict(f"GCE {what}: {err.message}") from err
        except (api.TooManyRequests, api.ServiceUnavailable, api.RetryError,
                api.DeadlineExceeded) as err:
            raise RemoteError(f"GCE {what}: {err} (run the command again)") from err
        except api.GoogleAPICallError as err:
            raise BackendError(f"GCE {what}: {err.code}: {err.message}") from err

    def _wait(self, what: str, operation: Any, zone: str | None = None,
              timeout: float = 1800) -> None:
        """Wait until *operation* is done; BackendError with its first error if it failed."""
        from google.cloud import compute_v1

        done = compute_v1.Operation.Status.DONE
        deadline = time.monotonic() + timeout
        while operation.status != done:
            if time.monotonic() > deadline:
                raise GuestTimeout(f"GCE {what} did not finish within {timeout:.0f} s")
            if zone:
                operation = self._call(f"{what} (wait)", self.client("zone_operations").wait,
                                       project=self.project, zone=zone,
                                       operation=operation.name)
            else:
                operation = self._call(f"{what} (wait)",
                                       self.client("global_operations").wait,
                                       project=self.project, operation=operation.name)
        errors = list(operation.error.errors) if operation.error else []
        if errors:
            raise BackendError(f"GCE {what} failed: {errors[0].code}: {errors[0].message}")
