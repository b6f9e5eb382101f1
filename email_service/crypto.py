"""Credential encryption: AES-256-GCM under a key ring, so keys can rotate.

A ciphertext is stored with the id of the key that made it. New secrets are always
encrypted with the ring's primary (first) key; any key of the ring decrypts. The
associated data binds a ciphertext to its row, so a stored password cannot be copied
onto another account and decrypted there.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class KeyRingError(ValueError):
    """The configured key ring is malformed."""


class DecryptionError(Exception):
    """A ciphertext cannot be decrypted: unknown key id, or tampered data."""


@dataclass(frozen=True)
class Sealed:
    key_id: str
    ciphertext: bytes  # nonce || AES-GCM output (ciphertext and tag)


class KeyRing:
    """Named 256-bit keys; the first one is the primary used for new encryptions."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise KeyRingError("the credential key ring is empty")
        seen: set[str] = set()
        for key_id, key in keys:
            if not key_id or key_id in seen:
                raise KeyRingError(f"credential key id {key_id!r} is empty or repeated")
            if len(key) != 32:
                raise KeyRingError(f"credential key {key_id!r} must be 32 bytes (AES-256)")
            seen.add(key_id)
        self._keys = dict(keys)
        self.primary_id = keys[0][0]

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """Parse ``"kid1:BASE64,kid2:BASE64"``."""
        keys: list[tuple[str, bytes]] = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            key_id, sep, encoded = part.partition(":")
            if not sep:
                raise KeyRingError("each credential key must look like 'id:base64key'")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise KeyRingError(f"credential key {key_id.strip()!r} is not base64") from exc
            keys.append((key_id.strip(), key))
        return cls(keys)

    @staticmethod
    def generate_key() -> str:
        return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()

    def encrypt(self, plaintext: str, context: str) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        aead = AESGCM(self._keys[self.primary_id])
        sealed = aead.encrypt(nonce, plaintext.encode(), context.encode())
        return Sealed(self.primary_id, nonce + sealed)

    def decrypt(self, sealed: Sealed, context: str) -> str:
        key = self._keys.get(sealed.key_id)
        if key is None:
            raise DecryptionError(f"no credential key with id {sealed.key_id!r} in the key ring")
        nonce, body = sealed.ciphertext[:NONCE_BYTES], sealed.ciphertext[NONCE_BYTES:]
        try:
            return AESGCM(key).decrypt(nonce, body, context.encode()).decode()
        except InvalidTag as exc:
            raise DecryptionError("stored credential failed authentication") from exc

    def needs_rotation(self, sealed: Sealed) -> bool:
        return sealed.key_id != self.primary_id
