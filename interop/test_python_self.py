"""Sanity tests of the Python implementation alone: sfc_py.client against sfc_py.server.

No Rust involved. If these fail, the interop results mean nothing.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest
from Crypto.PublicKey import RSA

from sfc_py import protocol as P
from sfc_py.client import SFCClient


# -- protocol building blocks ------------------------------------------------


def test_cksum_known_values():
    assert P.cksum(b"hello world\n") == 3733384285
    assert P.cksum(b"") == 4294967295  # `cksum < /dev/null`


# CI installs cksum (.ci/run): there its absence fails the test rather than skip it.
@pytest.mark.skipif(
    shutil.which("cksum") is None and not os.environ.get("CI"), reason="no cksum command"
)
@pytest.mark.parametrize("size", [0, 1, 255, 256, 65536, 70001])
def test_cksum_matches_posix_command(size):
    data = os.urandom(size)
    out = subprocess.run(["cksum"], input=data, capture_output=True, check=True).stdout
    assert P.cksum(data) == int(out.split()[0])


def test_name_fields():
    right = P.pack_name("alice")
    left = P.pack_name("alice", "left")
    assert len(right) == len(left) == 255
    assert right.startswith(b"alice\0") and left.endswith(b"\0alice")
    assert P.unpack_name(right) == P.unpack_name(left) == "alice"
    assert P.unpack_name(P.pack_name("x" * 254)) == "x" * 254
    with pytest.raises(ValueError):
        P.pack_name("x" * 255)
    for bad in (b"\0" * 255, b"al\0ce".ljust(255, b"\0"), b"al\x01ce".ljust(255, b"\0")):
        with pytest.raises(P.ProtocolError):
            P.unpack_name(bad)


def test_headers_little_endian():
    req = P.pack_request(b"\x01" * 16, 828, b"abc")
    assert req == b"\x01" * 16 + b"\x03" + struct.pack("<H", 828) + b"\x03\0\0\0abc"
    assert req[17:19] == b"\x3c\x03"
    resp = P.pack_response(1603, b"xy")
    assert resp == b"\x03\x43\x06\x02\0\0\0xy"


def test_file_packet_layout():
    p = P.payload_file_packet(32, 17, 1, 2, "f.bin", b"C" * 16)
    assert len(p) == 267 + 16
    assert p[:12] == struct.pack("<IIHH", 32, 17, 1, 2)
    pkt = P.unpack_file_packet(p)
    assert (pkt.content_size, pkt.orig_file_size, pkt.packet_number, pkt.total_packets,
            pkt.file_name, pkt.content) == (32, 17, 1, 2, "f.bin", b"C" * 16)


def test_crypto_roundtrip():
    key = P.generate_rsa_key()
    assert key.e == 17 and key.size_in_bits() == 1024
    der = P.public_key_der(key)
    assert len(der) == 160
    # a DER padded with zeros is accepted
    assert P.import_public_key(der + b"\0\0").n == key.n
    aes = os.urandom(32)
    wrapped = P.rsa_wrap(der, aes)
    assert len(wrapped) == 128
    assert P.rsa_unwrap(key, wrapped) == aes
    for n in (0, 1, 15, 16, 17):
        data = os.urandom(n)
        ct = P.aes_encrypt(aes, data)
        assert len(ct) == P.encrypted_size(n)
        assert P.aes_decrypt(aes, ct) == data
    # zero IV: the first block of two encryptions of the same data is the same
    assert P.aes_encrypt(aes, b"A" * 32)[:16] == P.aes_encrypt(aes, b"A" * 48)[:16]


# -- client <-> server -----------------------------------------------------


def _stored(server, client, file_name):
    files = [f for f in server.stored_files()
             if f.client_id == client.client_id and f.file_name == file_name]
    assert len(files) == 1, server.stored_files()
    return files[0]


@pytest.mark.parametrize("per_request", [False, True], ids=["persistent", "per-request"])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 10_000, 100_000])
def test_upload(py_server, per_request, size):
    data = os.urandom(size)
    with SFCClient("127.0.0.1", py_server.port, per_request=per_request) as c:
        c.register_and_key(f"u{size}{per_request}")
        got = c.send_file("data.bin", data, packet_size=1000)
        n_packets = -(-P.encrypted_size(size) // 1000)
        assert len(c.intermediate_replies) == (n_packets - 1 if per_request else 0)
        assert (got.client_id, got.content_size, got.file_name, got.cksum) == (
            c.client_id, P.encrypted_size(size), "data.bin", P.cksum(data))
        assert c.checksum_ok("data.bin").payload == c.client_id
        c.assert_no_pending_reply(0.1)
    f = _stored(py_server, c, "data.bin")
    assert f.verified and f.path.read_bytes() == data


def test_left_padding_and_per_packet_content_size(py_server):
    data = os.urandom(5000)
    with SFCClient("127.0.0.1", py_server.port, padding="left") as c:
        c.register_and_key("lefty")
        got = c.send_file("left.bin", data, packet_size=512, content_size_mode="packet")
        assert got.file_name == "left.bin" and got.cksum == P.cksum(data)
        c.checksum_ok("left.bin")
    assert _stored(py_server, c, "left.bin").path.read_bytes() == data


def test_duplicate_name_and_reconnect(py_server):
    with SFCClient("127.0.0.1", py_server.port) as a:
        a.register_and_key("bob")
        first_key = a.aes_key
    with SFCClient("127.0.0.1", py_server.port, padding="left") as dup:
        assert dup.register("bob").code == P.RESP_REGISTER_FAIL
    with SFCClient("127.0.0.1", py_server.port, client_id=a.client_id, rsa_key=a.rsa_key,
                   name="bob") as b:
        r = b.reconnect()
        assert r.code == P.RESP_RECONNECT_OK and b.aes_key != first_key
        assert b.transfer("x", b"hello").ok
    with SFCClient("127.0.0.1", py_server.port, client_id=os.urandom(16), name="bob") as u:
        r = u.reconnect()
        assert r.code == P.RESP_RECONNECT_REJECTED and r.payload == u.client_id


@pytest.mark.parametrize("per_request", [False, True], ids=["persistent", "per-request"])
def test_resend_flow(start_py_server, per_request):
    srv = start_py_server(bad_checksums=1)
    data = os.urandom(3000)
    with SFCClient("127.0.0.1", srv.port, per_request=per_request) as c:
        c.register_and_key("carol")
        res = c.transfer("r.bin", data, packet_size=1024)
        assert res.ok and res.sends == 2
        c.assert_no_pending_reply(0.1)
    codes = [r.code for r in srv.request_log()]
    assert codes[-1] == P.REQ_CRC_OK and P.REQ_CRC_BAD_RESEND in codes
    resend = [r for r in srv.request_log() if r.code == P.REQ_CRC_BAD_RESEND][0]
    assert resend.reply == (P.RESP_ACK if per_request else None)


def test_give_up_flow(start_py_server):
    srv = start_py_server(bad_checksums=10)
    with SFCClient("127.0.0.1", srv.port) as c:
        c.register_and_key("dave")
        res = c.transfer("g.bin", b"abc")
        assert not res.ok and res.sends == 4
    f = _stored(srv, c, "g.bin")
    assert f.gave_up and not f.verified


def test_original_server_style(start_py_server):
    """close_after_reply: the server closes after every reply; per-request client works."""
    srv = start_py_server(close_after_reply=True)
    data = os.urandom(9000)
    with SFCClient("127.0.0.1", srv.port, per_request=True) as c:
        c.register_and_key("erin")
        assert c.transfer("o.bin", data, packet_size=2048).ok
    assert _stored(srv, c, "o.bin").path.read_bytes() == data
    assert {r.connection for r in srv.request_log()} == set(range(1, len(srv.request_log()) + 1))


def test_server_survives_garbage(py_server):
    with SFCClient("127.0.0.1", py_server.port) as c:
        r = c.request(4242, b"junk")
        assert r.code == P.RESP_GENERAL_ERROR and r.version == 3
        # unknown client id on 828
        r = c.request(P.REQ_SEND_FILE, P.payload_file_packet(16, 1, 1, 1, "a", b"x" * 16),
                      client_id=os.urandom(16))
        assert r.code == P.RESP_GENERAL_ERROR
        c.register_and_key("frank")
        assert c.transfer("after.bin", b"ok").ok
    key = RSA.import_key(c.rsa_key.export_key("DER"))
    assert key.has_private()
