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


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 45_000)
        if _port_free(port) and _port_free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalRedisCluster:
    """``primaries`` nodes, each owning a share of the 16384 slots, no replicas."""

    def __init__(self, primaries: int = 3) -> None:
        if primaries < 3:
            raise ValueError("Redis Cluster needs at least 3 primaries")
        self.nodes = [
            RedisServer(
                port=_free_cluster_port(),
                appendonly=True,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            for _ in range(primaries)
        ]

    @property
    def url(self) -> str:
        """A URL of one node; the cluster client discovers the rest."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> LocalRedisCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("'redis-cli' is not on PATH; install redis-tools")
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._state_ok(cli, node.port) for node in self.nodes):
                return self
            time.sleep(0.1)
        self.close()
        raise RuntimeError(f"the cluster did not reach cluster_state:ok in {timeout}s")

    @staticmethod
    def _state_ok(cli: str, port: int) -> bool:
        info = subprocess.run(
            [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True, check=False
        ).stdout
        return "cluster_state:ok" in info

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
