"""Our Rust `sfc-client` against the independent Python server (sfc_py.server).

Each test starts the Python server on 127.0.0.1 port 0 in a thread, writes
transfer.info in a temporary folder, runs the sfc-client binary there (timeout 120 s)
and checks what the server received and logged, and the files the client wrote.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA

from sfc_py import protocol as P
from sfc_py.harness import describe, run_client


def write_transfer(workdir: Path, port: int, name: str, src: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "transfer.info").write_text(f"127.0.0.1:{port}\n{name}\n{src}\n")


def make_source(tmp_path: Path, size: int, fname: str = "source.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    src_dir = tmp_path / "src"
    src_dir.mkdir(exist_ok=True)
    src = src_dir / fname
    src.write_bytes(data)
    return src, data


def registered_id(server, name: str) -> bytes:
    with server.state.lock:
        assert name in server.state.names, (
            f"{name!r} never registered; requests: {codes(server)}")
        return server.state.names[name]


def codes(server, since: int = 0) -> list[tuple[int, int | None]]:
    return [(r.code, r.reply) for r in server.request_log()[since:]]


def the_stored_file(server, client_id: bytes):
    files = [f for f in server.stored_files() if f.client_id == client_id]
    assert len(files) == 1, f"expected one stored file, got {files}; requests: {codes(server)}"
    return files[0]


def read_b64_key(text: str) -> RSA.RsaKey:
    raw = base64.b64decode("".join(text.split()), validate=True)
    return RSA.import_key(raw)


def check_client_files(workdir: Path, name: str, client_id: bytes, server) -> RSA.RsaKey:
    me = (workdir / "me.info").read_text().splitlines()
    assert len(me) >= 3, f"me.info has {len(me)} lines: {me}"
    assert me[0] == name
    assert re.fullmatch(r"[0-9a-f]{32}", me[1]), f"me.info line 2 is {me[1]!r}"
    assert binascii.unhexlify(me[1]) == client_id
    key_me = read_b64_key("".join(me[2:]))
    priv_text = (workdir / "priv.key").read_text()
    assert len(priv_text.strip().splitlines()) == 1, "priv.key should be base64 on one line"
    key = read_b64_key(priv_text)
    assert key.has_private() and key.e == 17 and key.size_in_bits() == 1024
    assert key_me.n == key.n and key_me.d == key.d, "me.info and priv.key hold different keys"
    with server.state.lock:
        stored_pub = server.state.clients[client_id].public_key
    assert stored_pub == P.public_key_der(key), "server holds a different public key"
    return key


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 17, 1_000_000])
def test_client_upload(tmp_path, py_server, size):
    src, data = make_source(tmp_path, size)
    work = tmp_path / "client"
    name = f"rustclient{size}"
    write_transfer(work, py_server.port, name, src)
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc)
    cid = registered_id(py_server, name)
    f = the_stored_file(py_server, cid)
    assert f.path.read_bytes() == data, "server received different bytes"
    assert f.verified, f"client never confirmed with 900; requests: {codes(py_server)}"
    check_client_files(work, name, cid, py_server)


def test_client_wire_format(tmp_path, py_server):
    """docs/PROTOCOL.md rules C2 and C3: zeros in 825's client id, version 3, names right-padded,
    content_size = whole encrypted size, packets numbered 1..N, content <= 3806 bytes."""
    size = 1_000_000
    src, data = make_source(tmp_path, size)
    work = tmp_path / "client"
    write_transfer(work, py_server.port, "wire", src)
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc)
    log = py_server.request_log()
    assert [r.code for r in log][:2] == [P.REQ_REGISTER, P.REQ_PUBLIC_KEY]
    assert log[0].client_id == P.ZERO_ID, f"825 client id {log[0].client_id.hex()}"
    assert {r.version for r in log} == {3}
    assert log[0].payload_head[:4] == b"wire", "825 name not padded on the right"
    assert log[1].payload_size == 255 + 160
    packets = [r for r in log if r.code == P.REQ_SEND_FILE]
    total = len(packets)
    for i, r in enumerate(packets, start=1):
        cs, osz, pn, tp = struct.unpack_from("<IIHH", r.payload_head)
        assert (cs, osz, pn, tp) == (P.encrypted_size(size), size, i, total)
        assert r.payload_head[12] != 0, "file name not padded on the right"
        assert r.payload_size - 267 <= 3806, f"packet {i} carries {r.payload_size - 267} bytes"
    assert sum(r.payload_size - 267 for r in packets) == P.encrypted_size(size)
    assert [r.code for r in log][-1] == P.REQ_CRC_OK


def test_client_quiet_and_dir(tmp_path, py_server):
    src, data = make_source(tmp_path, 5000)
    work = tmp_path / "client"
    write_transfer(work, py_server.port, "quietone", src)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = run_client(elsewhere, "--dir", str(work), "--quiet")
    assert proc.returncode == 0, describe(proc)
    assert (work / "me.info").is_file() and (work / "priv.key").is_file()
    cid = registered_id(py_server, "quietone")
    assert the_stored_file(py_server, cid).path.read_bytes() == data


def test_client_reconnects_on_second_run(tmp_path, py_server):
    src, data = make_source(tmp_path, 4000)
    work = tmp_path / "client"
    write_transfer(work, py_server.port, "returning", src)
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc)
    cid = registered_id(py_server, "returning")
    key1 = (work / "priv.key").read_text()
    n_before = len(py_server.request_log())
    data2 = os.urandom(6000)
    src.write_bytes(data2)
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc)
    second = codes(py_server, n_before)
    assert second[0] == (P.REQ_RECONNECT, P.RESP_RECONNECT_OK), second
    assert P.REQ_REGISTER not in [c for c, _ in second], "registered again instead of 827"
    assert (work / "priv.key").read_text() == key1, "priv.key must be reused on reconnect"
    f = the_stored_file(py_server, cid)
    assert f.path.read_bytes() == data2 and f.verified
    check_client_files(work, "returning", cid, py_server)


def test_client_registers_again_after_1606(tmp_path, start_py_server):
    first = start_py_server()
    src, data = make_source(tmp_path, 3000)
    work = tmp_path / "client"
    write_transfer(work, first.port, "phoenix", src)
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc)
    old_id = registered_id(first, "phoenix")
    # the same server (same address) having forgotten this client: 827 -> 1606 -> register
    # anew. (A server at another address gets its own identity and leaves me.info alone.)
    first.stop()
    second = start_py_server(port=first.port)
    write_transfer(work, second.port, "phoenix", src)
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc)
    seq = codes(second)
    assert seq[0] == (P.REQ_RECONNECT, P.RESP_RECONNECT_REJECTED), seq
    assert (P.REQ_REGISTER, P.RESP_REGISTER_OK) in seq, seq
    new_id = registered_id(second, "phoenix")
    assert new_id != old_id
    f = the_stored_file(second, new_id)
    assert f.path.read_bytes() == data and f.verified
    check_client_files(work, "phoenix", new_id, second)


def test_client_with_original_style_server(tmp_path, start_py_server):
    """docs/PROTOCOL.md rule C1: the server closes the connection after every reply."""
    srv = start_py_server(close_after_reply=True)
    src, data = make_source(tmp_path, 20_000)
    work = tmp_path / "client"
    write_transfer(work, srv.port, "oldschool", src)
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc) + f"\nrequests: {codes(srv)}"
    cid = registered_id(srv, "oldschool")
    f = the_stored_file(srv, cid)
    assert f.path.read_bytes() == data and f.verified


def test_client_resends_on_bad_checksum(tmp_path, start_py_server):
    srv = start_py_server(bad_checksums=2)
    src, data = make_source(tmp_path, 9000)
    work = tmp_path / "client"
    write_transfer(work, srv.port, "unlucky", src)
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc)
    seq = [c for c, _ in codes(srv)]
    assert seq.count(P.REQ_CRC_BAD_RESEND) == 2, seq
    assert seq[-1] == P.REQ_CRC_OK and P.REQ_CRC_BAD_GIVE_UP not in seq
    f = the_stored_file(srv, registered_id(srv, "unlucky"))
    assert f.path.read_bytes() == data and f.verified and f.sends == 3


def test_client_gives_up_after_four_mismatches(tmp_path, start_py_server):
    srv = start_py_server(bad_checksums=100)
    src, data = make_source(tmp_path, 100)
    work = tmp_path / "client"
    write_transfer(work, srv.port, "hopeless", src)
    proc = run_client(work)
    assert proc.returncode != 0, "client must report failure after 4 checksum mismatches"
    seq = [c for c, _ in codes(srv)]
    assert seq.count(P.REQ_CRC_BAD_RESEND) == 3, seq
    assert seq[-1] == P.REQ_CRC_BAD_GIVE_UP and P.REQ_CRC_OK not in seq, seq
    f = the_stored_file(srv, registered_id(srv, "hopeless"))
    assert f.sends == 4 and f.gave_up and not f.verified


# ---------------------------------------------------------------------------
# docs/PROTOCOL.md rules C5 and C7: tolerate what other servers and clients do


def test_client_tolerates_server_quirks(tmp_path, start_py_server):
    """A stray 1604 after 901, a file name left-padded in 1603, and (on a later run) a
    1606 without payload."""
    srv = start_py_server(bad_checksums=1, quirks={"ack_901_always", "left_pad_1603"})
    src, data = make_source(tmp_path, 7000)
    work = tmp_path / "client"
    write_transfer(work, srv.port, "quirky", src)
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc) + f"\nrequests: {codes(srv)}"
    seq = codes(srv)
    assert (P.REQ_CRC_BAD_RESEND, P.RESP_ACK) in seq, seq
    f = the_stored_file(srv, registered_id(srv, "quirky"))
    assert f.path.read_bytes() == data and f.verified and f.sends == 2
    # the same server (same address), restarted without its clients, answering the 827
    # with a bare 1606
    srv.stop()
    srv2 = start_py_server(quirks={"empty_1606"}, port=srv.port)
    write_transfer(work, srv2.port, "quirky", src)
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc) + f"\nrequests: {codes(srv2)}"
    seq = codes(srv2)
    assert seq[0] == (P.REQ_RECONNECT, P.RESP_RECONNECT_REJECTED), seq
    new_id = registered_id(srv2, "quirky")
    assert the_stored_file(srv2, new_id).path.read_bytes() == data
    check_client_files(work, "quirky", new_id, srv2)


def test_client_reads_foreign_key_files(tmp_path, py_server):
    """me.info with the base64 key over several lines and priv.key as raw DER (written
    by other clients) are read; the client reconnects with that key."""
    src, data = make_source(tmp_path, 3000)
    work = tmp_path / "client"
    name = "foreignkeys"
    write_transfer(work, py_server.port, name, src)
    cid = registered_id_after_run(work, py_server, name)
    key = read_b64_key((work / "priv.key").read_text())
    der = key.export_key("DER", pkcs=8)
    b64 = base64.b64encode(der).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    (work / "me.info").write_text("\n".join([name, cid.hex(), *lines]) + "\n")
    (work / "priv.key").write_bytes(key.export_key("DER"))
    n_before = len(py_server.request_log())
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc)
    seq = codes(py_server, n_before)
    assert seq[0] == (P.REQ_RECONNECT, P.RESP_RECONNECT_OK), seq
    assert P.REQ_REGISTER not in [c for c, _ in seq]


def registered_id_after_run(work: Path, server, name: str) -> bytes:
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc)
    return registered_id(server, name)


@pytest.mark.parametrize("code", [P.REQ_REGISTER, P.REQ_PUBLIC_KEY, P.REQ_SEND_FILE, P.REQ_CRC_OK])
def test_client_retries_after_server_error(tmp_path, start_py_server, code):
    """'On any server error the client prints `server responded with an error` and
    retries the request, up to 3 times': two 1607s in a row are survived. Retries that
    succeed are reported with -v only (failures always), so the run is verbose."""
    srv = start_py_server(fail_requests={code: 2})
    src, data = make_source(tmp_path, 5000)
    work = tmp_path / "client"
    write_transfer(work, srv.port, "retrier", src)
    proc = run_client(work, "-v")
    assert proc.returncode == 0, describe(proc) + f"\nrequests: {codes(srv)}"
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert out.count("server responded with an error") >= 2, out
    f = the_stored_file(srv, registered_id(srv, "retrier"))
    assert f.path.read_bytes() == data and f.verified


def test_client_gives_up_after_repeated_server_errors(tmp_path, start_py_server):
    srv = start_py_server(fail_requests={P.REQ_PUBLIC_KEY: 100})
    src, _ = make_source(tmp_path, 100)
    work = tmp_path / "client"
    write_transfer(work, srv.port, "doomed", src)
    proc = run_client(work)
    assert proc.returncode != 0, describe(proc)
    attempts = [c for c, _ in codes(srv)].count(P.REQ_PUBLIC_KEY)
    assert attempts == 4, f"826 sent {attempts} times (1 + 3 retries expected)"
    assert P.REQ_SEND_FILE not in [c for c, _ in codes(srv)]


# docs/PROTOCOL.md rule C9 (this project's own): on a persistent connection the client
# reads no reply between packets, so 1607s a server sends for intermediate packets could queue up and be taken as
# replies to the resent file and to 900. The client drops the connection after a 1607
# during an upload, which this test holds it to.
def test_client_survives_1607_for_intermediate_packets(tmp_path, start_py_server):
    from sfc_py.server import INTERMEDIATE_PACKET

    srv = start_py_server(fail_requests={INTERMEDIATE_PACKET: 1})
    src, data = make_source(tmp_path, 5000)  # 3 packets
    work = tmp_path / "client"
    write_transfer(work, srv.port, "desync", src)
    proc = run_client(work)
    assert proc.returncode == 0, describe(proc) + f"\nrequests: {codes(srv)}"
    f = the_stored_file(srv, registered_id(srv, "desync"))
    assert f.path.read_bytes() == data and f.verified
