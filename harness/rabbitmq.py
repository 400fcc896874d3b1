"""A private RabbitMQ node: its own ports, data folder and cookie, gone on exit.

Like ``actorsess.testing.RedisServer`` for Redis: benchmarks (and tests) that
weigh a broker start their own, so that they run where only the broker's
package is installed and never touch a node someone else uses. The node runs
as the current user from the package's own scripts (``/usr/lib/rabbitmq/bin``),
with the plugins asked for enabled from the start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from actorsess.testing import free_port

_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
_BOOT_TIMEOUT_S = 90.0


class RabbitServer:
    """``with RabbitServer() as rabbit:`` a running node at ``rabbit.url``."""

    def __init__(self, plugins: tuple[str, ...] = ("rabbitmq_consistent_hash_exchange",)) -> None:
        self.plugins = plugins
        self.port = 0
        self._folder: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def __enter__(self) -> RabbitServer:
        script = _SCRIPTS / "rabbitmq-server"
        if not script.exists():
            raise RuntimeError(f"RabbitMQ is not installed ({script} not found)")
        self.port = free_port()
        folder = Path(tempfile.mkdtemp(prefix="actorsess-rabbit-"))
        self._folder = folder
        (folder / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        (folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            # Benchmarks publish in bursts: no flow-control pauses on a busy laptop disk.
            "disk_free_limit.absolute = 50MB\n"
        )
        (folder / "rabbitmq-env.conf").write_text("")
        cookie = folder / ".erlang.cookie"
        cookie.write_text(os.urandom(16).hex())
        cookie.chmod(0o400)
        node = f"actorsess{self.port}@localhost"
        self._env = {
            **os.environ,
            "HOME": str(folder),
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "node.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        log = open(folder / "console.log", "wb")  # the node's, for its lifetime
        self._process = subprocess.Popen(
            [str(script)],
            env=self._env,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_until_up()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def cpu_seconds(self) -> float:
        """CPU time the node (every process of its session) has used so far."""
        assert self._process is not None
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            # Fields after the command (which may hold spaces), from field 3 on.
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == self._process.pid:  # field 6: the session id
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + _BOOT_TIMEOUT_S
        assert self._process is not None and self._folder is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = (self._folder / "console.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"RabbitMQ node exited at start:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.2)
                continue
            # The port opens before the node has booted its plugins: ask the node.
            done = subprocess.run(
                [str(_SCRIPTS / "rabbitmqctl"), "await_startup", "--timeout", "60"],
                env=self._env,
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"RabbitMQ node did not start within {_BOOT_TIMEOUT_S:g}s")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # The whole session: the start script, the Erlang VM and its helpers.
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
