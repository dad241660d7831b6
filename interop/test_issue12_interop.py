"""Issue 12, items 1-3: what public clients ran into, replayed by the independent Python
peer against the real `sfc-server`.

1. A client killed in the middle of an upload reconnects (827 -> 1605) and starts again
   with packet 1: a new upload (another file, or the same file from the start), in both
   connection styles. An 826/827 or a new file name also drops what was left unfinished.
2. A client that pads every packet's content with zeros to 1,024 bytes.
3. A client with packet_number and total_packets swapped: one refusal, one WARN, and the
   next healthy client from the same address is served.

Each of these failed before its fix (they were strict xfails until then).
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from sfc_py import protocol as P
from sfc_py.client import SFCClient
from test_server_interop import assert_stored, check_file_ok, client, file_rows, new_name

HELLO = b"hello world\n"  # cksum 3733384285 (PROTOCOL.md)
BIG_SIZE = 5 * 1024 * 1024  # 5 MiB: 1,281 packets of 4,096 bytes, as in the report
BIG_PACKET = 4096
SENT_BEFORE_KILL = 34


# ---------------------------------------------------------------------------
# helpers


def temp_files(srv) -> list[str]:
    """Temporary upload files left in the data folder.

    Stored files live in files/<client hex>/<encoded name>; uploads in progress are
    written beside them under a name starting with '.' (an encoded name never does).
    """
    root = srv.data_dir / "files"
    if not root.exists():
        return []
    return sorted(str(p.relative_to(srv.data_dir)) for p in root.rglob(".*") if p.is_file())


def wait_no_temp_files(srv, within: float = 3.0) -> list[str]:
    """Temp files still there after `within` seconds (the server may drop them a moment
    after replying)."""
    deadline = time.monotonic() + within
    while True:
        left = temp_files(srv)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def packet_payloads(c: SFCClient, file_name: str, data: bytes, packet_size: int):
    """The 828 payloads of `data` under c's current AES key (whole content_size)."""
    ct = P.aes_encrypt(c.aes_key, data)
    total = -(-len(ct) // packet_size)
    for i in range(total):
        yield P.payload_file_packet(len(ct), len(data), i + 1, total, file_name,
                                    ct[i * packet_size:(i + 1) * packet_size])


def send_first_packets(c: SFCClient, file_name: str, data: bytes, count: int,
                       packet_size: int = BIG_PACKET) -> None:
    """Sends packets 1..count of a multi-packet upload and stops there."""
    payloads = packet_payloads(c, file_name, data, packet_size)
    for number in range(1, count + 1):
        resp = c.request(P.REQ_SEND_FILE, next(payloads), expect_reply=c.per_request)
        if c.per_request:
            assert resp.code == P.RESP_FILE_OK and resp.payload == c.client_id, (
                f"packet {number}: {resp}")


def drop_connection(c: SFCClient, how: str) -> None:
    """Closes c's connection without a word, as the kernel does for a killed process:
    'fin' (nothing unread: an orderly close) or 'rst' (SO_LINGER 0: a reset)."""
    if c.sock is None:
        return
    if how == "rst":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def upload_in_progress(srv, c: SFCClient, file_name: str, data: bytes) -> None:
    """Precondition: the first SENT_BEFORE_KILL packets are in, a temp file holds them."""
    send_first_packets(c, file_name, data, SENT_BEFORE_KILL)
    deadline = time.monotonic() + 3.0
    while not temp_files(srv) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert temp_files(srv), "precondition: the unfinished upload has a temporary file"


def recent_warnings(srv, count: int = 5) -> str:
    with srv._lock:
        lines = [line for line in srv.lines if " WARN " in line]
    return "\n".join(lines[-count:]) or "(no WARN line)"


def send_file_expecting_1603(srv, c: SFCClient, file_name: str, data: bytes,
                             packet_size: int = BIG_PACKET) -> P.FileReceived:
    """c.send_file, failing with the server's latest WARN lines when it is refused."""
    try:
        return c.send_file(file_name, data, packet_size=packet_size)
    except P.ProtocolError as e:
        pytest.fail(f"upload of {file_name!r} refused: {e}\nserver's last WARN lines:\n"
                    f"{recent_warnings(srv)}", pytrace=False)


def upload_and_confirm(srv, c: SFCClient, file_name: str, data: bytes,
                       packet_size: int = BIG_PACKET) -> None:
    """Full upload: 1603 with the right checksum, 900 -> 1604, stored byte for byte, and
    no temporary file left behind."""
    got = send_file_expecting_1603(srv, c, file_name, data, packet_size)
    check_file_ok(got, c, file_name, data)
    ack = c.checksum_ok(file_name)
    assert ack.code == P.RESP_ACK and ack.payload == c.client_id
    assert_stored(srv, c.client_id, file_name, data)
    left = wait_no_temp_files(srv)
    assert not left, f"stale temporary files after the upload: {left}"


def warn_lines(srv, needle: str) -> list[str]:
    with srv._lock:
        lines = list(srv.lines)
    return [line for line in lines if " WARN " in f" {line} " and needle in line]


# ---------------------------------------------------------------------------
# item 1: kill and reconnect


@pytest.mark.parametrize("restart", ["other-file", "same-file"])
@pytest.mark.parametrize("style", ["persistent-fin", "persistent-rst", "per-request"])
def test_killed_client_reconnects_and_starts_over(rust_server, style, restart):
    """Killed after 34 of 1,281 packets of a 5 MiB file; the same client ID reconnects
    (827 -> 1605) and sends packet 1 of a new upload: a 12-byte file as packet 1 of 1,
    or the same 5 MiB file from packet 1. The upload succeeds and nothing is left."""
    per_request = style == "per-request"
    big = os.urandom(BIG_SIZE)
    name = new_name("killed")
    first = client(rust_server, per_request=per_request)
    first.register_and_key(name)
    upload_in_progress(rust_server, first, "big.bin", big)
    drop_connection(first, style.removeprefix("persistent-"))  # per-request: already closed

    with client(rust_server, per_request=per_request, client_id=first.client_id,
                rsa_key=first.rsa_key, name=name) as again:
        r = again.reconnect()
        assert r.code == P.RESP_RECONNECT_OK, f"827 got {r.code}"
        if restart == "other-file":
            got = send_file_expecting_1603(rust_server, again, "hello.txt", HELLO)
            assert got.cksum == 3733384285
            check_file_ok(got, again, "hello.txt", HELLO)
            assert again.checksum_ok("hello.txt").code == P.RESP_ACK
            assert_stored(rust_server, again.client_id, "hello.txt", HELLO)
            left = wait_no_temp_files(rust_server)
            assert not left, f"the abandoned big.bin upload left {left}"
        else:
            upload_and_confirm(rust_server, again, "big.bin", big)
    if restart == "other-file":
        assert not file_rows(rust_server, first.client_id, "big.bin"), (
            "the unfinished upload must not be stored")


@pytest.mark.parametrize("code", [P.REQ_RECONNECT, P.REQ_PUBLIC_KEY])
def test_key_exchange_drops_unfinished_upload(rust_server, code):
    """An 827 or 826 replaces the AES key: the client's unfinished upload can never
    complete, so it is dropped at once (its temporary file removed), and the client's
    next upload succeeds."""
    big = os.urandom(BIG_SIZE)
    with client(rust_server) as c:
        c.register_and_key(new_name("rekey"))
        upload_in_progress(rust_server, c, "big.bin", big)
        old_key = c.aes_key
        r = c.reconnect() if code == P.REQ_RECONNECT else c.send_public_key()
        assert r.code in (P.RESP_RECONNECT_OK, P.RESP_PUBLIC_KEY_OK), f"{code} got {r.code}"
        assert c.aes_key != old_key
        left = wait_no_temp_files(rust_server)
        assert not left, f"after {code} the unfinished upload still holds {left}"
        upload_and_confirm(rust_server, c, "hello.txt", HELLO)
    assert not file_rows(rust_server, c.client_id, "big.bin")


@pytest.mark.parametrize("per_request", [False, True], ids=["persistent", "per-request"])
def test_new_file_name_drops_unfinished_upload(rust_server, per_request):
    """Packet 1 of another file from the same client (same key, no 827) starts that
    upload; the unfinished one is dropped with its temporary file."""
    big = os.urandom(BIG_SIZE)
    with client(rust_server, per_request=per_request) as c:
        c.register_and_key(new_name("switch"))
        upload_in_progress(rust_server, c, "big.bin", big)
        upload_and_confirm(rust_server, c, "hello.txt", HELLO)
    assert not file_rows(rust_server, c.client_id, "big.bin")


# ---------------------------------------------------------------------------
# item 2: content zero-padded to 1,024 bytes

PADDED_CONTENT = 1024


def padded_payloads(c: SFCClient, file_name: str, data: bytes, *, junk: bool = False):
    """Every packet's content padded with zeros to 1,024 bytes, content_size = the whole
    encrypted size. junk=True: the last padding byte of the last packet is 0x01."""
    ct = P.aes_encrypt(c.aes_key, data)
    total = -(-len(ct) // PADDED_CONTENT)
    out = []
    for i in range(total):
        content = ct[i * PADDED_CONTENT:(i + 1) * PADDED_CONTENT].ljust(PADDED_CONTENT, b"\0")
        if junk and i == total - 1:
            assert len(ct) % PADDED_CONTENT, "the test needs padding in the last packet"
            content = content[:-1] + b"\x01"
        payload = P.payload_file_packet(len(ct), len(data), i + 1, total, file_name, content)
        assert len(payload) == 267 + PADDED_CONTENT == 1291
        out.append(payload)
    return out


def send_padded(c: SFCClient, payloads) -> P.Response:
    """Persistent style: no reply read for intermediate packets; returns the final one."""
    for payload in payloads[:-1]:
        c.request(P.REQ_SEND_FILE, payload, expect_reply=False)
    return c.request(P.REQ_SEND_FILE, payloads[-1])


@pytest.mark.parametrize("size", [12, 100 * 1024])
def test_zero_padded_packets_are_accepted(rust_server, size):
    data = HELLO if size == 12 else os.urandom(size)
    with client(rust_server) as c:
        c.register_and_key(new_name("padded"))
        resp = send_padded(c, padded_payloads(c, "padded.bin", data))
        assert resp.code == P.RESP_FILE_OK, (
            f"got {resp.code}; server's last WARN lines:\n{recent_warnings(rust_server)}")
        got = P.unpack_file_ok(resp.payload)
        check_file_ok(got, c, "padded.bin", data)  # content_size = encrypted size, cksum
        assert c.checksum_ok("padded.bin").code == P.RESP_ACK
        c.assert_no_pending_reply(0.2)
    assert_stored(rust_server, c.client_id, "padded.bin", data)
    assert not wait_no_temp_files(rust_server)


def assert_padding_refused(srv, size: int) -> list[str]:
    """Non-zero bytes after the encrypted size: 1607, nothing stored, nothing left, the
    server goes on serving. Returns the WARN lines naming the client."""
    data = HELLO if size == 12 else os.urandom(size)
    with client(srv) as c:
        c.register_and_key(new_name("junkpad"))
        resp = send_padded(c, padded_payloads(c, "junk.bin", data, junk=True))
        assert resp.code == P.RESP_GENERAL_ERROR, f"non-zero padding got {resp.code}"
    assert not file_rows(srv, c.client_id, "junk.bin"), "a refused upload must not be stored"
    assert not wait_no_temp_files(srv)
    with client(srv) as d:
        d.register_and_key(new_name("after"))
        assert d.transfer("fine.bin", b"fine").ok
    deadline = time.monotonic() + 3.0
    while not warn_lines(srv, c.client_id.hex()[:8]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return warn_lines(srv, c.client_id.hex()[:8])


def test_nonzero_padding_is_refused_with_a_true_message(rust_server):
    """A 12-byte file whose padding holds a non-zero byte: 1607. The logged reason must
    not claim that content_size 16 is not the encrypted size of a 12-byte file (it is)."""
    lines = assert_padding_refused(rust_server, 12)
    assert lines, f"the refusal is logged at WARN:\n{rust_server.log()}"
    wrong = [line for line in lines if "matches neither the encrypted size" in line]
    assert not wrong, f"misleading reason logged: {wrong}"


def test_nonzero_padding_in_the_last_packet_is_refused(rust_server):
    """100 KiB padded to 1,024-byte packets with a non-zero byte after the encrypted size:
    still 1607 (passes today; guards the fix of item 2 against accepting any padding)."""
    assert_padding_refused(rust_server, 100 * 1024)


# ---------------------------------------------------------------------------
# item 3: a client of another dialect (packet_number and total_packets swapped)


def swapped_upload(c: SFCClient, file_name: str, packets: int, packet_size: int = 256
                   ) -> list[int]:
    """Sends a file of `packets` packets with packet_number and total_packets swapped,
    on one connection, without reading; then reads every reply until the server has been
    silent for a second or closes. Returns the reply codes."""
    ct_len = packets * packet_size
    data = os.urandom(ct_len - 16)  # encrypted size = packets * packet_size exactly
    ct = P.aes_encrypt(c.aes_key, data)
    assert len(ct) == ct_len
    if c.sock is None:
        c.sock = c._open()
    sock = c.sock
    try:
        for i in range(packets):
            payload = P.payload_file_packet(len(ct), len(data), packets, i + 1, file_name,
                                            ct[i * packet_size:(i + 1) * packet_size])
            sock.sendall(P.pack_request(c.client_id, P.REQ_SEND_FILE, payload))
    except OSError:
        pass  # closed by the server (today: the failure-rate limit)
    codes = []
    sock.settimeout(1.0)
    try:
        while True:
            codes.append(P.read_response(sock).code)
    except (OSError, P.ProtocolError):
        pass  # silence (timeout), or closed/reset
    c.close()
    return codes


def healthy_client_is_served(srv) -> SFCClient:
    with client(srv) as h:
        try:
            h.register_and_key(new_name("healthy"))
            result = h.transfer("healthy.bin", HELLO)
        except (OSError, P.ProtocolError) as e:
            pytest.fail(f"the healthy client from 127.0.0.1 was not served: {e!r}\n"
                        f"server's last WARN lines:\n{recent_warnings(srv, 2)}", pytrace=False)
        assert result.ok and result.replies[-1].cksum == 3733384285
    assert_stored(srv, h.client_id, "healthy.bin", HELLO)
    return h


def test_swapped_field_client_does_not_lock_out_its_address(rust_server):
    """500 swapped packets (more than the failure burst of 300) from 127.0.0.1: the
    upload is refused with 1607, counted once; a healthy client from the same address
    then registers and uploads."""
    with client(rust_server) as s:
        s.register_and_key(new_name("swapped"))
        codes = swapped_upload(s, "swapped.bin", 500)
    assert codes and codes[0] == P.RESP_GENERAL_ERROR, f"swapped upload got {codes[:5]}"
    assert set(codes) == {P.RESP_GENERAL_ERROR}, f"replies other than 1607: {set(codes)}"
    assert not file_rows(rust_server, s.client_id, "swapped.bin")
    healthy_client_is_served(rust_server)


def test_swapped_field_upload_logs_one_warning(rust_server):
    """50 swapped packets (under the failure limit): exactly one WARN line names the
    client, and it names the file too."""
    with client(rust_server) as s:
        s.register_and_key(new_name("swapped"))
        codes = swapped_upload(s, "swapped.bin", 50)
    assert codes and codes[0] == P.RESP_GENERAL_ERROR, f"swapped upload got {codes[:5]}"
    healthy_client_is_served(rust_server)  # and by now the server has logged it all
    time.sleep(0.3)
    lines = warn_lines(rust_server, s.client_id.hex()[:8])
    assert len(lines) == 1, (f"{len(lines)} WARN lines for one refused upload; first 3:\n"
                             + "\n".join(lines[:3]))
    assert "swapped.bin" in lines[0], f"the WARN line names no file: {lines[0]}"
