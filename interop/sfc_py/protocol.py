"""SecureFileComm protocol v3: wire format, checksum and cryptography.

Written from the published specification only, as restated in docs/PROTOCOL.md (no code
shared with the Rust crates).
Everything numeric is unsigned little-endian. Depends on PyCryptodome and the stdlib.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.PublicKey import RSA
from Crypto.Util.Padding import pad, unpad

# ---------------------------------------------------------------------------
# constants

VERSION = 3
NAME_LEN = 255
CLIENT_ID_LEN = 16
PUBLIC_KEY_LEN = 160
AES_KEY_LEN = 32

# request codes
REQ_REGISTER = 825
REQ_PUBLIC_KEY = 826
REQ_RECONNECT = 827
REQ_SEND_FILE = 828
REQ_CRC_OK = 900
REQ_CRC_BAD_RESEND = 901
REQ_CRC_BAD_GIVE_UP = 902

# response codes
RESP_REGISTER_OK = 1600
RESP_REGISTER_FAIL = 1601
RESP_PUBLIC_KEY_OK = 1602
RESP_FILE_OK = 1603
RESP_ACK = 1604
RESP_RECONNECT_OK = 1605
RESP_RECONNECT_REJECTED = 1606
RESP_GENERAL_ERROR = 1607

REQUEST_HEADER = struct.Struct("<16sBHI")  # client_id, version, code, payload_size
RESPONSE_HEADER = struct.Struct("<BHI")  # version, code, payload_size
FILE_PACKET_HEADER = struct.Struct("<IIHH")  # content_size, orig_size, packet_no, total
FILE_PACKET_FIXED = FILE_PACKET_HEADER.size + NAME_LEN  # 267 bytes before the content

assert REQUEST_HEADER.size == 23
assert RESPONSE_HEADER.size == 7
assert FILE_PACKET_FIXED == 267

ZERO_ID = b"\0" * CLIENT_ID_LEN


class ProtocolError(Exception):
    """The peer sent something that does not follow the protocol (docs/PROTOCOL.md)."""


class ConnectionClosed(ProtocolError):
    """The peer closed the connection (possibly in the middle of a message)."""


# ---------------------------------------------------------------------------
# 255-byte name fields


def pack_name(name: str | bytes, padding: str = "right") -> bytes:
    """Encode a name into a 255-byte NUL-padded field.

    padding="right": name, then NULs (everyone but the original C++ client);
    padding="left": NULs, then the name right-aligned (the original C++ client).
    """
    raw = name.encode("ascii") if isinstance(name, str) else bytes(name)
    if len(raw) > NAME_LEN - 1:
        raise ValueError(f"name too long: {len(raw)} bytes (max {NAME_LEN - 1})")
    fill = b"\0" * (NAME_LEN - len(raw))
    if padding == "right":
        return raw + fill
    if padding == "left":
        return fill + raw
    raise ValueError(f"padding must be 'right' or 'left', not {padding!r}")


def unpack_name(field: bytes) -> str:
    """Decode a 255-byte name field: the run between leading and trailing NULs.

    Raises ProtocolError for an empty name, a NUL inside the name, or bytes that are
    not printable ASCII.
    """
    if len(field) != NAME_LEN:
        raise ProtocolError(f"name field is {len(field)} bytes, expected {NAME_LEN}")
    core = bytes(field).strip(b"\0")
    if not core:
        raise ProtocolError("empty name")
    if b"\0" in core:
        raise ProtocolError("NUL byte inside the name")
    if any(b < 0x20 or b > 0x7E for b in core):
        raise ProtocolError(f"non-printable byte in name {core!r}")
    return core.decode("ascii")


# ---------------------------------------------------------------------------
# messages


@dataclass
class Request:
    client_id: bytes
    version: int
    code: int
    payload: bytes


@dataclass
class Response:
    version: int
    code: int
    payload: bytes

    def client_id(self) -> bytes:
        if len(self.payload) < CLIENT_ID_LEN:
            raise ProtocolError(
                f"response {self.code} has {len(self.payload)} payload bytes, no client id"
            )
        return self.payload[:CLIENT_ID_LEN]


def pack_request(client_id: bytes, code: int, payload: bytes = b"", version: int = VERSION) -> bytes:
    if len(client_id) != CLIENT_ID_LEN:
        raise ValueError("client_id must be 16 bytes")
    return REQUEST_HEADER.pack(client_id, version, code, len(payload)) + payload


def pack_response(code: int, payload: bytes = b"", version: int = VERSION) -> bytes:
    return RESPONSE_HEADER.pack(version, code, len(payload)) + payload


def unpack_request_header(data: bytes) -> tuple[bytes, int, int, int]:
    return REQUEST_HEADER.unpack(data)


def unpack_response_header(data: bytes) -> tuple[int, int, int]:
    return RESPONSE_HEADER.unpack(data)


# payload builders (requests)


def payload_register(name: str, padding: str = "right") -> bytes:
    return pack_name(name, padding)


def payload_public_key(name: str, public_key_der: bytes, padding: str = "right") -> bytes:
    return pack_name(name, padding) + public_key_der


def payload_reconnect(name: str, padding: str = "right") -> bytes:
    return pack_name(name, padding)


def payload_file_packet(
    content_size: int,
    orig_file_size: int,
    packet_number: int,
    total_packets: int,
    file_name: str,
    content: bytes,
    padding: str = "right",
) -> bytes:
    return (
        FILE_PACKET_HEADER.pack(content_size, orig_file_size, packet_number, total_packets)
        + pack_name(file_name, padding)
        + content
    )


def payload_file_name(file_name: str, padding: str = "right") -> bytes:
    return pack_name(file_name, padding)


@dataclass
class FilePacket:
    content_size: int
    orig_file_size: int
    packet_number: int
    total_packets: int
    file_name: str
    content: bytes


def unpack_file_packet(payload: bytes) -> FilePacket:
    if len(payload) < FILE_PACKET_FIXED:
        raise ProtocolError(f"828 payload is {len(payload)} bytes, need at least {FILE_PACKET_FIXED}")
    cs, osz, pn, tp = FILE_PACKET_HEADER.unpack_from(payload)
    name = unpack_name(payload[FILE_PACKET_HEADER.size:FILE_PACKET_FIXED])
    return FilePacket(cs, osz, pn, tp, name, bytes(payload[FILE_PACKET_FIXED:]))


# payload builders / parsers (responses)


@dataclass
class FileReceived:
    client_id: bytes
    content_size: int
    file_name: str
    cksum: int


FILE_OK_LEN = CLIENT_ID_LEN + 4 + NAME_LEN + 4  # 279


def payload_file_ok(client_id: bytes, content_size: int, file_name: str, crc: int) -> bytes:
    return client_id + struct.pack("<I", content_size) + pack_name(file_name) + struct.pack("<I", crc)


def unpack_file_ok(payload: bytes) -> FileReceived:
    if len(payload) != FILE_OK_LEN:
        raise ProtocolError(f"1603 payload is {len(payload)} bytes, expected {FILE_OK_LEN}")
    cid = payload[:16]
    (size,) = struct.unpack_from("<I", payload, 16)
    name = unpack_name(payload[20:20 + NAME_LEN])
    (crc,) = struct.unpack_from("<I", payload, 20 + NAME_LEN)
    return FileReceived(cid, size, name, crc)


# ---------------------------------------------------------------------------
# socket I/O


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionClosed(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_response(sock: socket.socket, max_payload: int = 1 << 20) -> Response:
    version, code, size = unpack_response_header(recv_exact(sock, RESPONSE_HEADER.size))
    if size > max_payload:
        raise ProtocolError(f"response {code} announces {size} payload bytes")
    return Response(version, code, recv_exact(sock, size))


def read_request(sock: socket.socket, max_payload: int = 64 << 20) -> Request | None:
    """Read one request; None on a clean EOF between requests."""
    first = sock.recv(REQUEST_HEADER.size)
    if not first:
        return None
    header = first
    if len(header) < REQUEST_HEADER.size:
        header += recv_exact(sock, REQUEST_HEADER.size - len(header))
    cid, version, code, size = unpack_request_header(header)
    if size > max_payload:
        raise ProtocolError(f"request {code} announces {size} payload bytes")
    return Request(cid, version, code, recv_exact(sock, size))


def read_request_single_recv(sock: socket.socket, max_payload: int = 64 << 20) -> Request | None:
    """Read one request the way some public servers do: one recv(n) per field, taking what
    comes. A short read (a field split across TCP segments that have not all arrived) goes
    unnoticed, and from then on the server reads the wrong bytes as the next fields."""
    header = sock.recv(REQUEST_HEADER.size)
    if not header:
        return None
    if len(header) < REQUEST_HEADER.size:
        raise ProtocolError(f"short header: {len(header)} bytes")
    cid, version, code, size = unpack_request_header(header)
    if size > max_payload:
        raise ProtocolError(f"request {code} announces {size} payload bytes")
    if code == REQ_SEND_FILE and size >= 267:
        fields = [sock.recv(n) for n in (4, 4, 2, 2, 255, size - 267)]
        payload = b"".join(fields)
    else:
        payload = sock.recv(size) if size else b""
    return Request(cid, version, code, payload)


# ---------------------------------------------------------------------------
# cksum (POSIX): CRC-32, poly 0x04C11DB7, MSB first, init 0, length appended, complemented


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else (c << 1)
            c &= 0xFFFFFFFF
        table.append(c)
    return table


CRC_TABLE = _make_table()


def crc_update(crc: int, data: bytes) -> int:
    table = CRC_TABLE
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ b]
    return crc


def cksum(data: bytes) -> int:
    crc = crc_update(0, data)
    n = len(data)
    tail = bytearray()
    while n:
        tail.append(n & 0xFF)
        n >>= 8
    crc = crc_update(crc, bytes(tail))
    return (~crc) & 0xFFFFFFFF


assert cksum(b"hello world\n") == 3733384285


# ---------------------------------------------------------------------------
# cryptography

ZERO_IV = b"\0" * 16


def aes_encrypt(key: bytes, plaintext: bytes) -> bytes:
    """AES-256-CBC, zero IV, PKCS#7, one stream over the whole file."""
    if len(key) != AES_KEY_LEN:
        raise ValueError("AES key must be 32 bytes")
    return AES.new(key, AES.MODE_CBC, iv=ZERO_IV).encrypt(pad(plaintext, 16))


