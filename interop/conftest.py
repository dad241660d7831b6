"""Shared pytest fixtures for the interop tests.

- the Rust binaries are found in $SFC_BIN_DIR (default <repo>/target/debug); a missing
  binary FAILS the test (CI builds them first), it is never skipped;
- `rust_server`: `sfc-server` on 127.0.0.1 port 0 in a temporary data dir, stopped
  (SIGTERM, then SIGKILL) whatever happens; the test fails if it died meanwhile;
- `py_server` / `start_py_server`: the Python protocol server (sfc_py.server) in a
  thread, stopped at teardown.
Process helpers live in sfc_py/harness.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sfc_py.harness import RustServer  # noqa: E402
from sfc_py.server import SFCServer  # noqa: E402


@pytest.fixture
def rust_server(tmp_path):
    srv = RustServer(tmp_path / "server-data")
    srv.start()
    try:
        yield srv
    finally:
        died = srv.proc.poll() is not None and not srv.stop_requested
        srv.stop()
    if died:
        pytest.fail(f"sfc-server died during the test (exit code {srv.proc.returncode}):\n"
                    f"{srv.log()}", pytrace=False)


@pytest.fixture
def start_py_server(tmp_path):
    """Factory: start_py_server(**kwargs) -> a running SFCServer; all stopped at teardown."""
    servers: list[SFCServer] = []

    def start(**kwargs) -> SFCServer:
        folder = tmp_path / f"py-store-{len(servers)}"
        srv = SFCServer(folder, **kwargs).start()
        servers.append(srv)
        return srv

    try:
        yield start
    finally:
        for srv in servers:
            srv.stop()


@pytest.fixture
def py_server(start_py_server):
    return start_py_server()


