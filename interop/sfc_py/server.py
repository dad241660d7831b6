"""A minimal SecureFileComm v3 protocol server (Python + PyCryptodome), for interop tests.

In-memory state, received files written to a folder it is given. Threaded; binds
127.0.0.1 on port 0 by default. Use it from pytest:

    srv = SFCServer(tmp_path / "store").start()
    ... srv.port ...
    srv.stop()

Behaviour follows docs/PROTOCOL.md, including the server rules for points the
specification leaves open: requests are served in order on a connection until the client
closes it, and all session state is per client ID (rule S1); an intermediate file packet
gets a 1603 with only the client ID, and 901 gets a 1604, only when the request is the
first on its connection (rule S2).

Test knobs:
- close_after_reply=True behaves like the original server: it closes the connection
  after every reply (so every request is the first on its connection and is answered);
- bad_checksums=N makes the first N 1603 replies carry a wrong checksum;
- quirks, a set of behaviours seen in other servers that clients must tolerate:
  "ack_901_always" (a 1604 after every 901, even on a persistent connection),
  "empty_1606" (1606 without the client ID), "left_pad_1603" (file name in 1603 padded
  on the left), "single_recv" (each field read with one recv(n), short reads unnoticed,
  as three public servers do);
- fail_requests={code: N} answers the first N requests with that code with 1607
  (without acting on them), to exercise a client's retries; for 828 only the final
  packet of a file counts (like a server failing to store the file, "disk full");
  fail_requests={INTERMEDIATE_PACKET: N} answers the first N intermediate packets
  with 1607 (what a server does when it cannot use a packet).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import socketserver
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from Crypto.Random import get_random_bytes

from . import protocol as P

log = logging.getLogger("sfc_py.server")

INTERMEDIATE_PACKET = -828  # key for fail_requests: an 828 that is not the last packet


@dataclass
class ClientRecord:
    client_id: bytes
    name: str
    public_key: bytes | None = None
    aes_key: bytes | None = None


@dataclass
class Upload:
    file_name: str
    total_packets: int
    orig_file_size: int
    next_packet: int = 1
    content: bytearray = field(default_factory=bytearray)
    content_sizes: set[int] = field(default_factory=set)


@dataclass
class StoredFile:
    client_id: bytes
    file_name: str
    path: Path
    size: int
    cksum: int
    verified: bool = False
    gave_up: bool = False
    sends: int = 0


@dataclass
class LoggedRequest:
    connection: int
    index_on_connection: int
    client_id: bytes
    version: int
    code: int
    payload_size: int
    reply: int | None
    reply_payload_size: int | None = None
    note: str = ""
    payload_head: bytes = b""  # first 300 payload bytes, to inspect padding and fields


class _Reply(Exception):
    """Raised inside dispatch to answer immediately (usually 1607)."""

    def __init__(self, code: int, payload: bytes = b"", note: str = "") -> None:
        super().__init__(note)
        self.code = code
        self.payload = payload
        self.note = note


class ServerState:
    def __init__(self, folder: Path, bad_checksums: int = 0,
                 quirks: frozenset[str] = frozenset(),
                 fail_requests: dict[int, int] | None = None) -> None:
        self.fail_requests = dict(fail_requests or {})
        unknown = set(quirks) - {"ack_901_always", "empty_1606", "left_pad_1603", "single_recv"}
        if unknown:
            raise ValueError(f"unknown quirks {unknown}")
        self.quirks = frozenset(quirks)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.clients: dict[bytes, ClientRecord] = {}
        self.names: dict[str, bytes] = {}
        self.uploads: dict[bytes, Upload] = {}
        self.files: dict[tuple[bytes, str], StoredFile] = {}
        self.requests: list[LoggedRequest] = []
        self.bad_checksums = bad_checksums

    # -- helpers ----------------------------------------------------------

    def _client(self, cid: bytes, need_key: bool = False) -> ClientRecord:
        rec = self.clients.get(cid)
        if rec is None:
            raise _Reply(P.RESP_GENERAL_ERROR, note=f"unknown client id {cid.hex()}")
        if need_key and rec.aes_key is None:
            raise _Reply(P.RESP_GENERAL_ERROR, note="client has no AES key yet")
        return rec

    def _disk_path(self, cid: bytes, file_name: str) -> Path:
        base = re.split(r"[\\/]", file_name)[-1]
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "file"
        tag = hashlib.sha256(file_name.encode()).hexdigest()[:12]
        d = self.folder / cid.hex()
        d.mkdir(exist_ok=True)
        return d / f"{safe[:100]}-{tag}"

    @staticmethod
    def _name(field: bytes) -> str:
        try:
            return P.unpack_name(field)
        except P.ProtocolError as e:
            raise _Reply(P.RESP_GENERAL_ERROR, note=str(e)) from None

    # -- dispatch ---------------------------------------------------------

    def dispatch(self, req: P.Request, first_on_connection: bool) -> tuple[int | None, bytes, str]:
        """Returns (reply code or None for no reply, reply payload, note)."""
        try:
            with self.lock:
                key = req.code
                if key == P.REQ_SEND_FILE and len(req.payload) >= P.FILE_PACKET_HEADER.size:
                    _, _, pn, tp = P.FILE_PACKET_HEADER.unpack_from(req.payload)
                    if pn < tp:
                        key = INTERMEDIATE_PACKET
                if self.fail_requests.get(key, 0) > 0:
                    self.fail_requests[key] -= 1
                    self.uploads.pop(req.client_id, None)
                    return P.RESP_GENERAL_ERROR, b"", "injected failure"
                return self._dispatch(req, first_on_connection)
        except _Reply as r:
            return r.code, r.payload, r.note

    def _dispatch(self, req: P.Request, first: bool) -> tuple[int | None, bytes, str]:
        code, cid, payload = req.code, req.client_id, req.payload

        if code == P.REQ_REGISTER:
            if len(payload) != P.NAME_LEN:
                raise _Reply(P.RESP_REGISTER_FAIL, note=f"825 payload {len(payload)} bytes")
            try:
                name = P.unpack_name(payload)
            except P.ProtocolError as e:
                raise _Reply(P.RESP_REGISTER_FAIL, note=str(e)) from None
            if name in self.names:
                raise _Reply(P.RESP_REGISTER_FAIL, note=f"name {name!r} taken")
            new_id = uuid.uuid4().bytes
            self.clients[new_id] = ClientRecord(new_id, name)
            self.names[name] = new_id
            return P.RESP_REGISTER_OK, new_id, f"registered {name!r}"

        if code == P.REQ_PUBLIC_KEY:
            if len(payload) <= P.NAME_LEN:
                raise _Reply(P.RESP_GENERAL_ERROR, note="826 without a key")
            rec = self._client(cid)
            name = self._name(payload[: P.NAME_LEN])
            if name != rec.name:
                raise _Reply(P.RESP_GENERAL_ERROR, note=f"826 name {name!r} != {rec.name!r}")
            der = payload[P.NAME_LEN:]
            try:
                key = P.import_public_key(der)
            except (ValueError, IndexError, TypeError) as e:
                raise _Reply(P.RESP_GENERAL_ERROR, note=f"bad public key: {e}") from None
            if not 1024 <= key.size_in_bits() <= 4096:
                raise _Reply(P.RESP_GENERAL_ERROR, note=f"{key.size_in_bits()}-bit key")
            rec.public_key = bytes(der)
            rec.aes_key = get_random_bytes(P.AES_KEY_LEN)
            return P.RESP_PUBLIC_KEY_OK, cid + P.rsa_wrap(der, rec.aes_key), "key stored"

        if code == P.REQ_RECONNECT:
            rec = self.clients.get(cid)
            try:
                name = P.unpack_name(payload) if len(payload) == P.NAME_LEN else None
            except P.ProtocolError:
                name = None
            if rec is None or rec.public_key is None or name != rec.name:
                payload = b"" if "empty_1606" in self.quirks else cid
                return P.RESP_RECONNECT_REJECTED, payload, "reconnect rejected"
            rec.aes_key = get_random_bytes(P.AES_KEY_LEN)
            return P.RESP_RECONNECT_OK, cid + P.rsa_wrap(rec.public_key, rec.aes_key), "reconnected"

        if code == P.REQ_SEND_FILE:
            rec = self._client(cid, need_key=True)
            try:
                pkt = P.unpack_file_packet(payload)
            except P.ProtocolError as e:
                raise _Reply(P.RESP_GENERAL_ERROR, note=str(e)) from None
            if not 1 <= pkt.packet_number <= pkt.total_packets:
                raise _Reply(P.RESP_GENERAL_ERROR, note=f"packet {pkt.packet_number}/{pkt.total_packets}")
            up = self.uploads.get(cid)
            if pkt.packet_number == 1:
                up = self.uploads[cid] = Upload(pkt.file_name, pkt.total_packets, pkt.orig_file_size)
            elif (
                up is None
                or up.file_name != pkt.file_name
                or up.total_packets != pkt.total_packets
                or up.next_packet != pkt.packet_number
            ):
                self.uploads.pop(cid, None)
                raise _Reply(P.RESP_GENERAL_ERROR, note=f"out-of-order packet {pkt.packet_number}")
            up.content += pkt.content
            up.content_sizes.add(pkt.content_size)
            up.next_packet += 1
            if pkt.packet_number < pkt.total_packets:
                if first:
                    return P.RESP_FILE_OK, cid, f"packet {pkt.packet_number}/{pkt.total_packets}"
                return None, b"", f"packet {pkt.packet_number}/{pkt.total_packets}"
            del self.uploads[cid]
            ct = bytes(up.content)
            try:
                plain = P.aes_decrypt(rec.aes_key, ct)
            except ValueError as e:
                raise _Reply(P.RESP_GENERAL_ERROR, note=f"decrypt failed: {e}") from None
            crc = P.cksum(plain)
            path = self._disk_path(cid, up.file_name)
            path.write_bytes(plain)
            key = (cid, up.file_name)
            prev = self.files.get(key)
            self.files[key] = StoredFile(
                cid, up.file_name, path, len(plain), crc, sends=(prev.sends if prev else 0) + 1
            )
            reported = crc
            if self.bad_checksums > 0:
                self.bad_checksums -= 1
                reported = crc ^ 0xFFFFFFFF
            note = f"file {up.file_name!r} {len(plain)} bytes, content_size fields {sorted(up.content_sizes)}"
            reply = P.payload_file_ok(cid, len(ct), up.file_name, reported)
            if "left_pad_1603" in self.quirks:
                reply = reply[:20] + P.pack_name(up.file_name, "left") + reply[-4:]
            return P.RESP_FILE_OK, reply, note

        if code in (P.REQ_CRC_OK, P.REQ_CRC_BAD_RESEND, P.REQ_CRC_BAD_GIVE_UP):
            self._client(cid)
            name = self._name(payload[: P.NAME_LEN]) if len(payload) == P.NAME_LEN else None
            if name is None:
                raise _Reply(P.RESP_GENERAL_ERROR, note=f"{code} payload {len(payload)} bytes")
            f = self.files.get((cid, name))
            if f is None:
                raise _Reply(P.RESP_GENERAL_ERROR, note=f"{code} for unknown file {name!r}")
            if code == P.REQ_CRC_OK:
                f.verified = True
                return P.RESP_ACK, cid, "verified"
            if code == P.REQ_CRC_BAD_GIVE_UP:
                f.gave_up = True
                return P.RESP_ACK, cid, "gave up"
            answer = first or "ack_901_always" in self.quirks
            return (P.RESP_ACK if answer else None), cid, "resend announced"

        raise _Reply(P.RESP_GENERAL_ERROR, note=f"unknown request code {code}")


class _Handler(socketserver.BaseRequestHandler):
    server: "_TCPServer"

    def handle(self) -> None:
        srv = self.server
        sock: socket.socket = self.request
        sock.settimeout(srv.idle_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with srv.conn_lock:
            srv.conn_counter += 1
            conn_no = srv.conn_counter
            srv.live.add(sock)
        index = 0
        try:
            while True:
                try:
                    if "single_recv" in srv.state.quirks:
                        req = P.read_request_single_recv(sock)
                    else:
                        req = P.read_request(sock)
                except (P.ProtocolError, OSError) as e:
                    log.info("connection %d: %s", conn_no, e)
                    break
                if req is None:
                    break
                index += 1
                code, payload, note = srv.state.dispatch(req, first_on_connection=index == 1)
                with srv.state.lock:
                    srv.state.requests.append(
                        LoggedRequest(conn_no, index, req.client_id, req.version, req.code,
                                      len(req.payload), code,
                                      None if code is None else len(payload), note,
                                      bytes(req.payload[:300]))
                    )
                log.debug("conn %d #%d: v%d %d (%d bytes) -> %s %s", conn_no, index,
                          req.version, req.code, len(req.payload), code, note)
                if code is not None:
                    sock.sendall(P.pack_response(code, payload))
                    if srv.close_after_reply:
                        break
        except OSError as e:
            log.info("connection %d: %s", conn_no, e)
        finally:
            with srv.conn_lock:
                srv.live.discard(sock)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, state: ServerState, close_after_reply: bool, idle_timeout: float):
        self.state = state
        self.close_after_reply = close_after_reply
        self.idle_timeout = idle_timeout
        self.conn_lock = threading.Lock()
        self.conn_counter = 0
        self.live: set[socket.socket] = set()
        super().__init__(addr, _Handler)


class SFCServer:
    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        close_after_reply: bool = False,
        bad_checksums: int = 0,
        quirks: frozenset[str] | set[str] = frozenset(),
        fail_requests: dict[int, int] | None = None,
        idle_timeout: float = 120.0,
    ) -> None:
        self.state = ServerState(Path(folder), bad_checksums, frozenset(quirks), fail_requests)
        self._srv = _TCPServer((host, port), self.state, close_after_reply, idle_timeout)
        self.host, self.port = self._srv.server_address[:2]
        self._thread: threading.Thread | None = None

    def start(self) -> "SFCServer":
        self._thread = threading.Thread(target=self._srv.serve_forever, name="sfc-py-server",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._srv.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        with self._srv.conn_lock:
            for s in list(self._srv.live):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._srv.server_close()

    def __enter__(self) -> "SFCServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # convenience for tests
    def stored_files(self) -> list[StoredFile]:
        with self.state.lock:
            return list(self.state.files.values())

    def request_log(self) -> list[LoggedRequest]:
        with self.state.lock:
            return list(self.state.requests)


def main() -> None:  # python -m sfc_py.server FOLDER [PORT]
    import sys
    import time

    logging.basicConfig(level=logging.DEBUG)
    srv = SFCServer(sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 0).start()
    print(f"listening on {srv.host}:{srv.port}", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
