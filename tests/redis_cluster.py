"""A private Redis Cluster for tests: three primaries, each with a replica, on free ports.

``redis_cluster`` (session-scoped, registered in ``tests/conftest.py``) starts it once for
every test that asks; tests that fail a primary over leave it whole again (roles swapped).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from tests.redis_server import free_port

NODE_TIMEOUT_MS = 1000  # how long a silent primary takes to be failed over (default 15 s)


def _node_port() -> int:
    """A free port whose cluster bus port (port + 10000, before Redis 7 always) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalCluster:
    """``redis-server --cluster-enabled yes`` processes joined by ``redis-cli --cluster create``."""

    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 1) -> None:
        self.directory = directory
        self.replicas = replicas
        self.ports: list[int] = []
        while len(self.ports) < primaries * (1 + replicas):
            port = _node_port()
            taken = {*self.ports, *(p + 10000 for p in self.ports)}
            if port not in taken and port + 10000 not in taken:
                self.ports.append(port)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """The store URL naming the cluster by two of its nodes."""
        seeds = ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])
        return f"redis+cluster://{seeds}"

    def start(self) -> None:
        """Start every node, join them, and wait until all agree the cluster is up."""
        for port in self.ports:
            self.start_node(port)
        for port in self.ports:
            self._wait(lambda p=port: self.cli(p, "ping") == "PONG", "a node to start")
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas",
             str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.wait_healthy()

    def start_node(self, port: int) -> None:
        """Start (or restart, with its saved cluster config) the node on ``port``."""
        self.processes[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "",
             "--appendonly", "no", "--repl-diskless-sync-delay", "0",
             "--dir", str(self.directory),
             "--logfile", str(self.directory / f"{port}.log")],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def cli(self, port: int, *args: str) -> str:
        """One ``redis-cli`` command to the node on ``port``; its reply, stripped."""
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip()

    def info(self, port: int, *args: str) -> dict[str, str]:
        """``INFO``-style ``name:value`` lines of a command as a mapping."""
        lines = self.cli(port, *args).splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def wait_healthy(self) -> None:
        """Until every live node says the cluster is ok and each replica is in sync."""

        def healthy() -> bool:
            for port in self.live_ports():
                state = self.info(port, "cluster", "info")
                if state.get("cluster_state") != "ok" or state.get("cluster_slots_fail") != "0":
                    return False
                replication = self.info(port, "info", "replication")
                if replication.get("role") == "slave" and (
                    replication.get("master_link_status") != "up"
                ):
                    return False
            return True

        self._wait(healthy, "the cluster to be healthy", 30)

    def live_ports(self) -> list[int]:
        """The ports of the nodes running now."""
        return [port for port, process in self.processes.items() if process.poll() is None]

    def primary_of(self, key: str) -> int:
        """The port of the primary serving ``key``'s slot now, as that primary itself says."""
        slot = key_slot(key.encode())
        for port in self.live_ports():
            if self._serves(port, slot):
                return port
        raise LookupError(f"no live primary serves slot {slot}")

    def _serves(self, port: int, slot: int) -> bool:
        for line in self.cli(port, "cluster", "nodes").splitlines():
            fields = line.split()
            if "myself" not in fields[2] or "master" not in fields[2]:
                continue
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return True
        return False

    def replica_of(self, primary: int) -> int:
        """The port of a live replica of the primary on ``primary``."""
        for port in self.live_ports():
            replication = self.info(port, "info", "replication")
            if replication.get("role") == "slave" and replication.get("master_port") == str(
                primary
            ):
                return port
        raise LookupError(f"the primary on {primary} has no live replica")

    def fail_over(self, replica: int) -> None:
        """A manual failover (``CLUSTER FAILOVER``): the replica on ``replica`` catches up with
        its primary, which stops taking writes meanwhile, and takes its slots; nothing is lost.
        """
        assert self.cli(replica, "cluster", "failover") == "OK"
        self._wait(lambda: self.role(replica) == "master", "the replica to take over")
        self.wait_healthy()

    def kill(self, port: int) -> None:
        """``kill -9`` one node."""
        process = self.processes[port]
        process.kill()
        process.wait()

    def restart(self, port: int) -> None:
        """Start a killed node again: it rejoins as a replica of whoever took its slots."""
        self.start_node(port)
        self._wait(lambda: self.role(port) == "slave", "the node to rejoin as a replica")
        self.wait_healthy()

    def role(self, port: int) -> str:
        """``master`` or ``slave``, as the node on ``port`` says ("" if it does not answer)."""
        return self.info(port, "info", "replication").get("role", "")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    @staticmethod
    def _wait(ready: Callable[[], bool], what: str, seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.05)  # the nodes offer nothing to block on but polling
        raise TimeoutError(f"gave up waiting for {what}")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A running Redis Cluster, shared by the whole session."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are not installed (make redis installs them)")
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
