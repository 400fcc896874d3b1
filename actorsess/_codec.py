"""Encoding of session values: standard JSON, typed by ``initial``'s return type.

Decided once at construction (no per-call branching): plain dicts are written
by ``orjson`` (falling back to ``pydantic_core.to_json`` for what orjson does
not take: non-str keys, integers beyond 64 bits, sets, bytes, Decimals, models
inside the dict) and read by ``pydantic_core.from_json`` (which keeps big
integers exact, where ``orjson.loads`` would turn them into floats); pydantic
models through their own validators; dataclasses, TypedDicts and annotated
containers through a ``TypeAdapter``. A dict session refuses at commit what a
reload would give back changed (with ``strict_json``, the default, by reading
every commit's bytes back). Nothing is ever pickled.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import typing
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import orjson
import pydantic
import pydantic_core
from typing_extensions import is_typeddict

T = TypeVar("T")

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]


class DecodeFailure(ValueError):
    """Raised by a codec's ``decode``; carries a short, loggable reason."""


class SessionCodec(Protocol[T]):
    """An encoding of your own for ``SessionManager(..., codec=...)``: any object with
    these two methods (compressed or encrypted JSON, msgpack, a versioned format).

    ``decode(encode(v))`` must give back a value equal to ``v``; equal values
    should encode to equal bytes (a commit whose bytes did not change writes
    nothing). Whatever ``encode`` raises refuses the commit with
    ``SessionEncodeError``, and whatever ``decode`` raises makes the record
    ``CorruptSessionError`` (left untouched in storage).
    """

    def encode(self, value: T) -> bytes:
        """The bytes to store for ``value``."""
        ...

    def decode(self, payload: bytes) -> T:
        """The value ``payload`` was encoded from."""
        ...


class Codec(Generic[T]):
    """Turns session values into bytes and back, validating the shape on the way in."""

    __slots__ = (
        "_decode",
        "encode",
        "encode_common",
        "encode_option",
        "initial",
        "read_back",
        "runtime_type",
        "value_type",
    )

    def __init__(
        self,
        initial: Callable[[], T],
        *,
        strict_json: bool = True,
        custom: SessionCodec[T] | None = None,
    ) -> None:
        self.initial = initial
        self.value_type = _value_type(initial)
        self.runtime_type = _runtime_type(self.value_type)
        #: JSON bytes of a value; raises ValueError/TypeError for unencodable values.
        #: The bare function (no wrapper call), since every commit calls it.
        self.encode: Callable[[T], bytes]
        if custom is None:
            self.encode, self._decode = _build(self.value_type, strict_json)
        else:
            self.encode, self._decode = _custom(custom)
        #: For dict sessions with ``strict_json``: what a reload gives for the bytes
        #: ``encode_common`` returned. A value not equal to it must go to ``encode``,
        #: which refuses it naming the path. None where the bytes need no check
        #: (typed sessions keep their types through their schema).
        self.read_back: Callable[[bytes], Any] | None = None
        #: ``encode`` for the common values, called as ``encode_common(value, None,
        #: encode_option)``: for dict sessions the bare orjson call (no wrapper: every
        #: cached turn calls it). It may raise for a value ``encode`` handles (or
        #: refuses, naming why); then call that.
        self.encode_common: Callable[[T, None, int], bytes]
        self.encode_option = 0
        if self.encode in (_dict_to_json, _dict_to_json_unchecked):
            self.encode_common, self.encode_option = orjson.dumps, STRICT_JSON
            if strict_json:
                # Exact for what orjson.dumps wrote: it refuses integers beyond 64 bits.
                self.read_back = orjson.loads
        else:
            self.encode_common = _ignoring_options(self.encode)

    def decode(self, payload: bytes) -> T:
        """Value from JSON bytes; raises ``DecodeFailure`` naming what was wrong."""
        try:
            value: T = self._decode(payload)
        except Exception as exc:  # a codec of your own may raise anything
            raise DecodeFailure(_first_line(exc)) from exc
        return value

    def empty_blob(self) -> bytes | None:
        """The encoding of a fresh initial value, or None when ``initial`` cannot be
        called ahead of use (it raised)."""
        try:
            return self.fresh()[1]
        except Exception:
            return None

    def fresh(self) -> tuple[T, bytes]:
        """A new initial value and its encoding."""
        value = self.initial()
        return value, self.encode(value)


def _custom(codec: SessionCodec[Any]) -> tuple[Encoder, Decoder]:
    """The encoder and decoder of a codec of your own; its encoder checks that it
    gives bytes (anything else could not be stored)."""
    missing = [name for name in ("encode", "decode") if not callable(getattr(codec, name, None))]
    if missing:
        raise TypeError(
            f"codec must have encode(value) -> bytes and decode(bytes) -> value methods; "
            f"{type(codec).__name__} has no {' or '.join(missing)}"
        )
    encode = codec.encode

    def checked(value: Any) -> bytes:
        blob = encode(value)
        if not isinstance(blob, bytes):
            raise TypeError(f"codec.encode must return bytes, got {type(blob).__name__}")
        return blob

    return checked, codec.decode


def _value_type(initial: Callable[[], Any]) -> Any:
    try:
        hints = typing.get_type_hints(initial)
    except Exception:
        hints = {}
    annotated = hints.get("return")
    if annotated is not None and annotated is not Any:
        return annotated
    return type(initial())


def _runtime_type(value_type: Any) -> type:
    """The class every session value must be an instance of."""
    if is_typeddict(value_type):
        return dict
    origin = typing.get_origin(value_type) or value_type
    if not isinstance(origin, type):
        raise TypeError(f"unsupported session type {value_type!r}")
    return origin


