"""A throw-away PostgreSQL server for tests: initdb in a temp dir, a free loopback port, stopped at the end.

Debian's ``postgresql`` package (``make sysdeps``) puts the binaries in ``/usr/lib/postgresql/N/bin``.
PostgreSQL refuses to run as root, so when the tests run as root (CI does), the server runs as the
``postgres`` system user that the package creates (or ``nobody``), through ``runuser``: its temp dir
is created in /tmp (not in pytest's root-only folder) and handed to that user. Clients connect
over TCP to 127.0.0.1 with ``trust`` authentication, as the database user ``grader``; the unix
socket lives in the temp dir, so nothing outside it is touched.

    with PostgresServer() as pg:
        url = pg.create_database("gradebook")   # postgresql://grader@127.0.0.1:PORT/gradebook
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "grader"


def pg_bin() -> Path | None:
    """The newest PostgreSQL bin folder with initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self):
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed: run `make sysdeps` (apt-get install postgresql)")
        self.run_as = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self.run_as = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
        self.dir = Path(tempfile.mkdtemp(prefix="pgtest-", dir="/tmp"))
        self.data, self.sock, self.log = self.dir / "data", self.dir / "sock", self.dir / "server.log"
        self.sock.mkdir()
        if self.run_as is not None:
            for p in (self.dir, self.sock):
                os.chown(p, self.run_as.pw_uid, self.run_as.pw_gid)
        os.chmod(self.dir, 0o700)
        self.port = free_port()

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.run_as is not None:
            cmd = ["runuser", "-u", self.run_as.pw_name, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n{log}")
        return proc

    def start(self) -> "PostgresServer":
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync",
                  "--no-instructions")
        # fsync off: a test server; the tests kill graders, never the server
        opts = (f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "-t", "60", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        conn = psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
