"""Schema migrations: records upgraded on load and written back; migrate_all."""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
import pytest

from actorsess import CorruptSessionError, SessionConfig, SessionManager
from actorsess._record import encode_record

from .conftest import Events
from .helpers import PREFIX, put_record


def split_name(data: dict[str, Any]) -> dict[str, Any]:
    """Step 1: ``name`` becomes ``first`` and ``last``."""
    first, _, last = data.pop("name").partition(" ")
    return {**data, "first": first, "last": last}


def count_visits(data: dict[str, Any]) -> dict[str, Any]:
    """Step 2: a visit counter, starting at the number of apples."""
    return {**data, "visits": data.get("apples", 0)}


STEPS = [split_name, count_visits]


class Profile(pydantic.BaseModel):
    first: str = ""
    last: str = ""
    apples: int = 0
    visits: int = 0


def blank() -> dict[str, Any]:
    return {}


def old_profile() -> dict[str, Any]:
    return {"name": "", "apples": 0}


async def stored(factory: Any, key: str) -> bytes | None:
    [record] = await factory().load_many([PREFIX + key])
    return record  # type: ignore[no-any-return]


@pytest.mark.parametrize("typed", [False, True])
async def test_an_old_record_is_upgraded_on_load_and_written_back(
    storage_factory: Any, typed: bool, events: Events
) -> None:
    async with SessionManager(storage_factory(), initial=old_profile) as v0:
        await v0.update("ann", lambda s: s.update(name="Ann Lee", apples=3))
    initial: Any = Profile if typed else blank
    config = SessionConfig(flush_interval=60)
    m = SessionManager(
        storage_factory(), initial=initial, migrations=STEPS, config=config, logger=events.logger
    )
    async with m:
        value = await m.get("ann")
        expected = {"first": "Ann", "last": "Lee", "apples": 3, "visits": 3}
        assert (value.model_dump() if typed else value) == expected
        assert m.stats().dirty == 1  # written back by the flusher, not by the load
        await m.flush()
        record = await stored(storage_factory, "ann")
        assert record is not None and record.startswith(b"as1:2:~2:")
        assert orjson.loads(record.split(b":", 3)[3]) == expected
    [migrated] = events.named("session.migrated")
    assert (migrated["key"], migrated["from_schema"], migrated["to_schema"]) == ("ann", 0, 2)
    # Cold: a restart reads the upgraded record as it is, with nothing to write.
    async with SessionManager(
        storage_factory(), initial=initial, migrations=STEPS, config=config
    ) as again:
        value = await again.get("ann")
        assert (value.model_dump() if typed else value) == expected
        assert again.stats().dirty == 0


async def test_a_record_half_way_takes_only_the_steps_it_has_not_had(
    storage_factory: Any,
) -> None:
    await put_record(storage_factory(), "bo", b'{"first":"Bo","last":"","apples":2}', 4, schema=1)
    async with SessionManager(storage_factory(), initial=blank, migrations=STEPS) as m:
        assert await m.get("bo") == {"first": "Bo", "last": "", "apples": 2, "visits": 2}
        async with m.session("bo") as s:
            s["apples"] += 1  # a normal commit on top of the upgrade
    assert await stored(storage_factory, "bo") == encode_record(
        6, b'{"first":"Bo","last":"","apples":3,"visits":2}', 2
    )


async def test_a_failing_step_names_key_and_step_and_leaves_the_record(
    storage_factory: Any,
) -> None:
    await put_record(storage_factory(), "odd", b'{"apples":1}', 3)  # no "name"
    before = await stored(storage_factory, "odd")
    async with SessionManager(storage_factory(), initial=blank, migrations=STEPS) as m:
        with pytest.raises(CorruptSessionError) as caught:
            await m.get("odd")
        assert caught.value.key == "odd"
        assert "migration step 1 (split_name) failed" in str(caught.value)
        assert "KeyError" in str(caught.value)
        await m.flush()
    assert await stored(storage_factory, "odd") == before


async def test_records_of_a_newer_or_unknown_schema_are_refused_not_misread(
    storage_factory: Any,
) -> None:
    await put_record(storage_factory(), "new", b'{"a":1}', 3, schema=3)
    async with SessionManager(storage_factory(), initial=blank, migrations=STEPS) as m:
        with pytest.raises(CorruptSessionError, match="schema 3, newer than this manager's 2"):
            await m.get("new")
    async with SessionManager(storage_factory(), initial=blank) as plain:
        with pytest.raises(CorruptSessionError, match="schema 3, newer than this manager's 0"):
            await plain.get("new")


async def test_a_typed_schema_change_without_a_migration_is_a_clear_error(
    storage_factory: Any,
) -> None:
    await put_record(storage_factory(), "t", b'{"name":"Ann Lee","apples":"many"}', 1)
    async with SessionManager(storage_factory(), initial=Profile, migrations=STEPS) as m:
        with pytest.raises(CorruptSessionError, match="after migrating it from schema 0"):
            await m.get("t")


async def test_migrate_all_reports_then_upgrades_every_session(
    storage_factory: Any, events: Events
) -> None:
    storage = storage_factory()
    for i in range(120):
        await put_record(storage, f"u:{i}", orjson.dumps({"name": f"U {i}", "apples": i}), 1)
    await put_record(storage, "u:bad", b'{"apples":1}', 1)  # step 1 fails
    await put_record(storage, "u:done", b'{"first":"D","last":"","apples":0,"visits":0}', 1, 2)
    await put_record(storage, "other", b'{"name":"O P","apples":0}', 1)
    before = {key: await stored(storage_factory, key) for key in ("u:1", "u:bad", "other")}

    async with SessionManager(
        storage_factory(), initial=blank, migrations=STEPS, logger=events.logger
    ) as m:
        dry = await m.migrate_all(dry_run=True, prefix="u:", batch=25)
        assert (dry.scanned, dry.current, dry.migrated, dry.failed) == (122, 1, 120, 1)
        assert dry.dry_run and dry.schema == 2
        [(key, reason)] = dry.failures
        assert key == "u:bad" and "migration step 1 (split_name) failed" in reason
        assert await stored(storage_factory, "u:1") == before["u:1"]  # nothing written

        report = await m.migrate_all(prefix="u:", batch=25)
        assert (report.scanned, report.current, report.migrated, report.failed) == (122, 1, 120, 1)
        assert not report.dry_run
        assert m.stats().cached == 0  # each page was let go of once written
    logged = events.named("session.migrate_all")
    assert [(e["dry_run"], e["migrated"], e["failed"]) for e in logged] == [
        (True, 120, 1),
        (False, 120, 1),
    ]
    async with SessionManager(storage_factory(), initial=blank, migrations=STEPS) as again:
        assert await again.get("u:7") == {"first": "U", "last": "7", "apples": 7, "visits": 7}
        after = await again.migrate_all(dry_run=True)
        # The rest is current; "other" was outside the prefix; u:bad is left as it was.
        assert (after.current, after.migrated, after.failed) == (121, 1, 1)
    assert await stored(storage_factory, "u:bad") == before["u:bad"]
    assert await stored(storage_factory, "other") == before["other"]


async def test_migrations_must_be_a_list_of_functions() -> None:
    from actorsess import MemoryStorage

    with pytest.raises(TypeError, match=r"migrations\[1\] \(step 2\) must be a function"):
        SessionManager(MemoryStorage(), initial=blank, migrations=[split_name, "count"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="migrations must be a list of functions"):
        SessionManager(MemoryStorage(), initial=blank, migrations=split_name)  # type: ignore[arg-type]
