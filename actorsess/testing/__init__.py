"""Helpers for testing bots that use actorsess (and for actorsess's own tests)."""

from actorsess.testing._botapi import LocalBotAPI
from actorsess.testing._clock import FakeClock
from actorsess.testing._cluster import LocalRedisCluster
from actorsess.testing._redis import RedisServer, free_port
from actorsess.testing._updates import message_update

__all__ = [
    "FakeClock",
    "LocalBotAPI",
    "LocalRedisCluster",
    "RedisServer",
    "free_port",
    "message_update",
]
