"""Timestamps as Capstan stores and shows them.

Stored: RFC 3339 with whole seconds and a ``Z`` or ``+hh:mm`` offset
(``2017-09-14T18:08:00+02:00``), which Go Capstan's ``time.Parse(time.RFC3339)``
reads. Read leniently, as Capstan does, plus the ``+hhmm`` form older pycapstan
wrote: RFC 3339 (fractions allowed), ``YYYY-MM-DD HH:MM[:SS]`` and YAML's own
timestamps. Shown in listings as ``YYYY-MM-DD HH:MM`` (local time of the stored
offset), or ``N/A`` when there is no readable time.
"""

from __future__ import annotations

import datetime as dt
import os
import re

__all__ = ["NOT_AVAILABLE", "build_time", "now", "parse", "rfc3339", "show"]

NOT_AVAILABLE = "N/A"
_STAMP = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)"
    r"\s*(?P<zone>[Zz]|[+-]\d{2}:?\d{2})?")
_HMS_COLONS = 2  # in HH:MM:SS (HH:MM has no seconds)
_MAX_TEXT = 64  # longer text is no timestamp (and is not scanned)


def rfc3339(when: dt.datetime) -> str:
    """*when* as RFC 3339, whole seconds, ``Z`` for UTC (a naive time is local)."""
    aware = when if when.tzinfo is not None else when.astimezone()
    text = aware.replace(microsecond=0).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def now() -> str:
    """The current time as RFC 3339 in UTC."""
    return rfc3339(dt.datetime.now(dt.UTC))


def build_time() -> str:
    """When an artefact is built: ``SOURCE_DATE_EPOCH`` when set (reproducible
    builds record a reproducible time), else :func:`now`."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not epoch.isdigit():
        return now()
    return rfc3339(dt.datetime.fromtimestamp(int(epoch), dt.UTC))


def parse(value: object) -> dt.datetime | None:
    """*value* (text or a YAML-loaded date/datetime) as a time, or None when it is
    no time Capstan would read (``N/A``, a bare date, anything else)."""
    if isinstance(value, dt.datetime):
        return _representable(value)
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        return None
    match = _STAMP.fullmatch(value.strip())
    if match is None:
        return None
    clock = match["time"] if match["time"].count(":") == _HMS_COLONS else match["time"] + ":00"
    zone = (match["zone"] or "").upper()
    if zone and zone != "Z" and ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"  # +0000, as pycapstan once wrote it
    try:
        return _representable(dt.datetime.fromisoformat(f"{match['date']}T{clock}{zone}"))
    except ValueError:  # 2017-13-45
        return None


def _representable(when: dt.datetime) -> dt.datetime | None:
    """*when*, or None when it has no local or UTC time (year 1 or 9999 near the edge)."""
    try:
        (when if when.tzinfo is not None else when.astimezone()).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None
    return when


def show(value: object) -> str:
    """*value* as a listing shows it: ``YYYY-MM-DD HH:MM`` or ``N/A``."""
    when = parse(value)
    return NOT_AVAILABLE if when is None else when.strftime("%Y-%m-%d %H:%M")
