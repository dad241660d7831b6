"""Our Rust `sfc-server` against the independent Python client (sfc_py.client).

Each test starts its own sfc-server (data dir under tmp_path, 127.0.0.1, port 0), talks
to it with PyCryptodome-based code only, and checks replies byte by byte and the
server's defensive.db / stored files afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from sfc_py import protocol as P
from sfc_py.client import SFCClient


def new_name(prefix: str = "py") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def client(srv, **kw) -> SFCClient:
    return SFCClient(srv.host, srv.port, timeout=60, **kw)


def dump_files_table(srv) -> str:
    try:
        rows = srv.query("SELECT * FROM files")
        return "\n".join(str({k: (r[k].hex() if isinstance(r[k], bytes) else r[k])
                              for k in r.keys()}) for r in rows) or "(files table empty)"
    except Exception as e:  # noqa: BLE001 - diagnostics only
        return f"(cannot read files table: {e})"


def file_rows(srv, client_id: bytes, file_name: str):
    return srv.query("SELECT ID, FileName, PathName, Verified FROM files "
                     "WHERE ID = ? AND FileName = ?", (client_id, file_name))


def assert_stored(srv, client_id: bytes, file_name: str, data: bytes, verified: bool = True):
    """The files row exists (Verified as expected) and PathName holds exactly `data`."""
    deadline = time.monotonic() + 3.0
    while True:
        rows = file_rows(srv, client_id, file_name)
        if (rows and any(bool(r["Verified"]) == verified for r in rows)) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rows, (f"no files row for ID={client_id.hex()} FileName={file_name!r}; table:\n"
                  f"{dump_files_table(srv)}")
    matching = [r for r in rows if bool(r["Verified"]) == verified]
    assert matching, (f"files row(s) for {file_name!r} have Verified="
                      f"{[r['Verified'] for r in rows]}, expected {int(verified)}")
    row = matching[-1]
    rel = Path(row["PathName"])
    assert not rel.is_absolute(), f"PathName {row['PathName']!r} is not relative to the data dir"
    path = (srv.data_dir / rel).resolve()
    assert path.is_relative_to(srv.data_dir.resolve()), f"PathName {rel} leaves the data dir"
    assert path.is_file(), f"stored file {path} (PathName {rel}) does not exist"
    stored = path.read_bytes()
    assert len(stored) == len(data), f"stored {len(stored)} bytes, sent {len(data)}"
    assert stored == data, "stored file differs from the original"
    return row


def check_file_ok(got: P.FileReceived, c: SFCClient, file_name: str, data: bytes) -> None:
    assert got.client_id == c.client_id
    assert got.content_size == P.encrypted_size(len(data)), (
        f"1603 content_size {got.content_size}, expected {P.encrypted_size(len(data))}")
    assert got.file_name == file_name
    assert got.cksum == P.cksum(data), f"1603 cksum {got.cksum}, Python cksum {P.cksum(data)}"


# ---------------------------------------------------------------------------
# uploads, persistent connection


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100_000, 3_000_000])
def test_upload_persistent(rust_server, size):
    data = os.urandom(size)
    fname = f"file-{size}.bin"
    with client(rust_server) as c:
        c.register_and_key(new_name())
        assert c.client_id != P.ZERO_ID
        got = c.send_file(fname, data, packet_size=2048)
        check_file_ok(got, c, fname, data)
        ack = c.checksum_ok(fname)
        assert ack.code == P.RESP_ACK and ack.version == 3
        assert ack.payload == c.client_id
        c.assert_no_pending_reply(0.2)
    assert_stored(rust_server, c.client_id, fname, data)


def test_clients_table(rust_server):
    name = new_name()
    with client(rust_server) as c:
        c.register_and_key(name)
        assert c.transfer("t.bin", b"x" * 33).ok
    rows = rust_server.query("SELECT ID, Name, PublicKey, LastSeen, AESKey FROM clients "
                             "WHERE ID = ?", (c.client_id,))
    assert len(rows) == 1, rust_server.query("SELECT ID, Name FROM clients")
    r = rows[0]
    assert r["Name"] == name
    assert bytes(r["PublicKey"]) == P.public_key_der(c.rsa_key)
    assert bytes(r["AESKey"]) == c.aes_key
    assert r["LastSeen"] is not None


@pytest.mark.parametrize("packet_size,size", [(16, 10_000), (3806, 100_000), (65536, 100_000)])
def test_upload_packet_sizes(rust_server, packet_size, size):
    data = os.urandom(size)
    with client(rust_server) as c:
        c.register_and_key(new_name())
        check_file_ok(c.send_file("p.bin", data, packet_size=packet_size), c, "p.bin", data)
        assert c.checksum_ok("p.bin").code == P.RESP_ACK
    assert_stored(rust_server, c.client_id, "p.bin", data)


def test_upload_per_packet_content_size(rust_server):
    """Rule 4: content_size = the packet's own length is accepted; 1603 reports the whole."""
    data = os.urandom(10_000)
    with client(rust_server) as c:
        c.register_and_key(new_name())
        got = c.send_file("pp.bin", data, packet_size=1024, content_size_mode="packet")
        check_file_ok(got, c, "pp.bin", data)
        assert c.checksum_ok("pp.bin").code == P.RESP_ACK
    assert_stored(rust_server, c.client_id, "pp.bin", data)


