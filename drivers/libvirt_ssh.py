"""The SSH transport a libvirt URI names (``qemu+ssh://[user@]host[:port]/system?keyfile=
...&known_hosts=...&no_verify=1``), as an OpenSSH command line for our own remote commands.

Every part of the URI is checked before it reaches an argv: a host, user or file that
starts with ``-`` (an ssh option, e.g. ``-oProxyCommand=...``), a control character, a
password in the URI or an alternative ``command=`` is refused. The remote command is one
string of :func:`shlex.quote`-d words (ssh hands it to the remote user's shell), after
``--`` and the destination. No password is ever asked for (``BatchMode=yes``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from capstan.core.errors import ConfigError, UnsupportedOperation
from capstan.core.secrets import redact

__all__ = ["SSH_TRANSPORTS", "SshTarget"]

#: the URI transports that reach the host through SSH (libvirt: ``driver+TRANSPORT://``)
SSH_TRANSPORTS = frozenset({"ssh", "libssh", "libssh2"})
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TRUE = frozenset({"1", "yes", "true"})
#: how long ssh may take to connect (seconds)
CONNECT_TIMEOUT = 15


def _refuse(uri: str, why: str) -> ConfigError:
    return ConfigError(f"libvirt_uri {redact(uri)!r}: {why}")


def _params(query: str) -> dict[str, str]:
    """The URI's query parameters, %-decoded as libvirt decodes them (``+`` stays)."""
    params = {}
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        params[unquote(key).lower()] = unquote(value)
    return params


def _file(uri: str, key: str, value: str | None) -> str | None:
    """A file named by the URI: not an option, no control character; ``%`` (an ssh
    token) is escaped so the name reaches ssh as written."""
    if value is None:
        return None
    if not value or value.startswith("-") or _CONTROL.search(value):
        raise _refuse(uri, f"{key} must be a file name, not an option or control "
                      "characters (value not shown)")
    return value.replace("%", "%%")


@dataclass(frozen=True)
class SshTarget:
    """Where and how ssh logs in: *host*, *user*, *port*, the *keyfile*, the
    *known_hosts* file, and *no_verify* (do not check the host key)."""

    host: str
    user: str | None = None
    port: int | None = None
    keyfile: str | None = None
    known_hosts: str | None = None
    no_verify: bool = False

    @classmethod
    def parse(cls, uri: str) -> SshTarget:
        """The target of a libvirt *uri* that uses an SSH transport (else
        UnsupportedOperation; a malformed or hostile part is a ConfigError)."""
        try:
            parts = urlparse(uri)
            port = parts.port
        except ValueError as err:
            raise _refuse(uri, "not a valid URI (bad host or port)") from err
        transport = parts.scheme.partition("+")[2].lower()
        if transport not in SSH_TRANSPORTS:
            raise UnsupportedOperation("libvirt", "reading a remote host's logs without an "
                                       "SSH transport (use qemu+ssh://)")
        host = parts.hostname or ""
        if parts.password:
            raise _refuse(uri, "a password in the URI is refused: use keys")
        if not _HOST.fullmatch(host):
            raise _refuse(uri, "the host must be a host name or address")
        if parts.username is not None and not _USER.fullmatch(unquote(parts.username)):
            raise _refuse(uri, "the user must be a user name")
        params = _params(parts.query)
        if "command" in params:
            raise _refuse(uri, "command= (another ssh program) is not supported")
        known = _file(uri, "known_hosts", params.get("known_hosts"))
        if known is not None and any(c in known for c in "\"\\"):
            raise _refuse(uri, "known_hosts must not contain quotes or backslashes")
        return cls(host, None if parts.username is None else unquote(parts.username), port,
                   _file(uri, "keyfile", params.get("keyfile")), known,
                   params.get("no_verify", "").lower() in _TRUE)

    def argv(self, command: Sequence[str]) -> list[str]:
        """The ssh command line that runs *command* (its words quoted) on the host."""
        argv = ["ssh", "-T", "-x", "-a", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                "-o", f"ConnectTimeout={CONNECT_TIMEOUT}", "-o", "ClearAllForwardings=yes"]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.user is not None:
            argv += ["-l", self.user]
        if self.keyfile is not None:
            argv += ["-i", self.keyfile]
        if self.known_hosts is not None:
            argv += ["-o", f'UserKnownHostsFile="{self.known_hosts}"']
        elif self.no_verify:
            argv += ["-o", "UserKnownHostsFile=/dev/null"]  # nothing checked, nothing kept
        if self.no_verify:
            argv += ["-o", "StrictHostKeyChecking=no"]
        return [*argv, "--", self.host, " ".join(shlex.quote(word) for word in command)]
