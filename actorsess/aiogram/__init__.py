"""aiogram 3 integration: session middleware, FSM storage, events isolation and the
webhook handler of partitioned workers."""

from actorsess.aiogram._forwarding import ForwardingRequestHandler
from actorsess.aiogram._fsm import ActorEventIsolation, ActorFSMStorage
from actorsess.aiogram._import import ImportReport, import_aiogram_fsm
from actorsess.aiogram._keys import KeyFunction, session_key, strategy_key
from actorsess.aiogram._middleware import LazySession, SessionMiddleware, SessionOrderError

__all__ = [
    "ActorEventIsolation",
    "ActorFSMStorage",
    "ForwardingRequestHandler",
    "ImportReport",
    "KeyFunction",
    "LazySession",
    "SessionMiddleware",
    "SessionOrderError",
    "import_aiogram_fsm",
    "session_key",
    "strategy_key",
]
