"""A throwaway PostgreSQL server started from the installed binaries (initdb + pg_ctl) on an ephemeral port."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from tests.support.net import free_port


def find_bindir() -> Path | None:
    """Debian keeps initdb and pg_ctl under /usr/lib/postgresql/<version>/bin, off the PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in candidates:
        if Path(folder, "initdb").exists() and Path(folder, "pg_ctl").exists():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


class PostgresServer:
    """initdb into a temporary folder, start on 127.0.0.1:<ephemeral>, stop and remove on ``stop``."""

    def __init__(self, root: Path) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install the postgresql package")
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        # initdb and pg_ctl refuse to run as root: run them as the unprivileged postgres user
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._template: str | None = None  # a database migrated to head, copied by new_database(migrated=True)
        self._version_num: int | None = None

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o755)
            for parent in self.root.parents:  # the postgres user must be able to reach the folder
                if parent == Path("/"):
                    break
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
        # --no-sync: a throwaway cluster needs no fsync of its files (3 of initdb's 5 s)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "coherence", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        return self.resume()

    def resume(self) -> PostgresServer:
        """Start the server on its data folder and port (again, after ``stop``)."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "pg.log"),
                  "-w", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://coherence@127.0.0.1:{self.port}/{database}"

    def new_database(self, *, migrated: bool = False) -> str:
        """A fresh database on this server; returns its URL. Empty (no tables), or ``migrated`` to the newest
        revision: a copy of a template migrated once per server (CREATE DATABASE ... TEMPLATE copies files, about
        50 ms, where running every migration costs about a second)."""
        name = "t_" + uuid.uuid4().hex[:12]
        template = f' TEMPLATE "{self._migrated_template()}"' if migrated else ""
        # PostgreSQL 15 copies a database block by block through the WAL by default: three times slower than
        # copying its files, for a durability a throwaway server does not need
        strategy = " STRATEGY FILE_COPY" if self._version() >= 150000 else ""
        self._admin(f'CREATE DATABASE "{name}"{template}{strategy}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database ``new_database`` made, whoever is still connected: the server's folder stays small (about
        8 MB a database), so that neither the disk nor the removal at the end pays for every test's."""
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, statement: str) -> Any:
        """Run one statement on the server's own database, outside a transaction; its one value, if it has one."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                result = conn.execute(sa.text(statement))
                return result.scalar() if result.returns_rows else None
        finally:
            engine.dispose()

    def _version(self) -> int:
        if self._version_num is None:
            self._version_num = int(self._admin("SHOW server_version_num"))
        return self._version_num

    def _migrated_template(self) -> str:
        """The template's name, migrating it on first use. No connection to it stays open: PostgreSQL copies a
        template only while nobody is connected to it."""
        if self._template is None:
            from coherence_network.store.db import create_store_engine, migrate

            url = self.new_database()
            engine = create_store_engine(url)
            migrate(engine)
            engine.dispose()
            self._template = url.rsplit("/", 1)[1]
        return self._template
