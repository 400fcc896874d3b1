"""Which ``Ownership`` a manager gets for its configuration.

The one module that knows both implementations, so that the manager imports
neither the leased one nor the rule for choosing.
"""

from __future__ import annotations

from actorsess._config import SessionConfig
from actorsess._context import Context
from actorsess._leases import LeaseKeeper
from actorsess._ownership import LocalOwnership, Ownership
from actorsess.exceptions import ConfigError
from actorsess.storage.base import LeaseStorage, Storage


def check_ownership(config: SessionConfig, storage: Storage) -> None:
    """Raise ``ConfigError`` when ``storage`` cannot serve ``config.ownership``."""
    if config.ownership == "shared" and not isinstance(storage, LeaseStorage):
        raise ConfigError(
            "ownership",
            "'shared' (several processes on one Redis, with leases and fencing) needs a "
            f"storage with leases, such as RedisStorage; got {type(storage).__name__}",
        )


def ownership_for(context: Context) -> Ownership:
    """``LeaseKeeper`` for ``ownership="shared"``, else ``LocalOwnership``."""
    storage = context.storage
    if context.config.ownership == "shared":
        assert isinstance(storage, LeaseStorage)  # check_ownership ran at construction
        return LeaseKeeper(context, storage)
    return LocalOwnership(context)