# ---------------------------------------------------------------------------
# connection per request (the original C++ client)


def test_upload_connection_per_request(rust_server):
    data = os.urandom(10_000)  # 10016 encrypted bytes -> 5 packets of 2048
    with client(rust_server, per_request=True) as c:
        c.register_and_key(new_name("orig"))
        got = c.send_file("cpp.bin", data, packet_size=2048)
        assert len(c.intermediate_replies) == 4
        for r in c.intermediate_replies:
            assert r.code == P.RESP_FILE_OK and r.payload == c.client_id and r.version == 3
        check_file_ok(got, c, "cpp.bin", data)
        assert c.checksum_ok("cpp.bin").payload == c.client_id
    assert_stored(rust_server, c.client_id, "cpp.bin", data)


def test_resend_901_per_request(rust_server):
    data = os.urandom(5000)
    with client(rust_server, per_request=True) as c:
        c.register_and_key(new_name("orig"))
        check_file_ok(c.send_file("r.bin", data), c, "r.bin", data)
        ack = c.checksum_bad("r.bin")
        assert ack.code == P.RESP_ACK and ack.payload == c.client_id
        check_file_ok(c.send_file("r.bin", data), c, "r.bin", data)
        assert c.checksum_ok("r.bin").code == P.RESP_ACK
    assert_stored(rust_server, c.client_id, "r.bin", data)


# ---------------------------------------------------------------------------
# names


def test_left_padded_names(rust_server):
    """Rule 3: the original C++ client pads names on the LEFT."""
    name = new_name("left")
    data = os.urandom(3000)
    with client(rust_server, padding="left") as c:
        c.register_and_key(name)
        got = c.send_file("left.bin", data)
        check_file_ok(got, c, "left.bin", data)
        assert c.checksum_ok("left.bin").code == P.RESP_ACK
    row = assert_stored(rust_server, c.client_id, "left.bin", data)
    assert row["FileName"] == "left.bin"
    names = [r["Name"] for r in rust_server.query("SELECT Name FROM clients WHERE ID = ?",
                                                  (c.client_id,))]
    assert names == [name]


def test_duplicate_name(rust_server):
    name = new_name("dup")
    with client(rust_server) as a:
        assert a.register(name).code == P.RESP_REGISTER_OK
    for padding in ("right", "left"):
        with client(rust_server, padding=padding) as b:
            r = b.register(name)
            assert r.code == P.RESP_REGISTER_FAIL, f"{padding}-padded duplicate got {r.code}"
            assert r.payload == b"" and r.version == 3


