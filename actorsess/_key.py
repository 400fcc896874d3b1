"""What a session key may be: the one check every way into a session passes."""

from __future__ import annotations

from actorsess.exceptions import InvalidKeyError

MAX_KEY_LENGTH = 1024


def check_key(key: object) -> None:
    """Raise InvalidKeyError unless ``key`` is a non-empty str of acceptable length
    that every storage can hold: valid Unicode (no lone surrogates) and no NUL."""
    if isinstance(key, str) and 0 < len(key) <= MAX_KEY_LENGTH:
        if "\x00" in key:
            raise InvalidKeyError(f"session key {key[:60]!r} contains NUL ('\\x00')")
        if not key.isascii():
            try:
                key.encode()
            except UnicodeEncodeError as exc:
                raise InvalidKeyError(
                    f"session key {key[:60]!r} is not valid Unicode "
                    f"(lone surrogate at position {exc.start})"
                ) from None
        return
    raise InvalidKeyError(
        f"session key must be a non-empty str of at most {MAX_KEY_LENGTH} characters, "
        f"got {type(key).__name__} {str(key)[:60]!r}"
    )
