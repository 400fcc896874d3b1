"""SessionConfig: validation names the field; from_env reads ACTORSESS_*."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from actorsess import ConfigError, MemoryStorage, SessionConfig, SessionManager


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("flush_interval", -1),
        ("flush_interval", float("nan")),
        ("max_cached", 0),
        ("max_batch", 1.5),
        ("max_dirty", True),
        ("ttl", 0),
        ("write_timeout", 0),
        ("ownership", "everyone"),
        ("lease_time", 0),
        ("lease_wait_timeout", -1),
        ("key_prefix", 3),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    """Each invalid setting raises ConfigError naming its field."""
    with pytest.raises(ConfigError, match=f"SessionConfig.{field}"):
        SessionConfig(**{field: value})  # type: ignore[arg-type]


def test_config_is_frozen_and_keyword_only() -> None:
    """Config objects cannot be mutated or built positionally."""
    config = SessionConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.ttl = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        SessionConfig(1.0)  # type: ignore[call-arg]


def test_from_env_reads_prefixed_variables() -> None:
    """ACTORSESS_* variables fill the matching fields; 'none' clears optional ones."""
    env = {
        "ACTORSESS_FLUSH_INTERVAL": "0.5",
        "ACTORSESS_MAX_CACHED": "123",
        "ACTORSESS_TTL": "3600",
        "ACTORSESS_KEY_PREFIX": "bot7:",
        "ACTORSESS_BACKPRESSURE_TIMEOUT": "none",
    }
    config = SessionConfig.from_env(env, max_batch=50)
    assert config.flush_interval == 0.5
    assert config.max_cached == 123
    assert config.ttl == 3600 and config.ttl_ms == 3_600_000
    assert config.key_prefix == "bot7:"
    assert config.backpressure_timeout is None
    assert config.max_batch == 50


def test_from_env_bad_value_names_the_variable() -> None:
    """A non-numeric value names the environment variable it came from."""
    with pytest.raises(ConfigError, match="ACTORSESS_MAX_CACHED='lots' is not a number"):
        SessionConfig.from_env({"ACTORSESS_MAX_CACHED": "lots"})
    with pytest.raises(ConfigError, match="SessionConfig.max_cached"):
        SessionConfig.from_env({"ACTORSESS_MAX_CACHED": "0"})
    with pytest.raises(ConfigError, match="SessionConfig.nonsense"):
        SessionConfig.from_env({}, nonsense=1)


def test_shared_ownership_needs_a_storage_with_leases() -> None:
    """Multi-process ownership on a storage without leases fails at construction."""
    with pytest.raises(ConfigError, match="SessionConfig.ownership.*MemoryStorage"):
        SessionManager(MemoryStorage(), initial=dict, config=SessionConfig(ownership="shared"))


def test_from_env_accepts_numbers_as_people_write_them() -> None:
    """``1e4``, ``10_000`` and ``10000.0`` are all 10,000; ``1.5`` is not a whole number."""
    for text in ("1e4", "10_000", "10000.0", " 10000 "):
        config = SessionConfig.from_env({"ACTORSESS_MAX_CACHED": text})
        assert config.max_cached == 10_000
    with pytest.raises(ConfigError, match="ACTORSESS_MAX_CACHED='1.5' is not a whole number"):
        SessionConfig.from_env({"ACTORSESS_MAX_CACHED": "1.5"})


def test_from_env_reads_switches_as_people_write_them() -> None:
    """A bool setting takes true/false, yes/no, on/off, 1/0 in any case, and nothing else."""
    for text, expected in (("off", False), ("FALSE", False), ("0", False), ("Yes", True)):
        assert SessionConfig.from_env({"ACTORSESS_STRICT_JSON": text}).strict_json is expected
    with pytest.raises(ConfigError, match="ACTORSESS_STRICT_JSON='maybe' is not true/false"):
        SessionConfig.from_env({"ACTORSESS_STRICT_JSON": "maybe"})
    with pytest.raises(ConfigError, match="SessionConfig.strict_json"):
        SessionConfig(strict_json=1)  # type: ignore[arg-type]


def test_from_env_warns_about_a_misspelt_variable() -> None:
    """An ACTORSESS_* variable that names no setting is not ignored silently: a warning
    names it and the closest setting. The examples' ACTORSESS_REDIS_URL is known."""
    with pytest.warns(UserWarning, match="ACTORSESS_FLUSH_INTERVL .*ACTORSESS_FLUSH_INTERVAL"):
        config = SessionConfig.from_env(
            {"ACTORSESS_FLUSH_INTERVL": "5", "ACTORSESS_REDIS_URL": "redis://x"}
        )
    assert config.flush_interval == SessionConfig().flush_interval


async def test_redis_waits_for_the_documented_load_timeout() -> None:
    """A Redis that accepts connections but never answers (SIGSTOPped) fails a load after
    load_timeout, with that timeout named, not after redis-py's own 5 s."""
    import time

    from actorsess import RedisStorage, SessionManager, StorageError
    from actorsess.testing import RedisServer

    with RedisServer() as server:
        config = SessionConfig(load_timeout=5.6)
        manager = SessionManager[dict[str, int]](
            RedisStorage.from_url(server.url), initial=dict, config=config
        )
        await manager.start()
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StorageError, match="timed out after 5.6s"):
                await manager.get("k")
            assert time.monotonic() - started >= 5.5
        finally:
            server.resume()
        await manager.close()


def test_the_configuration_page_lists_every_field_with_its_default_and_variable() -> None:
    """docs/configuration.md's table: one row per field, in order, with the default
    the dataclass really has and the variable ``from_env`` really reads."""
    page = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    rows = [
        [cell.strip() for cell in line.split("|")[1:4]]
        for line in page.read_text().splitlines()
        if re.match(r"\| `[a-z_]+` \| `", line)
    ]
    fields = dataclasses.fields(SessionConfig)
    assert [name for name, _, _ in rows] == [f"`{field.name}`" for field in fields]
    for (_, default, variable), field in zip(rows, fields, strict=True):
        assert default.split(" ")[0] == f"`{field.default!r}`", field.name
        assert variable == f"`ACTORSESS_{field.name.upper()}`", field.name
        raw = "none" if field.default is None else str(field.default)
        from_env = SessionConfig.from_env({variable.strip("`"): raw})  # the variable is read
        assert getattr(from_env, field.name) == field.default, field.name
