"""Prometheus metrics for session managers, read from ``stats()`` at each scrape.

Needs ``prometheus-client`` (``pip install "actorsess[prometheus]"``)::

    from actorsess.prometheus import register_prometheus

    register_prometheus(sessions)                     # default registry, namespace = key_prefix
    register_prometheus(profiles, namespace="profile")

Every metric has one label, ``namespace``, one value per registered manager; no
label per key (a hot chat is found with ``manager.hot_keys()`` instead). The
numbers are ``stats()``'s, so the metrics and ``stats()`` never disagree, and
nothing is counted twice: a scrape costs one ``stats()`` call per manager.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from actorsess._manager import SessionManager

__all__ = ["SessionCollector", "register_prometheus"]


class _Metric(NamedTuple):
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily]
    name: str
    help: str
    #: The ``SessionStats`` field it reports.
    field: str


_GAUGE, _COUNTER = GaugeMetricFamily, CounterMetricFamily
# Counters are exposed with the ``_total`` suffix Prometheus adds.
_METRICS = (
    _Metric(_GAUGE, "sessions_cached", "Sessions held in memory (LRU plus parked).", "cached"),
    _Metric(
        _GAUGE,
        "sessions_parked",
        "Sessions past the LRU's size kept until written or idle (never dropped).",
        "parked",
    ),
    _Metric(_GAUGE, "sessions_dirty", "Sessions changed but not yet written.", "dirty"),
    _Metric(_GAUGE, "blocks_active", "Session blocks inside or waiting for their turn.", "active"),
    _Metric(
        _GAUGE,
        "oldest_unwritten_seconds",
        "Age of the oldest change not yet written: what a crash now would lose.",
        "oldest_unwritten",
    ),
    _Metric(_COUNTER, "loads", "Batched load calls made to storage.", "loads"),
    _Metric(
        _COUNTER,
        "sessions_loaded",
        "Sessions read from storage: the cache's misses.",
        "sessions_loaded",
    ),
    _Metric(
        _COUNTER,
        "turns",
        "Session blocks entered (counted from register_prometheus on).",
        "turns",
    ),
    _Metric(_COUNTER, "flushes", "Successful batched writes.", "flushes"),
    _Metric(
        _COUNTER, "sessions_written", "Sessions written (or deleted) by those writes.", "written"
    ),
    _Metric(
        _COUNTER,
        "evictions",
        "Sessions that left memory (parked ones are not counted until they go).",
        "evictions",
    ),
    _Metric(
        _COUNTER,
        "storage_errors",
        "Failed storage calls (loads and writes) and corrupt records met.",
        "errors",
    ),
    _Metric(
        _COUNTER,
        "write_conflicts",
        "Writes refused by the version fence (another writer had newer data).",
        "conflicts",
    ),
    _Metric(
        _COUNTER,
        "write_failures",
        "Batched writes that failed; each is retried.",
        "write_failures",
    ),
    _Metric(
        _COUNTER,
        "write_timeouts",
        "Batched writes that timed out (outcome unknown; retried, fenced).",
        "write_timeouts",
    ),
    _Metric(
        _COUNTER,
        "backpressure_waits",
        "Session blocks that waited for room (max_dirty reached).",
        "backpressure_waits",
    ),
    _Metric(
        _COUNTER,
        "backpressure_timeouts",
        "Session blocks that gave up waiting for room.",
        "backpressure_timeouts",
    ),
    _Metric(_COUNTER, "leases_renewed", "Shared ownership: leases extended.", "leases_renewed"),
    _Metric(
        _COUNTER,
        "leases_lost",
        "Shared ownership: leases found gone or taken at renewal.",
        "leases_lost",
    ),
    _Metric(
        _COUNTER,
        "handovers",
        "Shared ownership: sessions handed over to another process that asked.",
        "handovers",
    ),
)


#: The histograms of ``SessionManager.histograms()``, exported under these names.
_HISTOGRAMS = {
    "turn_wait_seconds": "Seconds a session block waited for the blocks before it.",
    "turn_hold_seconds": "Seconds a session block held its session (one in 16 sampled).",
    "load_seconds": "Seconds a batched load from storage took.",
    "flush_seconds": "Seconds a successful batched write took.",
    "flush_sessions": "Sessions per successful batched write.",
    "flush_bytes": "Bytes per successful batched write.",
}


class SessionCollector(Collector):
    """The collector behind ``register_prometheus``: one per registry."""

    def __init__(self, prefix: str = "actorsess") -> None:
        """Made by ``register_prometheus``, one per registry.

        Args:
            prefix: Start of every metric name (``actorsess_sessions_cached`` ...).
        """
        self._prefix = prefix
        self._managers: dict[str, SessionManager[Any]] = {}
        # Scrapes run on the exporter's thread while managers are added on the loop's.
        self._lock = threading.Lock()

    def add(self, manager: SessionManager[Any], namespace: str) -> None:
        """Report ``manager`` under the label ``namespace="<namespace>"``."""
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"namespace must be a non-empty string, got {namespace!r}")
        with self._lock:
            known = self._managers.get(namespace)
            if known is not None and known is not manager:
                raise ValueError(
                    f"namespace {namespace!r} is already reported for another manager; "
                    "give each manager its own (register_prometheus(..., namespace=...))"
                )
            self._managers[namespace] = manager

    def remove(self, namespace: str) -> None:
        """Stop reporting the manager registered under ``namespace``."""
        with self._lock:
            if self._managers.pop(namespace, None) is None:
                raise KeyError(f"no manager is reported under namespace {namespace!r}")

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            managers = list(self._managers.items())
        snapshots = [(namespace, manager.stats()) for namespace, manager in managers]
        for metric in _METRICS:
            family = metric.kind(f"{self._prefix}_{metric.name}", metric.help, labels=["namespace"])
            for namespace, stats in snapshots:
                family.add_metric([namespace], getattr(stats, metric.field))
            yield family
        histograms = [(namespace, manager.histograms()) for namespace, manager in managers]
        for name, help_text in _HISTOGRAMS.items():
            histogram = HistogramMetricFamily(
                f"{self._prefix}_{name}", help_text, labels=["namespace"]
            )
            for namespace, snapshots_of in histograms:
                snapshot = snapshots_of[name]
                buckets = [
                    (repr(bound), count)
                    for bound, count in zip(snapshot.bounds, snapshot.cumulative, strict=False)
                ]
                buckets.append(("+Inf", snapshot.observations))
                histogram.add_metric([namespace], buckets, snapshot.total)
            yield histogram


#: One collector per registry (a registry refuses two that report the same names).
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, SessionCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def register_prometheus(
    manager: SessionManager[Any],
    *,
    namespace: str | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> SessionCollector:
    """Export ``manager``'s metrics to ``registry`` (the default one unless given).

    ``namespace`` labels its values; it defaults to the manager's ``key_prefix``.
    From now on the manager counts its turns and samples their hold time
    (``SessionManager.observe_turns``), which it does not do unobserved.
    Several managers share one collector per registry, each under its own
    namespace; registering one twice under the same namespace is a no-op, and
    another manager under a namespace already taken raises ``ValueError``.
    """
    label = manager.config.key_prefix if namespace is None else namespace
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = SessionCollector()
            registry.register(collector)
            _collectors[registry] = collector
    collector.add(manager, label)
    manager.observe_turns()
    return collector
