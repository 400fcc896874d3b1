"""Where shared ownership keeps its leases and sends its notices in Redis.

Every session key ``K`` has a lease key holding the token of the manager that
owns it (``<manager id>:<acquisition number>``), with a PX expiry. Handover
notices travel over pub/sub, one channel per manager (``CHANNEL_PREFIX +
manager id``); the scripts are in ``_redis_lua``.
"""

from __future__ import annotations

import functools

from redis.crc import key_slot

CHANNEL_PREFIX = "actorsess:lease:"
#: Sits in every lease key and in no session key (keys and prefixes refuse NUL),
#: so a lease key can never be a session's key, whatever the prefix.
_LEASE_MARK = "\x00lease\x00"


def owner_marker(space: str) -> str:
    """The key naming who serves the key space ``space`` (a ``key_prefix``)."""
    return space + "\x00owner"


def lease_key(key: str) -> str:
    """The lease key of record ``key``: ``{<tag>}\\0lease\\0<key>``.

    ``<tag>`` hashes to ``key``'s cluster slot, so a script can touch both: the
    key's own hash tag when it has one, the whole key when it has no ``}``, or
    else a short string chosen for that slot. The key itself follows the mark,
    so two distinct keys never share a lease key.
    """
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    if end > start + 1:
        tag = key[start + 1 : end]
    elif "}" not in key:
        tag = key
    else:
        tag = _tag_of_slot()[key_slot(key.encode())]
    return "{" + tag + "}" + _LEASE_MARK + key


@functools.cache
def _tag_of_slot() -> list[str]:
    """A short string per cluster slot that hashes to it (built once, ~0.15 s)."""
    tags: list[str | None] = [None] * 16384
    missing, number = 16384, 0
    while missing:
        candidate = format(number, "x")
        slot = key_slot(candidate.encode())
        if tags[slot] is None:
            tags[slot] = candidate
            missing -= 1
        number += 1
    return [tag or "" for tag in tags]