def _build(value_type: Any, strict_json: bool) -> tuple[Encoder, Decoder]:
    origin = typing.get_origin(value_type) or value_type
    dict_to_json = _dict_to_json if strict_json else _dict_to_json_unchecked
    if value_type is dict or (origin is dict and _is_any(typing.get_args(value_type)[1:])):
        # dict[str, Any] is what an annotated ``initial`` of a dict session returns:
        # the same JSON rules as a bare dict, not a TypeAdapter that would turn a
        # datetime into a string on the way out.
        return dict_to_json, _dict_from_json
    if isinstance(origin, type) and issubclass(origin, pydantic.BaseModel):
        model: type[pydantic.BaseModel] = origin
        # The model's own serializer gives bytes; model_dump_json() would decode them
        # to str for .encode() to copy back (about 1 µs of a 2.5 µs encode).
        return (
            lambda v: v.__pydantic_serializer__.to_json(v, warnings="error")
        ), model.model_validate_json
    if (
        dataclasses.is_dataclass(origin)
        or is_typeddict(origin)
        or typing.get_origin(value_type) is not None
        or origin in (list, dict)
    ):
        try:
            adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(value_type)
        except pydantic.PydanticUserError:
            if not is_typeddict(origin):
                raise
            # typing.TypedDict before Python 3.12 cannot be validated by pydantic
            # (typing_extensions.TypedDict can): store it as a plain JSON object.
            return dict_to_json, _dict_from_json
        return (lambda v: adapter.dump_json(v, warnings="error")), adapter.validate_json
    raise TypeError(
        f"unsupported session type {value_type!r}: initial must return a dict, "
        "a dataclass, a TypedDict or a pydantic model"
    )


#: The fast encoding of dict sessions leaves to ``_dict_to_json`` what JSON would
#: turn into something else (datetimes, dict and list subclasses, dataclasses), as
#: orjson itself does with non-str keys, sets and integers beyond 64 bits.
STRICT_JSON = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _is_any(value_args: tuple[Any, ...]) -> bool:
    return value_args in ((Any,), (object,))


def _ignoring_options(encode: Encoder) -> Callable[[Any, None, int], bytes]:
    def call(value: Any, default: None = None, option: int = 0) -> bytes:
        return encode(value)

    return call


def _dict_to_json(value: Any) -> bytes:
    """JSON of a dict session, refusing what a reload would give back changed.

    A dict session holds what JSON holds, so that what a block reads after a
    reload is what it committed: a non-str key (``5000`` would come back as
    ``"5000"``, and a second key be added next to it), a set, a tuple, a
    datetime, NaN or an infinity, an enum member, a UUID, a dict or list
    subclass, or any other object raises ValueError naming where it is.
    Integers of any size stay exact.
    """
    blob = _dict_to_json_unchecked(value)
    if _dict_from_json(blob) != value:
        _refuse_what_json_would_change(value, strict=True)
        # Equal to nothing the walk knows (say, a str subclass with its own __eq__).
        raise ValueError("the session would read back changed after a reload")
    return blob


def _dict_to_json_unchecked(value: Any) -> bytes:
    """JSON of a dict session under ``strict_json=False``: what orjson refuses or
    passes through (non-str keys, sets, datetimes, subclasses, other objects) is
    still refused; tuples are written as lists, NaN and infinities as null, enum
    members as their values, UUIDs as strings."""
    try:
        return orjson.dumps(value, None, STRICT_JSON)
    except TypeError:
        _refuse_what_json_would_change(value, strict=False)
        return pydantic_core.to_json(value, inf_nan_mode="null")


def _refuse_what_json_would_change(value: Any, *, strict: bool) -> None:
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        kind = type(item)
        if kind is dict:
            for key, child in item.items():
                if not isinstance(key, str):
                    shown = f"<{type(key).__name__} {key!r}>"
                    raise ValueError(
                        f"{_join(where, shown)}: dict keys must be str; JSON would store "
                        f"{key!r} as {str(key)!r} and a reload would read it back changed"
                    )
                stack.append((child, _join(where, key)))
        elif kind is list or (kind is tuple and not strict):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, float) and strict and not math.isfinite(item):
            shown = "NaN" if math.isnan(item) else repr(item)
            raise ValueError(
                f"{where or 'the session'}: {shown}; JSON would store null "
                "(store None, or a string)"
            )
        elif item is None or isinstance(item, (str, int, float)):
            continue  # subclasses too: a reload gives an equal str, int or float
        else:
            raise ValueError(f"{where or 'the session'}: {_why_not_json(item)}")


def _why_not_json(item: Any) -> str:
    name = type(item).__name__
    if isinstance(item, tuple):
        return f"a {name}; JSON would store a list (use a list)"
    if isinstance(item, (set, frozenset)):
        return f"a {name}; JSON would store a list (use a list, or a typed session)"
    if isinstance(item, (datetime.date, datetime.time, datetime.timedelta)):
        return (
            f"a {name}; JSON would store a string (store item.isoformat(), or use a "
            "typed session, which keeps the type)"
        )
    if isinstance(item, dict):
        return f"a {name} (a dict subclass); JSON would store a plain dict"
    if isinstance(item, list):
        return f"a {name} (a list subclass); JSON would store a plain list"
    return f"a {name} is not JSON (use a typed session to keep it)"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _dict_from_json(payload: bytes) -> dict[str, Any]:
    value = pydantic_core.from_json(payload)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "value"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"does not match {exc.title}: {where}: {first['msg']}{more}"[:300]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
