"""Passwords never reach logs, reprs or error messages."""

from __future__ import annotations

import re

# redis-py reads a password from the query too (``?password=...``).
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pass)=)[^&]*")


def redact_url(url: str) -> str:
    """``redis://user:secret@host/0`` -> ``redis://user:***@host/0``.

    Works on the raw text rather than a URL parser: a password with an
    unencoded ``/``, ``#``, ``?`` or ``@`` makes parsers split it into the
    path, fragment or host, where it would be shown. Hosts never contain ``@``,
    so everything before the last ``@`` is the user information.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparseable url>" if "@" in url else _QUERY_SECRET.sub(r"\1***", url)
    at = rest.rfind("@")
    if at >= 0:
        userinfo = rest[:at]
        user, colon, _ = userinfo.partition(":")
        shown = f"{user}:***" if colon or not user else user
        if not colon and user:
            # ``redis://secret@host``: redis-py takes a lone user part as the username,
            # but some clients read it as the password; show neither.
            shown = "***"
        rest = shown + rest[at:]
    return scheme + sep + _QUERY_SECRET.sub(r"\1***", rest)
