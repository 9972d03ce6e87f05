"""WeChat message-push security: signatures and the EncodingAESKey cipher.

WeChat signs every push (and the URL verification) and, in compatible and
safe mode, encrypts its body. The scheme is WeChat's ``WXBizMsgCrypt``
(the official samples in every language; wechatpy and WxJava implement the
same):

- ``signature`` (plaintext mode, URL verification): SHA-1, hex, over the
  token, ``timestamp`` and ``nonce`` sorted as strings and concatenated;
- ``msg_signature`` (compatible and safe mode): the same over the token,
  ``timestamp``, ``nonce`` *and* the ``Encrypt`` ciphertext;
- the cipher: AES-256-CBC, key ``b64decode(EncodingAESKey + "=")`` (the
  43-character setting is the key's base64 without its padding), IV the key's
  first 16 bytes, PKCS#7 padding to a multiple of **32** bytes (not AES's 16:
  WeChat's samples do so, and a 16-byte unpadder refuses their output);
  plaintext layout ``random(16) + len(msg) (4 bytes, big endian) + msg +
  appid``. The trailing appid is checked on decryption: a message encrypted
  for another account (with the same key) is refused.

Every failure raises ``PushRefusedError`` with a stable ``reason``
(``bad_signature``, ``bad_ciphertext``, ``bad_appid``); messages never carry
the token, the key or the ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from domain.errors import PushRefusedError

__all__ = ["BLOCK_SIZE", "PushCipher", "decode_aes_key", "signature", "verify_signature"]

#: WeChat's PKCS#7 block: 32 bytes.
BLOCK_SIZE = 32
_RANDOM_BYTES = 16
_LENGTH = struct.Struct(">I")


def signature(token: str, timestamp: str, nonce: str, encrypt: str | None = None) -> str:
    """``signature`` (without ``encrypt``) or ``msg_signature`` (with it)."""
    parts = [token, timestamp, nonce] if encrypt is None else [token, timestamp, nonce, encrypt]
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()  # noqa: S324 - WeChat's protocol, not our choice


def verify_signature(given: str | None, token: str, timestamp: str | None, nonce: str | None, encrypt: str | None = None) -> None:
    """Raise ``PushRefusedError("bad_signature")`` unless ``given`` is the signature."""
    if not given or timestamp is None or nonce is None:
        raise PushRefusedError("bad_signature", "signature, timestamp or nonce missing")
    expected = signature(token, timestamp, nonce, encrypt)
    # Constant time: a byte-by-byte comparison would leak how much of a forgery is right.
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
        raise PushRefusedError("bad_signature", "signature does not match")


def decode_aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key of a 43-character EncodingAESKey; ``ValueError`` if it is not one.

    The message says what is wrong with the key's shape, never the key.
    """
    if len(encoding_aes_key) != 43:
        raise ValueError(f"must be 43 characters (WeChat's EncodingAESKey), not {len(encoding_aes_key)}")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not base64 (letters, digits, + and /)") from None
    if len(key) != 32:
        raise ValueError("does not decode to a 32-byte AES key")
    return key


class PushCipher:
    """Encrypts and decrypts push bodies for one account (``appid``: the
    official account, or the component appid in third-party platform mode)."""

    __slots__ = ("_appid", "_key")

    def __init__(self, encoding_aes_key: str, appid: str) -> None:
        self._key = decode_aes_key(encoding_aes_key)
        self._appid = appid.encode()

    def __repr__(self) -> str:
        return f"PushCipher(appid={self._appid.decode()!r})"

    @property
    def appid(self) -> str:
        return self._appid.decode()

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))

    def encrypt(self, message: bytes, random16: bytes | None = None) -> str:
        """The base64 ``Encrypt`` text of ``message``; ``random16`` fixed only for test vectors."""
        random16 = os.urandom(_RANDOM_BYTES) if random16 is None else random16
        if len(random16) != _RANDOM_BYTES:
            raise ValueError("random16 must be 16 bytes")
        plain = random16 + _LENGTH.pack(len(message)) + message + self._appid
        pad = BLOCK_SIZE - len(plain) % BLOCK_SIZE
        plain += bytes([pad]) * pad
        encryptor = self._cipher().encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()

    def decrypt(self, encrypted: str) -> bytes:
        """The message inside ``encrypted``; ``PushRefusedError`` if it is not ours or not intact."""
        try:
            raw = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError):
            raise PushRefusedError("bad_ciphertext", "Encrypt is not base64") from None
        if not raw or len(raw) % 16:
            raise PushRefusedError("bad_ciphertext", f"ciphertext of {len(raw)} bytes is not whole AES blocks")
        decryptor = self._cipher().decryptor()
        plain = decryptor.update(raw) + decryptor.finalize()
        pad = plain[-1]
        if not 1 <= pad <= BLOCK_SIZE or plain[-pad:] != bytes([pad]) * pad:
            raise PushRefusedError("bad_ciphertext", "padding is wrong (wrong key, or tampered)")
        plain = plain[:-pad]
        if len(plain) < _RANDOM_BYTES + _LENGTH.size:
            raise PushRefusedError("bad_ciphertext", "plaintext too short")
        (length,) = _LENGTH.unpack_from(plain, _RANDOM_BYTES)
        start = _RANDOM_BYTES + _LENGTH.size
        if start + length > len(plain):
            raise PushRefusedError("bad_ciphertext", "message length exceeds the plaintext")
        message, appid = plain[start : start + length], plain[start + length :]
        if not hmac.compare_digest(appid, self._appid):
            raise PushRefusedError("bad_appid", "message was encrypted for another appid")
        return message
