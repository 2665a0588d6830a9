"""A throwaway PostgreSQL server started from the installed binaries (initdb + pg_ctl) on an ephemeral port."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from pathlib import Path

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
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "coherence", "--auth=trust", "-E", "UTF8")
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
        20 ms, where running every migration costs about a second)."""
        import sqlalchemy as sa

        name = "t_" + uuid.uuid4().hex[:12]
        template = f' TEMPLATE "{self._migrated_template()}"' if migrated else ""
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"{template}'))
        engine.dispose()
        return self.url(name)

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
