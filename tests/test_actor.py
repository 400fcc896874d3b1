"""SessionActor's invariants, held by its own methods (no other module assigns its
slots): dirty <=> version > persisted_version, versions never go back, an actor
with live waiters is held, and the turn passes in arrival order."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path

import pytest

import actorsess
from actorsess._actor import SessionActor, Status


def loaded(version: int = 0, blob: bytes = b'{"n":0}') -> SessionActor[dict[str, int]]:
    actor: SessionActor[dict[str, int]] = SessionActor("k", "actorsess:k")
    actor.loaded(json.loads(blob), blob, version, None)
    return actor


def status(actor: SessionActor[dict[str, int]]) -> Status:
    return actor.status  # (read through a call: mypy would keep an earlier narrowing)


def test_a_loaded_actor_is_ready_and_clean_at_the_stored_version() -> None:
    actor = loaded(version=7)
    assert actor.status is Status.READY
    assert actor.version == actor.persisted_version == 7
    assert not actor.dirty
    assert actor.droppable


def test_commit_says_whether_it_made_the_session_dirty() -> None:
    actor = loaded(version=3)
    assert actor.commit(b'{"n":1}', False, None) is True  # newly dirty: tell the flusher
    assert actor.dirty and actor.version == 4
    assert actor.commit(b'{"n":2}', False, None) is False  # already queued
    assert actor.version == 5 and actor.blob == b'{"n":2}'
    assert not actor.droppable  # nobody may forget an unwritten change


def test_written_marks_clean_only_up_to_the_version_written_and_never_goes_back() -> None:
    actor = loaded(version=1)
    actor.commit(b'{"n":1}', False, None)
    actor.commit(b'{"n":2}', False, None)
    actor.written(2)  # a round that snapshotted version 2 landed ...
    assert actor.dirty  # ... but version 3 is not in storage yet
    actor.written(3)
    assert not actor.dirty
    actor.written(2)  # a late report of an older write
    assert actor.persisted_version == 3 and not actor.dirty


def test_a_refused_write_leaves_the_actor_clean_with_the_error_for_its_next_turn() -> None:
    actor = loaded(version=1)
    actor.commit(b'{"n":1}', False, None)
    error = RuntimeError("newer version stored")
    actor.refused(error)
    assert not actor.dirty and actor.error is error
    actor.clear_error()
    assert actor.error is None


def test_versions_of_an_unknown_outcome_are_skipped_and_the_session_stays_dirty() -> None:
    actor = loaded(version=4)
    actor.skip_versions(2)
    assert actor.version == 6 and actor.dirty


def test_raise_version_only_ever_raises() -> None:
    actor = loaded(version=9)
    actor.raise_version(5)
    assert actor.version == 9
    actor.raise_version(12)
    assert actor.version == actor.persisted_version == 12


def test_a_group_write_makes_the_new_blob_committed_and_stored_at_once() -> None:
    actor = loaded(version=2)
    actor.written_together(b'{"n":5}', False)
    assert actor.blob == b'{"n":5}' and actor.version == actor.persisted_version == 3
    assert not actor.dirty


def test_rollback_restores_the_committed_value() -> None:
    actor = loaded(blob=b'{"n":3}')
    assert actor.value is not None
    actor.value["n"] = 99  # an edit inside a block that then raises
    actor.rollback(json.loads)
    assert actor.value == {"n": 3}


def test_an_upgraded_record_is_a_change_to_write() -> None:
    actor = loaded(version=2)
    actor.upgraded(deleted=False)
    assert actor.dirty and actor.version == 3


def test_loading_is_over_when_the_future_is_detached() -> None:
    async def run() -> None:
        actor: SessionActor[dict[str, int]] = SessionActor("k", "actorsess:k")
        future = asyncio.get_running_loop().create_future()
        actor.start_loading(future)
        assert status(actor) is Status.LOADING and not actor.droppable
        actor.load_failed(OSError("down"))
        assert status(actor) is Status.FAILED
        assert actor.end_loading() is future and actor.load_future is None

    asyncio.run(run())


def test_the_turn_passes_in_arrival_order_and_held_covers_every_waiter() -> None:
    async def run() -> list[int]:
        actor = loaded()
        actor.hold()
        order: list[int] = []

        async def waiter(n: int) -> None:
            await actor.acquire()
            assert actor.held  # handed over: still held
            order.append(n)
            actor.release()

        tasks = [asyncio.create_task(waiter(n)) for n in range(5)]
        await asyncio.sleep(0)
        assert actor.held and actor.queued() == 5 and not actor.droppable
        assert actor.release() is False  # handed to the first waiter, not freed
        await asyncio.gather(*tasks)
        assert not actor.held and actor.queued() == 0 and actor.droppable
        return order

    assert asyncio.run(run()) == [0, 1, 2, 3, 4]


def test_the_lru_bits_are_the_actors_own() -> None:
    actor = loaded()
    assert actor.second_chance() is False
    actor.mark_used()
    assert actor.second_chance() is True
    assert actor.second_chance() is False  # one chance per use
    actor.hold_cached(object())
    assert actor.second_chance() is True
    actor.park()
    assert actor.parked
    actor.unpark()
    assert not actor.parked


LIBRARY = Path(actorsess.__file__).parent


def _assigned(targets: list[ast.expr]) -> list[ast.expr]:
    """What an assignment binds (tuple targets unpacked; not what a subscript reads)."""
    found: list[ast.expr] = []
    for target in targets:
        if isinstance(target, ast.Tuple | ast.List):
            found += _assigned(list(target.elts))
        elif isinstance(target, ast.Starred):
            found += _assigned([target.value])
        else:
            found.append(target)
    return found


#: Assignments to a SessionTurn's public ``value`` (its setter calls ``replace``).
TURN_VALUE_SETTERS = {"new.value", "turn.value", "self._turn.value"}


@pytest.mark.parametrize(
    "path",
    sorted(p for p in LIBRARY.rglob("*.py") if p.name != "_actor.py"),
    ids=lambda p: str(p.relative_to(LIBRARY)),
)
def test_no_other_module_assigns_an_actors_slots(path: Path) -> None:
    """The rule of this file, checked on the source: the actor's state changes only
    through its methods."""
    source = path.read_text()
    slots = set(SessionActor.__slots__)
    offenders = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for part in _assigned(targets):
            if (
                isinstance(part, ast.Attribute)
                and part.attr in slots
                and isinstance(part.value, ast.Name)
                and part.value.id not in {"self", "cls"}
                and ast.unparse(part) not in TURN_VALUE_SETTERS
            ):
                offenders.append(f"line {part.lineno}: {ast.unparse(part)}")
    assert offenders == []
