"""Shared fixtures: a tiny but real registry (teacher + ONNX student built from a seeded subset), and
`serve`, a real uvicorn on 127.0.0.1 (port 0) serving `create_app`, started and stopped per test."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from deploy.local.postgres import PostgresServer
from deploy.local.s3 import S3Server
from distill.classify.build import ensure_default_classify_models
from distill.registry import Registry
from tests.support import TINY_RECIPE, RunningServer, build_generate_state, start_server


@pytest.fixture(scope="session")
def built_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir holding classify-teacher@1 and classify-student@1, built once per test session."""
    state = tmp_path_factory.mktemp("built-state")
    ensure_default_classify_models(Registry(state), TINY_RECIPE, log=lambda _: None)
    return state


@pytest.fixture
def state_dir(built_state: Path, tmp_path: Path) -> Path:
    """A private copy of the built state (hard links: instant, and the registry never rewrites files)."""
    target = tmp_path / "state"
    shutil.copytree(built_state, target, copy_function=os.link)
    return target


@pytest.fixture(scope="module")
def module_state_dir(built_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built state for one test module (a server shared by its tests that change nothing)."""
    target = tmp_path_factory.mktemp("module") / "state"
    shutil.copytree(built_state, target, copy_function=os.link)
    return target


@pytest.fixture(scope="session")
def generate_built_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir holding generate-teacher@1 (the real SmolLM2) and a tiny-budget generate-student@1."""
    state = tmp_path_factory.mktemp("generate-state")
    build_generate_state(state)
    return state


@pytest.fixture
def generate_state_dir(generate_built_state: Path, tmp_path: Path) -> Path:
    target = tmp_path / "gstate"
    shutil.copytree(generate_built_state, target, copy_function=os.link)
    return target


@pytest.fixture
def serve(state_dir: Path) -> Iterator[Callable[..., RunningServer]]:
    """`serve(**settings)` starts a server on the test's state dir; all are stopped after the test."""
    started: list[RunningServer] = []

    def _start(**overrides: Any) -> RunningServer:
        running = start_server(overrides.pop("state_dir", state_dir), **overrides)
        started.append(running)
        return running

    yield _start
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL on 127.0.0.1, started once per session; fails (never skips) without binaries."""
    with PostgresServer.start() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """The session server's maintenance database (`postgres`): create databases there, not tables."""
    return postgres_server.url()


_databases = itertools.count(1)


@pytest.fixture
def postgres_db_url(postgres_server: PostgresServer, postgres_url: str) -> str:
    """A fresh, empty database on the session server, so no test sees another's rows."""
    name = f"kdgate_test_{next(_databases)}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return postgres_server.url(name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 API (moto in server mode) on 127.0.0.1, started once per session."""
    with S3Server.start() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket's s3:// URL, with the standard AWS variables pointing at the session's server."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server.create_bucket()
