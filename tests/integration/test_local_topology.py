"""deploy/local's parts on their own: haproxy accepts the configuration written for it, and a topology
whose start fails part-way stops what it had started and says which part failed and why."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deploy.local.haproxy import haproxy_config
from deploy.local.postgres import PostgresServer
from deploy.local.processes import require_binary
from deploy.local.s3 import S3Server
from deploy.local.topology import Topology


def test_haproxy_accepts_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(18080, 18081, ["127.0.0.1:18001", "127.0.0.1:18002"]))
    checked = subprocess.run(
        [require_binary("haproxy", "haproxy"), "-c", "-f", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "option httpchk GET /readyz" in config.read_text()


@pytest.mark.slow
def test_a_start_that_fails_part_way_stops_what_it_started(
    built_state: Path, s3_server: S3Server, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    # A setting the replicas refuse: they exit at start, after S3, PostgreSQL and Prometheus are up.
    topology = Topology(
        built_state,
        tmp_path / "topology",
        replicas=2,
        settings={"max_texts": 0},
        s3=s3_server,
        postgres=postgres_server,
    )
    with pytest.raises(RuntimeError, match=r"replica-\d exited") as failed:
        topology.start()
    assert "max_texts" in str(failed.value)  # the tail of the replica's log says why
    assert topology.prometheus is not None and topology.prometheus.process.poll() is not None
    assert [r.process.poll() is not None for r in topology.replicas] == [True, True]
    assert topology.haproxy is None
