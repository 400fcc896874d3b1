"""LocalRedisCluster: a real Redis Cluster of private redis-server processes on loopback."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time

from actorsess.testing._redis import RedisServer


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free too, neither of them
    already chosen for this cluster (``taken``). Both stay below 32768, where Linux
    hands out no ephemeral ports: an outgoing connection of the test run cannot grab
    one between this check and the node's start."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(10_000, 22_700)
        if {port, port + 10_000} & taken:
            continue
        if _port_free(port) and _port_free(port + 10_000):
            taken.update((port, port + 10_000))
            return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalRedisCluster:
    """``primaries`` nodes, each owning a share of the 16384 slots, each with
    ``replicas`` replicas (which take over when their primary fails)."""

    def __init__(self, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 2000) -> None:
        """Prepare the nodes on free ports; ``start()`` (or ``with``) forms the cluster.

        Args:
            primaries: Primary nodes, at least 3.
            replicas: Replicas per primary.
            node_timeout_ms: ``cluster-node-timeout``: how long a node may be
                unreachable before its replica is promoted.
        """
        if primaries < 3:
            raise ValueError("Redis Cluster needs at least 3 primaries")
        self.replicas = replicas
        self._taken: set[int] = set()
        self.nodes = [
            RedisServer(
                port=_free_cluster_port(self._taken),
                appendonly=True,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    # Replicas sync at once rather than after the default 5 s delay.
                    "--repl-diskless-sync-delay",
                    "0",
                ],
            )
            for _ in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """A URL of one node; the cluster client discovers the rest."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> LocalRedisCluster:
        """Start every node and join them into a cluster; returns it when it is ready
        (all slots served) or raises, every node stopped, after ``timeout`` seconds."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("'redis-cli' is not on PATH; install redis-tools")
        try:
            for node in self.nodes:
                self._start_node(node)
        except BaseException:
            self.close()  # leave no node of a cluster that could not start running
            raise
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._state_ok(cli, node.port) for node in self.nodes) and all(
                self._replica_synced(cli, node.port) for node in self.nodes
            ):
                return self
            time.sleep(0.1)
        self.close()
        raise RuntimeError(f"the cluster did not reach cluster_state:ok in {timeout}s")

    def _start_node(self, node: RedisServer) -> None:
        """Start ``node``, on another port if its own was taken meanwhile."""
        for attempt in range(3):
            try:
                node.start()
                return
            except RuntimeError:
                if attempt == 2:
                    raise
                node.stop()
                node.port = _free_cluster_port(self._taken)

    def primary_ports(self) -> list[int]:
        """Ports of the nodes that are primaries now (this changes after a failover)."""
        cli = shutil.which("redis-cli") or "redis-cli"
        ports = []
        for node in self.nodes:
            role = subprocess.run(
                [cli, "-p", str(node.port), "role"], capture_output=True, text=True, check=False
            ).stdout.split("\n", 1)[0]
            if role.strip() == "master":
                ports.append(node.port)
        return ports

    @staticmethod
    def _replica_synced(cli: str, port: int) -> bool:
        """True for a primary, and for a replica whose link to its primary is up (a
        replica that never synced cannot be promoted)."""
        info = subprocess.run(
            [cli, "-p", str(port), "info", "replication"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return "role:master" in info or "master_link_status:up" in info

    @staticmethod
    def _state_ok(cli: str, port: int) -> bool:
        info = subprocess.run(
            [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True, check=False
        ).stdout
        return "cluster_state:ok" in info

    def close(self) -> None:
        """Stop every node and remove its files."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
