"""Servers that read each field with a single recv(n) (three public servers do), and
whether an option of our client makes them work (issue 13 item 14).

Such a server loses track as soon as a recv() comes back short: a field split across TCP
segments that have not all arrived. On a real network that happens to files of about
1 MiB and more, with every client. Here a relay (sfc_py/proxy.py) cuts the client's bytes
into 1,400-byte segments a millisecond apart, as a network would. With `--pace MS` our
client writes each packet on its own (TCP_NODELAY) and waits after it, with 1,024-byte
packets that fit one segment: every recv() then finds its field whole.
"""

from __future__ import annotations

import os

import pytest

from sfc_py.harness import describe, run_client
from sfc_py.proxy import SegmentingProxy


@pytest.fixture
def single_recv_server(start_py_server):
    srv = start_py_server(quirks={"single_recv"})
    proxy = SegmentingProxy(("127.0.0.1", srv.port)).start()
    try:
        yield srv, proxy
    finally:
        proxy.stop()


def client_dir(tmp_path, port: int, size: int):
    work = tmp_path / "client"
    work.mkdir()
    data = os.urandom(size)
    (work / "big.bin").write_bytes(data)
    (work / "transfer.info").write_text(f"127.0.0.1:{port}\npacer\nbig.bin\n")
    return work, data


def stored_content(srv) -> bytes | None:
    files = [f for f in srv.stored_files() if f.file_name == "big.bin"]
    return files[0].path.read_bytes() if files else None


def test_a_single_recv_server_loses_track_without_pace(tmp_path, single_recv_server):
    srv, proxy = single_recv_server
    work, data = client_dir(tmp_path, proxy.port, 1 << 20)
    proc = run_client(work, "--timeout", "10")
    assert proc.returncode != 0 or stored_content(srv) != data, describe(proc)


def test_pace_makes_a_single_recv_server_work(tmp_path, single_recv_server):
    srv, proxy = single_recv_server
    work, data = client_dir(tmp_path, proxy.port, 1 << 20)
    proc = run_client(work, "--pace", "3", "--timeout", "20")
    assert proc.returncode == 0, describe(proc)
    assert stored_content(srv) == data
