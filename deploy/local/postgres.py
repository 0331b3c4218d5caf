"""A real PostgreSQL server: a throwaway cluster on 127.0.0.1 and a free port (the state store).

`initdb` into a fresh directory (trust authentication: it listens on loopback only and lives for one
session), `pg_ctl start`, wait for `pg_isready`. Run as root (CI, containers) the binaries run as the
`postgres` system user, since PostgreSQL refuses to run as root. Missing binaries fail loudly: CI
installs the Debian `postgresql` package, and a state store test that silently skips proves nothing.

Example::

    with PostgresServer.start() as server:
        url = server.create_database("t1")   # postgresql://postgres@127.0.0.1:PORT/t1
        server.stop()                        # as if the database went away
        server.restart()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from deploy.local.processes import free_port

SUPERUSER = "postgres"


def postgres_bindir() -> Path:
    """Where initdb and pg_ctl are: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(found.stdout.strip()))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    candidates += [Path(p) for p in reversed(versions)]
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    raise RuntimeError(
        "PostgreSQL server binaries not found (no initdb under `pg_config --bindir` or "
        "/usr/lib/postgresql/*/bin): install them, e.g. `apt-get install postgresql`"
    )


class PostgresServer:
    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir = bindir
        self.root = root  # the data dir, the socket dir and the log
        self.port = port
        self.data = root / "data"
        self._run_as = None if os.geteuid() != 0 else SUPERUSER

    @classmethod
    def start(cls) -> PostgresServer:
        """A new cluster, started; `close()` (or the `with` block) stops it and removes its files."""
        bindir = postgres_bindir()
        root = Path(tempfile.mkdtemp(prefix="kdgate-pg-"))
        server = cls(bindir, root, free_port())
        if server._run_as is not None:  # its files must belong to the user it runs as
            account = pwd.getpwnam(server._run_as)
            os.chown(root, account.pw_uid, account.pw_gid)
        try:
            server._run("initdb", "-D", str(server.data), "-A", "trust", "-U", SUPERUSER, "--no-sync")
            server.restart()
        except BaseException:
            server.close()
            raise
        return server

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url(name)

    def restart(self) -> None:
        """Starts the server (again, on the same port and data) and waits until it accepts connections.
        fsync off: a test cluster never outlives a crash, and fsync is most of a small write's time."""
        options = f"-k {self.root} -h 127.0.0.1 -p {self.port} -c fsync=off -c synchronous_commit=off"
        log = self.root / "server.log"
        self._run("pg_ctl", "start", "-w", "-t", "30", "-D", str(self.data), "-l", str(log), "-o", options)
        deadline = time.monotonic() + 30
        while self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False) != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not come up on port {self.port}; see {log}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session (clients see their connections drop), `immediate` does not even
        shut down cleanly: a crash."""
        self._run("pg_ctl", "stop", "-w", "-D", str(self.data), "-m", mode, check=False)

    def close(self) -> None:
        if self.data.exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, program: str, *args: str, check: bool = True) -> int:
        command = [str(self.bindir / program), *args]
        if self._run_as is not None:
            command = ["runuser", "-u", self._run_as, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=self.root)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.returncode
