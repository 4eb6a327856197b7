"""Network addresses from files and other hosts: what may stand in a command line.

An IP address is taken in its canonical form; an IPv6 zone (``%`` and any text after it,
spaces and commas included) means nothing on another host and is refused.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["is_host_address", "valid_ip"]

_MAX_TEXT = 64
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63}){0,126}")
_MAX_HOST_NAME = 253


def valid_ip(value: object) -> str | None:
    """*value* as a canonical IP address, or None when it is not one."""
    if not isinstance(value, str) or len(value) > _MAX_TEXT or "%" in value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def is_host_address(text: str) -> bool:
    """Whether *text* is a host name or an IP address."""
    return (bool(_HOSTNAME.fullmatch(text)) and len(text) <= _MAX_HOST_NAME) or \
        valid_ip(text) is not None