def test_path_like_file_name(rust_server):
    """Rule 8: a file name is a label; stored inside the data dir, kept as sent."""
    data = os.urandom(100)
    label = "../../escape/x.bin"
    with client(rust_server) as c:
        c.register_and_key(new_name())
        check_file_ok(c.send_file(label, data), c, label, data)
        assert c.checksum_ok(label).code == P.RESP_ACK
    assert_stored(rust_server, c.client_id, label, data)  # checks PathName stays inside


# ---------------------------------------------------------------------------
# reconnect


def test_reconnect(rust_server):
    name = new_name("re")
    with client(rust_server) as a:
        a.register_and_key(name)
        first_key = a.aes_key
    with client(rust_server, client_id=a.client_id, rsa_key=a.rsa_key, name=name) as b:
        r = b.reconnect()
        assert r.code == P.RESP_RECONNECT_OK and r.version == 3
        assert r.client_id() == a.client_id
        assert b.aes_key != first_key, "1605 must carry a fresh AES key"
        data = os.urandom(20_000)
        got = b.send_file("after-reconnect.bin", data)
        check_file_ok(got, b, "after-reconnect.bin", data)
        assert b.checksum_ok("after-reconnect.bin").code == P.RESP_ACK
    assert_stored(rust_server, a.client_id, "after-reconnect.bin", data)
    rows = rust_server.query("SELECT AESKey FROM clients WHERE ID = ?", (a.client_id,))
    assert bytes(rows[0]["AESKey"]) == b.aes_key


def test_reconnect_unknown_client(rust_server):
    cid = os.urandom(16)
    with client(rust_server, client_id=cid, name=new_name("ghost")) as c:
        r = c.reconnect()
    assert r.code == P.RESP_RECONNECT_REJECTED
    assert r.payload == cid, f"1606 payload {r.payload.hex()}, expected the client id {cid.hex()}"


def test_reconnect_without_public_key(rust_server):
    name = new_name("nokey")
    with client(rust_server) as c:
        assert c.register(name).code == P.RESP_REGISTER_OK
        c.rsa_key = P.generate_rsa_key()
        r = c.reconnect()
    assert r.code == P.RESP_RECONNECT_REJECTED and r.payload == c.client_id


# ---------------------------------------------------------------------------
# 901 / 902


def test_resend_901_persistent(rust_server):
    """901 on a persistent connection gets no reply; resend; 900 -> 1604."""
    data = os.urandom(50_000)
    with client(rust_server) as c:
        c.register_and_key(new_name())
        check_file_ok(c.send_file("again.bin", data), c, "again.bin", data)
        assert c.checksum_bad("again.bin") is None
        c.assert_no_pending_reply(0.5)
        check_file_ok(c.send_file("again.bin", data), c, "again.bin", data)
        ack = c.checksum_ok("again.bin")
        assert ack.code == P.RESP_ACK and ack.payload == c.client_id
    assert_stored(rust_server, c.client_id, "again.bin", data)


def test_give_up_902(rust_server):
    data = os.urandom(1000)
    with client(rust_server) as c:
        c.register_and_key(new_name())
        for attempt in range(4):
            check_file_ok(c.send_file("bad.bin", data), c, "bad.bin", data)
            if attempt < 3:
                c.checksum_bad("bad.bin")
        ack = c.give_up("bad.bin")
        assert ack.code == P.RESP_ACK and ack.payload == c.client_id
    rows = file_rows(rust_server, c.client_id, "bad.bin")
    assert not any(r["Verified"] for r in rows), "902 must not mark the file verified"


# ---------------------------------------------------------------------------
# tolerance (docs/PROTOCOL.md rules S5, S9)


def test_register_ignores_client_id_and_version(rust_server):
    """825 with an ASCII-digit client id and version 1: accepted, reply version 3."""
    with client(rust_server, version=1) as c:
        r = c.request(P.REQ_REGISTER, P.payload_register(new_name("v1")),
                      client_id=b"1234567890123456")
        assert r.code == P.RESP_REGISTER_OK and r.version == 3 and len(r.payload) == 16
    with client(rust_server, version=2) as d:
        d.register_and_key(new_name("v2"))
        data = os.urandom(777)
        assert d.transfer("v2.bin", data).ok
    assert_stored(rust_server, d.client_id, "v2.bin", data)


