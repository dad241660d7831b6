"""A SecureFileComm v3 protocol client (Python + PyCryptodome), for interop tests.

Two connection styles:
- persistent (default): one TCP connection for the whole session; no reply is read for
  intermediate file packets nor for 901 (that is what most clients do);
- per_request=True: a new TCP connection for every request, waiting for a reply to each
  (the original C++ client): a 1603 carrying only the client ID is expected for every
  intermediate packet, and a 1604 for 901.
"""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass, field

from Crypto.PublicKey import RSA

from . import protocol as P


class UnexpectedResponse(P.ProtocolError):
    pass


@dataclass
class TransferResult:
    ok: bool
    sends: int  # how many times the file was sent
    replies: list[P.FileReceived] = field(default_factory=list)


class SFCClient:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        per_request: bool = False,
        padding: str = "right",
        version: int = P.VERSION,
        timeout: float = 60.0,
        client_id: bytes = P.ZERO_ID,
        rsa_key: RSA.RsaKey | None = None,
        name: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.per_request = per_request
        self.padding = padding
        self.version = version
        self.timeout = timeout
        self.client_id = client_id
        self.rsa_key = rsa_key
        self.name = name
        self.aes_key: bytes | None = None
        self.sock: socket.socket | None = None
        # short 1603 replies received for intermediate packets (per_request style)
        self.intermediate_replies: list[P.Response] = []
        # every response read, in order (for diagnostics)
        self.log: list[tuple[int, P.Response | None]] = []

    # -- connection -------------------------------------------------------

    def _open(self) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self) -> "SFCClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(
        self,
        code: int,
        payload: bytes = b"",
        *,
        expect_reply: bool = True,
        client_id: bytes | None = None,
        version: int | None = None,
    ) -> P.Response | None:
        """Send one request; read and return its reply if expect_reply."""
        msg = P.pack_request(
            self.client_id if client_id is None else client_id,
            code,
            payload,
            self.version if version is None else version,
        )
        if self.per_request:
            with self._open() as s:
                s.sendall(msg)
                resp = P.read_response(s) if expect_reply else None
        else:
            if self.sock is None:
                self.sock = self._open()
            self.sock.sendall(msg)
            resp = P.read_response(self.sock) if expect_reply else None
        self.log.append((code, resp))
        return resp

    def assert_no_pending_reply(self, wait: float = 0.5) -> None:
        """Persistent style: fail if the server sent anything we did not ask for."""
        if self.sock is None:
            return
        readable, _, _ = select.select([self.sock], [], [], wait)
        if readable:
            data = self.sock.recv(4096, socket.MSG_PEEK)
            raise UnexpectedResponse(
                f"server sent {len(data)} unsolicited bytes: {data[:40].hex()}"
                + (" (connection closed)" if not data else "")
            )

    # -- session ----------------------------------------------------------

    @staticmethod
    def _expect(resp: P.Response | None, *codes: int) -> P.Response:
        if resp is None:
            raise UnexpectedResponse(f"no reply, expected {codes}")
        if resp.code not in codes:
            raise UnexpectedResponse(
                f"got response {resp.code} (version {resp.version}, {len(resp.payload)} payload "
                f"bytes: {resp.payload[:40].hex()}), expected {codes}"
            )
        return resp

    def register(self, name: str | None = None) -> P.Response:
        """825. On 1600 the client ID is stored. Returns the reply (1600 or 1601)."""
        if name is not None:
            self.name = name
        resp = self.request(
            P.REQ_REGISTER, P.payload_register(self.name, self.padding), client_id=P.ZERO_ID
        )
        resp = self._expect(resp, P.RESP_REGISTER_OK, P.RESP_REGISTER_FAIL, P.RESP_GENERAL_ERROR)
        if resp.code == P.RESP_REGISTER_OK:
            if len(resp.payload) != P.CLIENT_ID_LEN:
                raise UnexpectedResponse(f"1600 payload is {len(resp.payload)} bytes, expected 16")
            self.client_id = resp.payload
        return resp

    def _take_aes_key(self, resp: P.Response) -> None:
        if resp.client_id() != self.client_id:
            raise UnexpectedResponse(
                f"{resp.code} carries client id {resp.client_id().hex()}, ours is {self.client_id.hex()}"
            )
        wrapped = resp.payload[P.CLIENT_ID_LEN:]
        if len(wrapped) != 128:
            raise UnexpectedResponse(f"wrapped AES key is {len(wrapped)} bytes, expected 128")
        key = P.rsa_unwrap(self.rsa_key, wrapped)
        if len(key) != P.AES_KEY_LEN:
            raise UnexpectedResponse(f"unwrapped AES key is {len(key)} bytes, expected 32")
        self.aes_key = key

    def send_public_key(self, public_key: bytes | None = None) -> P.Response:
        """826. Generates the RSA key if there is none; on 1602 unwraps the AES key."""
        if self.rsa_key is None:
            self.rsa_key = P.generate_rsa_key()
        der = P.public_key_der(self.rsa_key) if public_key is None else public_key
        resp = self.request(P.REQ_PUBLIC_KEY, P.payload_public_key(self.name, der, self.padding))
        resp = self._expect(resp, P.RESP_PUBLIC_KEY_OK, P.RESP_GENERAL_ERROR)
        if resp.code == P.RESP_PUBLIC_KEY_OK:
            self._take_aes_key(resp)
        return resp

    def reconnect(self) -> P.Response:
        """827. On 1605 unwraps the new AES key with the RSA key we already have."""
        resp = self.request(P.REQ_RECONNECT, P.payload_reconnect(self.name, self.padding))
        resp = self._expect(
            resp, P.RESP_RECONNECT_OK, P.RESP_RECONNECT_REJECTED, P.RESP_GENERAL_ERROR
        )
        if resp.code == P.RESP_RECONNECT_OK:
            self._take_aes_key(resp)
        return resp

    def send_file(
        self,
        file_name: str,
        data: bytes,
        *,
        packet_size: int = 2048,
        content_size_mode: str = "whole",
    ) -> P.FileReceived:
        """828 packets 1..N. Returns the parsed final 1603.

        content_size_mode: "whole" (whole encrypted size in every packet) or "packet"
        (each packet's own content length).
        """
        if self.aes_key is None:
            raise RuntimeError("no AES key yet")
        if content_size_mode not in ("whole", "packet"):
            raise ValueError(content_size_mode)
        ct = P.aes_encrypt(self.aes_key, data)
        assert len(ct) == P.encrypted_size(len(data))
        total = -(-len(ct) // packet_size)
        if total > 0xFFFF:
            raise ValueError(f"{total} packets do not fit in u16")
        self.intermediate_replies = []
        resp = None
        for i in range(total):
            chunk = ct[i * packet_size:(i + 1) * packet_size]
            last = i == total - 1
            payload = P.payload_file_packet(
                len(ct) if content_size_mode == "whole" else len(chunk),
                len(data),
                i + 1,
                total,
                file_name,
                chunk,
                self.padding,
            )
            resp = self.request(P.REQ_SEND_FILE, payload, expect_reply=last or self.per_request)
            if not last and resp is not None:
                self._expect(resp, P.RESP_FILE_OK)
                if resp.payload != self.client_id:
                    raise UnexpectedResponse(
                        f"reply to intermediate packet {i + 1}/{total}: expected 1603 with only "
                        f"the client id ({self.client_id.hex()}), got payload {resp.payload.hex()}"
                    )
                self.intermediate_replies.append(resp)
        resp = self._expect(resp, P.RESP_FILE_OK)
        if len(resp.payload) == P.CLIENT_ID_LEN:
            raise UnexpectedResponse(
                "final packet answered with a short 1603 (only the client id); on a persistent "
                "connection the server probably answered an intermediate packet"
            )
        return P.unpack_file_ok(resp.payload)

    def checksum_ok(self, file_name: str) -> P.Response:
        """900 -> 1604."""
        resp = self.request(P.REQ_CRC_OK, P.payload_file_name(file_name, self.padding))
        return self._expect(resp, P.RESP_ACK, P.RESP_GENERAL_ERROR)

    def checksum_bad(self, file_name: str) -> P.Response | None:
        """901: no reply on a persistent connection, 1604 in the per-request style."""
        resp = self.request(
            P.REQ_CRC_BAD_RESEND,
            P.payload_file_name(file_name, self.padding),
            expect_reply=self.per_request,
        )
        if self.per_request:
            return self._expect(resp, P.RESP_ACK)
        return None

    def give_up(self, file_name: str) -> P.Response:
        """902 -> 1604."""
        resp = self.request(P.REQ_CRC_BAD_GIVE_UP, P.payload_file_name(file_name, self.padding))
        return self._expect(resp, P.RESP_ACK, P.RESP_GENERAL_ERROR)

    # -- full flows -------------------------------------------------------

    def register_and_key(self, name: str) -> None:
        self._expect(self.register(name), P.RESP_REGISTER_OK)
        self._expect(self.send_public_key(), P.RESP_PUBLIC_KEY_OK)

    def transfer(
        self, file_name: str, data: bytes, *, max_resends: int = 3, **send_kwargs
    ) -> TransferResult:
        """Send, compare checksums, 900 / (901 + resend) / 902 as the protocol says."""
        expected = P.cksum(data)
        result = TransferResult(ok=False, sends=0)
        while True:
            got = self.send_file(file_name, data, **send_kwargs)
            result.sends += 1
            result.replies.append(got)
            if got.cksum == expected:
                self._expect(self.checksum_ok(file_name), P.RESP_ACK)
                result.ok = True
                return result
            if result.sends > max_resends:
                self._expect(self.give_up(file_name), P.RESP_ACK)
                return result
            self.checksum_bad(file_name)
