"""A real Prometheus (the Debian `prometheus` binary) scraping given targets every second.

Scrape and rule evaluation every 1 s, so a rollout judged from it decides within seconds (the judge's
`rollout_prometheus_min_window_s` must then be 2 s at least: two samples in range). Its TSDB lives under
`home`, a throwaway folder. A missing binary raises `MissingBinary`; a server that exits or is not ready
within 30 s raises RuntimeError with the tail of its log.

Example::

    with PrometheusServer.start(["127.0.0.1:8123"], tmp / "prometheus") as prometheus:
        prometheus.url  # http://127.0.0.1:PORT
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType

import yaml

from deploy.local.processes import free_port, require_binary, stop_process, wait_http_ok

SCRAPE_INTERVAL_S = 1.0


def scrape_config(targets: list[str]) -> dict[str, object]:
    """One job, `kdgate`, scraping `/metrics` of every target (host:port) every second."""
    interval = f"{SCRAPE_INTERVAL_S:g}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {"job_name": "kdgate", "metrics_path": "/metrics", "static_configs": [{"targets": targets}]}
        ],
    }


class PrometheusServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @classmethod
    def start(cls, targets: list[str], home: Path, port: int | None = None) -> PrometheusServer:
        """Started and ready (`/-/ready`); `port` None: a free one."""
        binary = require_binary("prometheus", "prometheus")
        (home / "data").mkdir(parents=True, exist_ok=True)
        config = home / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(targets)))
        port = port or free_port()
        log = home / "prometheus.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={home / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(process, port, log)
        try:
            wait_http_ok(f"{server.url}/-/ready", process, "prometheus", log)
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
