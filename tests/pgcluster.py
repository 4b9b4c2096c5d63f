"""A real PostgreSQL server for the tests, and a TCP link to it that a test can cut.

``postgres_cluster`` yields the server named by ``$BABELGATE_TEST_POSTGRES_URL`` if set, else a
throwaway cluster started here from Debian's PostgreSQL binaries (``deploy/install.sh
--test-tools`` installs them): initdb into a temporary folder, ``pg_ctl start`` on a free
loopback port, as the ``postgres`` user (or ``nobody``) when the tests run as root, since
PostgreSQL refuses to run as root. ``Link`` forwards a loopback port to the server and can drop
every connection and refuse new ones, which is what a replica sees in a network partition.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

URL_ENV = "BABELGATE_TEST_POSTGRES_URL"
INSTALL_HINT = "run `bash deploy/install.sh --test-tools` (installs Debian's postgresql)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: next to ``pg_ctl`` on PATH (Debian's links
    resolve into it), else Debian's newest ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which("pg_ctl")
    if found and (Path(found).resolve().parent / "initdb").exists():
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    return versions[-1].parent if versions else None


@dataclass
class Cluster:
    """A PostgreSQL server: ``url(db)`` connects to it; ``stop``/``start`` if this run owns it."""

    host: str
    port: int
    user: str
    bindir: Path | None = None
    datadir: Path | None = None
    os_user: str | None = None
    password: str = ""

    def url(self, dbname: str = "postgres") -> str:
        auth = f"{self.user}:{self.password}" if self.password else self.user
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    @property
    def owned(self) -> bool:
        return self.datadir is not None

    def _pg_ctl(self, *args: str) -> None:
        assert self.bindir is not None and self.datadir is not None
        log = self.datadir.parent / "server.log"
        subprocess.run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(log), "-w", *args],
            check=True, capture_output=True, user=self.os_user, timeout=120,
        )  # fmt: skip

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir}"
        self._pg_ctl("-o", opts, "start")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg  # lazy: only the tests that use a server need the driver loaded

        name = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def _os_user() -> str | None:
    """Who runs the server: ourselves unless we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    pytest.fail("running as root and neither a postgres nor a nobody user exists to run initdb")


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """The external server of ``$BABELGATE_TEST_POSTGRES_URL``, else a throwaway cluster."""
    if os.environ.get(URL_ENV):
        from psycopg.conninfo import conninfo_to_dict  # lazy, as above

        p = conninfo_to_dict(os.environ[URL_ENV])
        yield Cluster(p.get("host", "127.0.0.1"), int(p.get("port", 5432)), p.get("user", ""),
                      password=p.get("password", ""))  # fmt: skip
        return
    bindir = server_bindir()
    if bindir is None:
        pytest.fail(f"no PostgreSQL server binaries (initdb, pg_ctl) found: {INSTALL_HINT}")
    os_user = _os_user()
    root = Path(tempfile.mkdtemp(prefix="babelgate-pg-"))
    datadir = root / "data"
    if os_user is not None:
        os.chmod(root, 0o755)
        shutil.chown(root, os_user)
    cluster = Cluster("127.0.0.1", free_port(), "babelgate", bindir, datadir, os_user)
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(datadir), "-U", "babelgate", "--auth=trust",
             "--no-instructions", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, user=os_user, timeout=300,
        )  # fmt: skip
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            cluster._pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


class Link:
    """A loopback TCP forwarder to ``(host, port)``: ``url`` goes through it; ``cut()`` drops
    every connection and refuses new ones until ``restore()``."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, dbname: str) -> str:
        return Cluster(self.cluster.host, self.port, self.cluster.user,
                       password=self.cluster.password).url(dbname)  # fmt: skip

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection((self.cluster.host, self.cluster.port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
