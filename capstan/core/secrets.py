"""Credentials stay in the process: redaction of log text, and which variables are secret.

:func:`redact` replaces what looks like a credential (AWS key ids, session tokens,
``Authorization`` and ``X-Amz-Security-Token`` headers, SigV4 ``Credential=`` and
signatures, GitHub tokens, passwords in URLs, ``NAME=value`` where NAME says password,
secret, token or key, and the value of every secret-named environment variable) with
``***``. :class:`RedactingFilter` applies it to every log record a handler emits.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

__all__ = ["MASK", "RedactingFilter", "redact", "secret_name"]

MASK = "***"
_MIN_SECRET = 6  # shorter values of secret-named variables are not searched for

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE"
                          r"|API_?KEY|ACCESS_?KEY|^AWS_", re.IGNORECASE)

_WORD = r"(?:password|passwd|passphrase|secret|token|api_?key|access_?key|private_?key)"
# Name characters around a secret word: bounded, and a match starts only where a name does,
# so a long run of name characters costs linear time (unbounded, it was cubic: a ReDoS).
_AFFIX = r"[\w.-]{0,128}"
_HEADER = r"(?:authorization|proxy-authorization|x-amz-security-token|x-amz-signature|cookie)"

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # a header or key in a dict's repr: 'Authorization': b'AWS4-HMAC-SHA256 ...'
    (re.compile(rf"""(?i)((?<![\w.-])['"]?{_AFFIX}(?:{_HEADER}|{_WORD}){_AFFIX}['"]?\s*[:=]\s*b?)"""
                r"""(['"])(?:\\.|(?!\2).)*\2"""), rf"\1\2{MASK}\2"),
    # a header line: Authorization: Bearer ...
    (re.compile(rf"(?im)^(\s*{_HEADER}\s*:\s*)\S.*$"), rf"\1{MASK}"),
    # NAME=value (also --env=DB_PASSWORD=..., query parameters, YAML-ish NAME: value)
    (re.compile(rf"""(?i)((?<![\w.-]){_AFFIX}{_WORD}{_AFFIX}\??(?:=|:[ \t]+))"""
                r"""(?!['"])(?:\\.|[^\s\\'",;&)}\]])+"""), rf"\1{MASK}"),
    (re.compile(r"(?i)\b((?:X-Amz-)?(?:Credential|Signature|Security-Token)=)[^\s,&'\"]+"),
     rf"\1{MASK}"),
    (re.compile(r"(?i)\b(Signature:?\s*)[0-9a-f]{64}\b"), rf"\1{MASK}"),
    (re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {MASK}"),
    (re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{16}\b"),
     MASK),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})\b"), MASK),
    # user:password@ in a URL
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+@"), rf"\1{MASK}@"),
)


def secret_name(name: str) -> bool:
    """Whether the environment variable or setting *name* holds a credential."""
    return bool(_SECRET_NAME.search(name))


def _secret_values(environ: Mapping[str, str]) -> list[str]:
    """Values of secret-named variables long enough to be recognised, longest first."""
    return sorted({v for k, v in environ.items() if secret_name(k) and len(v) >= _MIN_SECRET},
                  key=len, reverse=True)


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """*text* with every credential replaced by ``***``."""
    for value in _secret_values(os.environ if environ is None else environ):
        text = text.replace(value, MASK)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Redact a record's message, traceback and stack before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as usual
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
