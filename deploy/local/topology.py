"""The whole topology on 127.0.0.1: an S3 API, PostgreSQL, N gateway replicas, haproxy in front of them
and a Prometheus scraping them, started in order and stopped in reverse (terminate, then kill), also
when a start fails part-way.

The replicas share what replicas on a cluster share: the state store (a database of their own on the
PostgreSQL server), the registry (`s3://<bucket>/registry`, seeded from a local state dir's registry
before they start) and the shadow log (`s3://<bucket>/shadow`, each under its `replica_id`), one admin
token, and a Prometheus that their in-process rollout judge reads (only the holder of the store's lease
acts). They build no model: they serve what the registry holds.

An S3 server or PostgreSQL server passed in is borrowed (used, never stopped): a test session shares
its own. This process reaches the bucket through the standard AWS variables, as kdgate does: they are
set in `os.environ` while the topology runs and restored after.

Example::

    with Topology(seed=Path(".kdgate"), root=tmp) as topo:
        httpx.post(f"{topo.url}/classify", json={"text": "hello"})   # through haproxy
        topo.replicas[0].url, topo.prometheus.url, topo.admin_headers()
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from types import TracebackType

import psycopg

from deploy.local.haproxy import Haproxy
from deploy.local.postgres import PostgresServer
from deploy.local.processes import free_port
from deploy.local.prometheus import SCRAPE_INTERVAL_S, PrometheusServer
from deploy.local.replicas import Replica, start_replica, wait_ready
from deploy.local.s3 import S3Server
from deploy.local.seed import publish_all
from distill.registry import Registry

_databases = itertools.count(1)


class Topology:
    def __init__(
        self,
        seed: Path,
        root: Path,
        replicas: int = 3,
        settings: Mapping[str, object] | None = None,
        s3: S3Server | None = None,
        postgres: PostgresServer | None = None,
    ) -> None:
        """`seed`: a state dir whose registry is published to the bucket; `root`: where the replicas'
        state dirs, Prometheus's TSDB and the logs go; `settings`: more replica settings (KDGATE_*)."""
        self.seed = seed
        self.root = root
        self.count = replicas
        self.extra_settings = dict(settings or {})
        self.s3 = s3
        self.postgres = postgres
        self.admin_token = secrets.token_urlsafe(24)
        self.replicas: list[Replica] = []
        self.bucket = self.registry_url = self.shadow_url = self.store_url = ""
        self.registry: Registry | None = None  # the bucket's registry, published to from <root>/builder
        self.haproxy: Haproxy | None = None
        self.prometheus: PrometheusServer | None = None
        self._stack = contextlib.ExitStack()

    # --- what a caller reads ---

    @property
    def url(self) -> str:
        """The one entry point clients use: haproxy."""
        assert self.haproxy is not None, "the topology is not started"
        return self.haproxy.url

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def replica_settings(self, replica_id: str) -> dict[str, object]:
        """What one replica is told (KDGATE_*): shared store, registry, shadow log, token, judge source."""
        assert self.prometheus is not None
        return {
            "store": self.store_url,
            "registry_url": self.registry_url,
            "shadow_url": self.shadow_url,
            "replica_id": replica_id,
            "admin_token": self.admin_token,
            "build_missing_models": False,
            "rollout_prometheus_url": self.prometheus.url,
            "rollout_prometheus_min_window_s": 2 * SCRAPE_INTERVAL_S,
            "shadow_drain_seconds": 1.0,  # a stopped replica scores its shadow backlog for 1 s, not 10
            **self.extra_settings,
        }

    # --- start and stop ---

    def start(self) -> Topology:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.s3 is None:
            self.s3 = self._stack.enter_context(S3Server.start())
        self._set_aws_env(self.s3.env())
        self.bucket = self.s3.create_bucket()
        self.registry_url, self.shadow_url = f"{self.bucket}/registry", f"{self.bucket}/shadow"
        if self.postgres is None:
            self.postgres = self._stack.enter_context(PostgresServer.start())
        self.store_url = self._create_database(self.postgres)
        self.registry = publish_all(self.seed, self.root / "builder", self.registry_url)
        if not self.registry.list():
            raise RuntimeError(f"{self.seed} holds no model to serve (build some first: kdgate models build)")

        ports = [free_port() for _ in range(self.count)]
        self.prometheus = self._stack.enter_context(
            PrometheusServer.start([f"127.0.0.1:{p}" for p in ports], self.root / "prometheus")
        )
        self._stack.callback(self._stop_replicas)
        for i, port in enumerate(ports, start=1):
            replica_id = f"replica-{i}"
            settings = self.replica_settings(replica_id)
            self.replicas.append(
                start_replica(replica_id, self.root / replica_id, settings, port, self.s3.env())
            )
        self._wait_ready()
        self.haproxy = self._stack.enter_context(
            Haproxy.start([r.address for r in self.replicas], self.root / "haproxy")
        )
        self.haproxy.wait_all_up()

    def close(self) -> None:
        """Everything this topology started, in reverse order; borrowed servers stay up."""
        self._stack.close()

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _wait_ready(self) -> None:
        """The replicas load side by side; the first that fails ends the wait (the others are stopped
        by `close`, which their waits then see)."""
        pool = ThreadPoolExecutor(len(self.replicas))
        try:
            futures = [pool.submit(wait_ready, replica) for replica in self.replicas]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()
        finally:
            pool.shutdown(wait=False)

    def _stop_replicas(self) -> None:
        with ThreadPoolExecutor(max(1, len(self.replicas))) as pool:  # each drains for up to a second
            list(pool.map(Replica.stop, self.replicas))

    def _set_aws_env(self, env: dict[str, str]) -> None:
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)

        def restore() -> None:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

        self._stack.callback(restore)

    @staticmethod
    def _create_database(server: PostgresServer) -> str:
        """A fresh database for this topology's store (a borrowed server may hold others')."""
        name = f"kdgate_topology_{os.getpid()}_{next(_databases)}"
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return server.url(name)
