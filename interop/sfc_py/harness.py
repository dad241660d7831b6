"""Process harness for the interop tests: finds the Rust binaries, runs sfc-server and
sfc-client. Used by ../conftest.py and the tests."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LISTEN_RE = re.compile(r"listening on (\S+)")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SERVER_START_TIMEOUT = 30.0
CLIENT_TIMEOUT = 120.0


def bin_dir() -> Path:
    # Resolved now: tests change their working folder, a relative path would drift.
    return Path(os.environ.get("SFC_BIN_DIR") or REPO / "target" / "debug").resolve()


def binary(name: str) -> Path:
    path = bin_dir() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"Rust binary {name!r} not found at {path} "
            f"(build it with `cargo build --workspace --bins`, or set SFC_BIN_DIR)",
            pytrace=False,
        )
    return path


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    env.setdefault("RUST_BACKTRACE", "1")
    return env


class RustServer:
    """An `sfc-server` process on 127.0.0.1, port 0, data in data_dir."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.exe = binary("sfc-server")
        self.args = [str(self.exe), "--data-dir", str(self.data_dir), "--bind", "127.0.0.1",
                     "--port", "0", *(extra_args or [])]
        self.lines: list[str] = []  # stderr + stdout, ANSI-stripped
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self.address: str | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.stop_requested = False
        self._readers: list[threading.Thread] = []

    def _drain(self, stream, tag: str) -> None:
        for raw in iter(stream.readline, b""):
            line = ANSI_RE.sub("", raw.decode("utf-8", "replace").rstrip("\n"))
            with self._lock:
                self.lines.append(f"[{tag}] {line}")
            m = LISTEN_RE.search(line)
            if m and not self._listening.is_set():
                self.address = m.group(1).rstrip(".,;)")
                self._listening.set()
        stream.close()

    def start(self) -> "RustServer":
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=child_env(), cwd=self.data_dir)
        for stream, tag in ((self.proc.stderr, "err"), (self.proc.stdout, "out")):
            t = threading.Thread(target=self._drain, args=(stream, tag), daemon=True)
            t.start()
            self._readers.append(t)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with code {self.proc.returncode}" if self.proc.poll() is not None
                       else f"did not log 'listening on' within {SERVER_START_TIMEOUT}s")
                self.stop()
                pytest.fail(f"sfc-server {why}: {' '.join(self.args)}\n{self.log()}",
                            pytrace=False)
        host, _, port = self.address.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines[-200:])

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> bool:
        """Send sig, then SIGKILL after grace seconds.

        Returns False if SIGKILL was needed, True otherwise (also if already exited).
        """
        if self.proc is None:
            return True
        self.stop_requested = True
        clean = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                clean = False
        for t in self._readers:
            t.join(5)
        return clean

    @property
    def db_path(self) -> Path:
        return self.data_dir / "defensive.db"

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            con.row_factory = sqlite3.Row
            return con.execute(sql, params).fetchall()
        finally:
            con.close()


def run_client(workdir: Path, *args: str, timeout: float = CLIENT_TIMEOUT
               ) -> subprocess.CompletedProcess:
    """Run sfc-client with cwd=workdir. subprocess.run kills it on timeout."""
    exe = binary("sfc-client")
    try:
        return subprocess.run([str(exe), *args], cwd=workdir, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, env=child_env())
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"sfc-client did not finish within {timeout}s\nstdout:\n"
                    f"{(e.stdout or b'').decode(errors='replace')}\nstderr:\n"
                    f"{(e.stderr or b'').decode(errors='replace')}", pytrace=False)


def describe(proc: subprocess.CompletedProcess) -> str:
    return (f"exit code {proc.returncode}\n--- stdout ---\n"
            f"{proc.stdout.decode(errors='replace')[-4000:]}\n--- stderr ---\n"
            f"{proc.stderr.decode(errors='replace')[-4000:]}")