def aes_decrypt(key: bytes, ciphertext: bytes) -> bytes:
    if len(key) != AES_KEY_LEN:
        raise ValueError("AES key must be 32 bytes")
    return unpad(AES.new(key, AES.MODE_CBC, iv=ZERO_IV).decrypt(ciphertext), 16)


def encrypted_size(orig_size: int) -> int:
    return 16 * (orig_size // 16 + 1)


def generate_rsa_key() -> RSA.RsaKey:
    """RSA-1024 with e = 17, as Crypto++ makes them."""
    return RSA.generate(1024, e=17)


def public_key_der(key: RSA.RsaKey) -> bytes:
    """X.509 SubjectPublicKeyInfo DER; 160 bytes for a 1024-bit key with e = 17."""
    der = key.publickey().export_key("DER")
    if len(der) != PUBLIC_KEY_LEN:
        raise ValueError(f"public key DER is {len(der)} bytes, expected {PUBLIC_KEY_LEN}")
    return der


def rsa_wrap(public_key_der_bytes: bytes, secret: bytes) -> bytes:
    """RSA-OAEP SHA-1 / MGF1-SHA-1. Accepts a DER possibly padded with trailing zeros."""
    return PKCS1_OAEP.new(import_public_key(public_key_der_bytes)).encrypt(secret)


def rsa_unwrap(private_key: RSA.RsaKey, wrapped: bytes) -> bytes:
    return PKCS1_OAEP.new(private_key).decrypt(wrapped)


def import_public_key(der: bytes) -> RSA.RsaKey:
    """Parse an SPKI DER, tolerating zero padding after the DER's end."""
    try:
        key = RSA.import_key(der)
    except (ValueError, IndexError, TypeError):
        # DER SEQUENCE length tells where the real encoding ends
        if len(der) < 2 or der[0] != 0x30:
            raise
        if der[1] < 0x80:
            total = 2 + der[1]
        else:
            nlen = der[1] & 0x7F
            total = 2 + nlen + int.from_bytes(der[2:2 + nlen], "big")
        if any(der[total:]):
            raise
        key = RSA.import_key(der[:total])
    if key.has_private():
        raise ValueError("expected a public key")
    return key
