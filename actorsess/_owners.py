"""Which ``Ownership`` a manager gets for its configuration.

The one module that knows every implementation, so that the manager imports
neither the leased nor the partitioned one, nor the rule for choosing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actorsess._config import SessionConfig
from actorsess._context import Context
from actorsess._leases import LeaseKeeper
from actorsess._ownership import LocalOwnership, Ownership
from actorsess._partitioned import PartitionOwnership
from actorsess._partitions import Partitions
from actorsess.exceptions import ConfigError
from actorsess.storage.base import LeaseStorage, Storage


def check_ownership(config: SessionConfig, storage: Storage, partitions: Partitions | None) -> None:
    """Raise ``ConfigError`` when ``storage`` (and ``partitions``) cannot serve
    ``config.ownership``."""
    if config.ownership == "partitioned":
        if partitions is None:
            raise ConfigError(
                "ownership",
                "'partitioned' needs the worker's Partitions: "
                "SessionManager(..., partitions=Partitions(storage))",
            )
        if partitions.store.client is not getattr(storage, "client", None):
            raise ConfigError(
                "ownership",
                "'partitioned': the manager's storage and its Partitions must use one "
                "Redis client (Partitions(storage) with this manager's RedisStorage)",
            )
    elif partitions is not None:
        raise ConfigError(
            "ownership",
            f"partitions= is for ownership='partitioned'; this config has {config.ownership!r}",
        )
    if config.ownership == "shared" and not isinstance(storage, LeaseStorage):
        raise ConfigError(
            "ownership",
            "'shared' (several processes on one Redis, with leases and fencing) needs a "
            f"storage with leases, such as RedisStorage; got {type(storage).__name__}",
        )


def ownership_for(
    context: Context, partitions: Partitions | None, decode: Callable[[bytes], Any]
) -> Ownership:
    """``LeaseKeeper`` for ``ownership="shared"``, ``PartitionOwnership`` for
    ``"partitioned"``, else ``LocalOwnership``."""
    storage = context.storage
    if partitions is not None:  # check_ownership: given exactly for "partitioned"
        return PartitionOwnership(context, partitions, decode)
    if context.config.ownership == "shared":
        assert isinstance(storage, LeaseStorage)  # check_ownership ran at construction
        return LeaseKeeper(context, storage)
    return LocalOwnership(context)
