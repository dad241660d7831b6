"""sfc-crypto <-> PyCryptodome interoperability, the directions that need Python at test time.

Builds the example `crypto_tool` of crates/sfc-crypto with cargo (once per session) and
checks that PyCryptodome
  * unwraps an AES key that OUR crate wrapped under a PyCryptodome-made RSA-1024 (e = 17) key,
  * decrypts OUR AES-256-CBC output of random files (several sizes and chunkings),
  * computes the same cksum values as ours (via the system `cksum`, when it exists),
and that OUR crate unwraps what PyCryptodome wrapped under a key generated at test time.

Run from the repository root: python -m pytest interop/ -q
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.PublicKey import RSA
from Crypto.Random import get_random_bytes
from Crypto.Util.Padding import pad, unpad

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def crypto_tool() -> Path:
    """Path of the built `crypto_tool` example (built here with cargo)."""
    cargo = shutil.which("cargo")
    if cargo is None:
        # CI has cargo: there its absence is a failure, not a skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)("cargo not found")
    proc = subprocess.run(
        [cargo, "build", "-q", "-p", "sfc-crypto", "--example", "crypto_tool", "--message-format=json"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if (
            msg.get("reason") == "compiler-artifact"
            and msg.get("target", {}).get("name") == "crypto_tool"
            and msg.get("executable")
        ):
            return Path(msg["executable"])
    pytest.fail("cargo did not report the crypto_tool executable")


def run(tool: Path, *args: str | os.PathLike[str]) -> str:
    proc = subprocess.run([str(tool), *map(str, args)], check=True, capture_output=True, text=True)
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def py_key() -> RSA.RsaKey:
    # What a Crypto++ client makes: 1024 bits, e = 17 -> a 160-byte SPKI DER.
    return RSA.generate(1024, e=17)


def test_pycryptodome_unwraps_our_wrap(crypto_tool: Path, py_key: RSA.RsaKey, tmp_path: Path) -> None:
    spki = py_key.publickey().export_key("DER")
    assert len(spki) == 160
    der_path = tmp_path / "pub.der"
    der_path.write_bytes(spki)
    for _ in range(3):
        aes_key = get_random_bytes(32)
        wrapped = bytes.fromhex(run(crypto_tool, "wrap", der_path, aes_key.hex()))
        assert len(wrapped) == 128
        assert PKCS1_OAEP.new(py_key).decrypt(wrapped) == aes_key


def test_our_wrap_under_zero_padded_field(crypto_tool: Path, py_key: RSA.RsaKey, tmp_path: Path) -> None:
    # The server may receive the DER inside a larger zero-filled field.
    der_path = tmp_path / "pub_padded.der"
    der_path.write_bytes(py_key.publickey().export_key("DER") + bytes(12))
    aes_key = bytes(range(32))
    wrapped = bytes.fromhex(run(crypto_tool, "wrap", der_path, aes_key.hex()))
    assert PKCS1_OAEP.new(py_key).decrypt(wrapped) == aes_key


@pytest.mark.parametrize("encoding", ["pkcs8-der", "pkcs1-der", "pkcs8-pem", "pkcs8-b64-multiline"])
def test_we_unwrap_pycryptodome_wrap(
    crypto_tool: Path, py_key: RSA.RsaKey, tmp_path: Path, encoding: str
) -> None:
    if encoding == "pkcs8-der":
        data = py_key.export_key("DER", pkcs=8)
    elif encoding == "pkcs1-der":
        data = py_key.export_key("DER", pkcs=1)
    elif encoding == "pkcs8-pem":
        data = py_key.export_key("PEM", pkcs=8)
    else:  # Crypto++ Base64Encoder style: 72-column lines
        data = ("\n".join(textwrap.wrap(base64.b64encode(py_key.export_key("DER", pkcs=8)).decode(), 72)) + "\n").encode()
    priv = tmp_path / "priv.key"
    priv.write_bytes(data)
    aes_key = get_random_bytes(32)
    wrapped = PKCS1_OAEP.new(py_key.publickey()).encrypt(aes_key)
    assert bytes.fromhex(run(crypto_tool, "unwrap", priv, wrapped.hex())) == aes_key
    pub = tmp_path / "pub.der"
    run(crypto_tool, "pubder", priv, pub)
    assert pub.read_bytes() == py_key.publickey().export_key("DER")


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 65535, 65536, 1_000_003])
@pytest.mark.parametrize("chunk", [7, 65536])
def test_pycryptodome_decrypts_our_cbc(crypto_tool: Path, tmp_path: Path, size: int, chunk: int) -> None:
    key = get_random_bytes(32)
    plain = get_random_bytes(size)
    src, enc, dec = tmp_path / "plain", tmp_path / "enc", tmp_path / "dec"
    src.write_bytes(plain)
    run(crypto_tool, "encrypt", key.hex(), src, enc, str(chunk))
    ct = enc.read_bytes()
    assert len(ct) == 16 * (size // 16 + 1)
    assert unpad(AES.new(key, AES.MODE_CBC, iv=bytes(16)).decrypt(ct), 16) == plain
    assert ct == AES.new(key, AES.MODE_CBC, iv=bytes(16)).encrypt(pad(plain, 16))
    # And back: PyCryptodome's ciphertext through our decryptor.
    run(crypto_tool, "decrypt", key.hex(), enc, dec, str(chunk))
    assert dec.read_bytes() == plain


def test_our_decryptor_rejects_bad_padding(crypto_tool: Path, tmp_path: Path) -> None:
    key = get_random_bytes(32)
    bad = AES.new(key, AES.MODE_CBC, iv=bytes(16)).encrypt(b"A" * 15 + b"\x00")  # pad byte 0: invalid
    enc = tmp_path / "bad"
    enc.write_bytes(bad)
    proc = subprocess.run(
        [str(crypto_tool), "decrypt", key.hex(), str(enc), str(tmp_path / "out")], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "padding" in proc.stderr.lower()


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65536, 1_000_003])
def test_cksum_matches_system(crypto_tool: Path, tmp_path: Path, size: int) -> None:
    cksum = shutil.which("cksum")
    if cksum is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no system cksum")
    path = tmp_path / "f"
    path.write_bytes(get_random_bytes(size))
    ours = run(crypto_tool, "cksum", path).split()
    system = subprocess.run([cksum, str(path)], check=True, capture_output=True, text=True).stdout.split()
    assert ours[:2] == system[:2]
