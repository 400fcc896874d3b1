"""Sessions are typed by ``initial``'s return type (checked by mypy over this file)."""

from __future__ import annotations

import dataclasses
from typing import Any, assert_type

import pydantic
from aiogram.types import TelegramObject
from typing_extensions import TypedDict

from actorsess import MemoryStorage, SessionManager, SessionTurn
from actorsess.aiogram import SessionMiddleware


@dataclasses.dataclass
class Basket:
    apples: int = 0


class Cart(pydantic.BaseModel):
    items: list[str] = []


class Prefs(TypedDict):
    lang: str


def new_prefs() -> Prefs:
    return {"lang": "en"}


async def test_session_types_follow_initial() -> None:
    """The manager, its turns and the values they yield carry initial's type."""
    baskets = SessionManager(MemoryStorage(), initial=Basket)
    carts = SessionManager(MemoryStorage(), initial=Cart)
    prefs = SessionManager(MemoryStorage(), initial=new_prefs)
    assert_type(baskets, SessionManager[Basket])
    assert_type(prefs, SessionManager[Prefs])
    async with baskets.session("k") as basket:
        assert_type(basket, Basket)
        basket.apples += 1
    async with carts.session("k") as cart:
        assert_type(cart, Cart)
        cart.items.append("pear")
    turn = prefs.session("k")
    assert_type(turn, SessionTurn[Prefs])
    async with turn as pref:
        assert_type(pref["lang"], str)
    assert_type(await baskets.get("k"), Basket)
    assert_type(await carts.update("k", lambda c: len(c.items)), int)
    assert (await baskets.get("k")).apples == 1
    assert await carts.update("k", lambda c: len(c.items)) == 1
    for manager in (baskets, carts, prefs):
        await manager.close()


def prefs_from_update(update: TelegramObject, data: dict[str, Any]) -> Prefs:
    return {"lang": data["event_from_user"].language_code or "en"}


def test_a_first_touch_factory_must_return_the_session_type() -> None:
    """The middleware's ``initial`` returns the manager's session type; mypy (strict,
    with unused ignores reported) checks that the mismatch below is an error."""
    prefs = SessionManager(MemoryStorage(), initial=new_prefs)
    baskets = SessionManager(MemoryStorage(), initial=Basket)
    assert_type(SessionMiddleware(prefs, initial=prefs_from_update), SessionMiddleware[Prefs])
    SessionMiddleware(baskets, initial=prefs_from_update)  # type: ignore[arg-type]
