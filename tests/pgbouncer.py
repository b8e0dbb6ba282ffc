"""A PgBouncer of its own, in transaction pooling, in front of the test PostgreSQL server.

`Pooler.start()` creates a database of its own on 127.0.0.1:5432 (so the default search_path
and the `public` schema are what an application gets), an application role that row-level
security applies to, writes a PgBouncer configuration to a temporary directory, and starts
PgBouncer on a free 127.0.0.1 port. `stop()` undoes all of it. Used by tests/test_scaleout.py and
benchmarks/scaleout.py. `.ci/run` installs Debian's `pgbouncer` package when it is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

SERVER = "postgresql://postgres@127.0.0.1:5432/test"


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pooler:
    """One database, one application role, one PgBouncer (transaction pooling) in front of it."""

    server: str = field(default_factory=lambda: os.environ.get("ORMAI_TEST_POSTGRES_URL", SERVER))
    pool_size: int = 4
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    port: int = 0
    directory: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def database(self) -> str:
        return f"ormai_pgb_{self.tag}"

    @property
    def role(self) -> str:
        return f"ormai_pgb_app_{self.tag}"

    def url(self, driver: str, *, pooled: bool = True, owner: bool = False, alias: str = "ormai") -> URL:
        """A URL through PgBouncer (`pooled`) or straight to the server; as the application role
        (row-level security applies) or as the owner (`owner`: sees every row)."""
        base = make_url(self.server)
        user = base.username if owner else self.role
        if pooled:
            return base.set(drivername=f"postgresql+{driver}", host="127.0.0.1", port=self.port, database=alias, username=user)
        return base.set(drivername=f"postgresql+{driver}", database=self.database, username=user)

    def admin(self) -> Any:
        return create_engine(make_url(self.server).set(drivername="postgresql+psycopg"), poolclass=NullPool, isolation_level="AUTOCOMMIT")

    def start(self, prepare: Any = None) -> Pooler:
        """Create the database and role, run `prepare(owner_connection)` in it, start PgBouncer."""
        binary = pgbouncer_binary()
        if binary is None:
            raise FileNotFoundError("pgbouncer is not installed (apt-get install -y pgbouncer)")
        admin = self.admin()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.database}"'))
            conn.execute(text(f'CREATE ROLE "{self.role}" LOGIN NOSUPERUSER NOBYPASSRLS'))
        admin.dispose()
        owner = create_engine(self.url("psycopg", pooled=False, owner=True), poolclass=NullPool)
        with owner.begin() as conn:
            conn.execute(text(f'GRANT USAGE, CREATE ON SCHEMA public TO "{self.role}"'))
            if prepare is not None:
                prepare(conn)
            conn.execute(text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{self.role}"'))
            conn.execute(text(f'GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO "{self.role}"'))
        owner.dispose()
        self._start_pgbouncer(binary)
        return self

    def _start_pgbouncer(self, binary: str) -> None:
        self.directory = tempfile.mkdtemp(prefix="ormai-pgbouncer-")
        self.port = free_port()
        server = make_url(self.server)
        target = f"host={server.host or '127.0.0.1'} port={server.port or 5432} dbname={self.database}"
        users = "".join(f'"{u}" ""\n' for u in {server.username or "postgres", self.role})
        config = f"""[databases]
ormai = {target}
ormai_two = {target} pool_size=2

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.directory}/users.txt
admin_users = {server.username or "postgres"}
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = 1000
server_login_retry = 1
logfile = {self.directory}/pgbouncer.log
pidfile = {self.directory}/pgbouncer.pid
"""
        with open(os.path.join(self.directory, "users.txt"), "w") as fh:
            fh.write(users)
        with open(os.path.join(self.directory, "pgbouncer.ini"), "w") as fh:
            fh.write(config)
        command = [binary, os.path.join(self.directory, "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            import pwd

            postgres = pwd.getpwnam("postgres")
            for name in (self.directory, *(os.path.join(self.directory, f) for f in os.listdir(self.directory))):
                os.chown(name, postgres.pw_uid, postgres.pw_gid)
            command = ["runuser", "-u", "postgres", "--", *command]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.process.stderr.read().decode() if self.process.stderr else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("pgbouncer did not start listening")

    def console(self, command: str) -> None:
        """Run a command on PgBouncer's admin console (KILL, RESUME, RECONNECT, ...)."""
        import psycopg

        server = make_url(self.server)
        with psycopg.connect(host="127.0.0.1", port=self.port, dbname="pgbouncer", user=server.username or "postgres",
                             autocommit=True, prepare_threshold=None) as conn:  # fmt: skip
            conn.execute(command)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own session: runuser and pgbouncer
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        admin = self.admin()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{self.role}"'))
        admin.dispose()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