def test_public_key_variants(rust_server):
    """Rule 6: any RSA SPKI DER of 1024..4096 bits, and a DER padded with zeros."""
    from Crypto.Cipher import PKCS1_OAEP
    from Crypto.PublicKey import RSA

    big = RSA.generate(2048)
    small = P.generate_rsa_key()
    for label, key, der in [
        ("2048-bit e=65537", big, big.publickey().export_key("DER")),
        ("160-byte DER + 8 zero bytes", small, P.public_key_der(small) + b"\0" * 8),
    ]:
        name = new_name("key")
        with client(rust_server) as c:
            c.register(name)
            r = c.request(P.REQ_PUBLIC_KEY, P.pack_name(name) + der)
            assert r.code == P.RESP_PUBLIC_KEY_OK, f"{label}: got {r.code}"
            assert r.client_id() == c.client_id
            assert len(r.payload) == 16 + key.size_in_bytes(), label
            assert len(PKCS1_OAEP.new(key).decrypt(r.payload[16:])) == 32, label


@pytest.mark.parametrize("field", [
    b"ab\0cd".ljust(255, b"\0"),
    b"\0" * 255,
    b"ab\x07cd".ljust(255, b"\0"),
    b"ab\xe9cd".ljust(255, b"\0"),
], ids=["nul-inside", "empty", "control-char", "non-ascii"])
def test_invalid_names_rejected(rust_server, field):
    """Rule 3: a NUL inside, an empty name or non-printable bytes -> 1601."""
    with client(rust_server) as c:
        r = c.request(P.REQ_REGISTER, field, client_id=P.ZERO_ID)
    assert r.code == P.RESP_REGISTER_FAIL and r.payload == b""


def test_malformed_requests_do_not_kill_server(rust_server):
    """Rule 9: malformed requests get 1607; the server goes on serving."""
    bad = [
        P.REQUEST_HEADER.pack(P.ZERO_ID, 3, P.REQ_REGISTER, 10) + b"x" * 10,
        P.pack_request(P.ZERO_ID, P.REQ_SEND_FILE, b"q" * 100),
        P.pack_request(os.urandom(16), P.REQ_SEND_FILE,
                       P.payload_file_packet(16, 1, 1, 1, "a", b"x" * 16)),
        P.pack_request(os.urandom(16), P.REQ_CRC_OK, P.pack_name("nothing")),
    ]
    for msg in bad:
        with socket.create_connection((rust_server.host, rust_server.port), timeout=10) as s:
            s.sendall(msg)
            r = P.read_response(s)
            assert r.code == P.RESP_GENERAL_ERROR and r.version == 3 and r.payload == b"", msg[:30]
    with client(rust_server) as c:
        c.register(new_name("garbagekey"))
        r = c.request(P.REQ_PUBLIC_KEY, P.pack_name(c.name) + b"\x30\x81" + os.urandom(158))
        assert r.code == P.RESP_GENERAL_ERROR
        c.rsa_key = None
        assert c.send_public_key().code == P.RESP_PUBLIC_KEY_OK  # same connection goes on
        assert c.transfer("ok.bin", b"still fine").ok


def test_unknown_request_code(rust_server):
    with client(rust_server) as c:
        r = c.request(4242, b"junk")
        assert r.code == P.RESP_GENERAL_ERROR and r.version == 3
    # the server goes on serving
    with client(rust_server) as d:
        d.register_and_key(new_name())
        assert d.transfer("fine.bin", b"fine").ok


def test_server_stops_on_sigterm(rust_server):
    with client(rust_server) as c:
        c.register_and_key(new_name())
    assert rust_server.stop(signal.SIGTERM, grace=10.0), "sfc-server ignored SIGTERM for 10 s"
