from __future__ import annotations

import pytest

from email_service.crypto import DecryptionError, KeyRing, KeyRingError, Sealed


def _ring(*ids: str) -> tuple[KeyRing, dict[str, str]]:
    keys = {key_id: KeyRing.generate_key() for key_id in ids}
    return KeyRing.parse(",".join(f"{k}:{v}" for k, v in keys.items())), keys


def test_round_trip_with_primary_key() -> None:
    ring, _ = _ring("a", "b")
    sealed = ring.encrypt("pässword", "account:1")
    assert sealed.key_id == "a"
    assert b"p\xc3\xa4ssword" not in sealed.ciphertext
    assert ring.decrypt(sealed, "account:1") == "pässword"


def test_same_plaintext_encrypts_differently() -> None:
    ring, _ = _ring("a")
    assert ring.encrypt("x", "c").ciphertext != ring.encrypt("x", "c").ciphertext


def test_ciphertext_is_bound_to_its_context() -> None:
    ring, _ = _ring("a")
    sealed = ring.encrypt("secret", "account:1")
    with pytest.raises(DecryptionError):
        ring.decrypt(sealed, "account:2")


def test_tampering_is_detected() -> None:
    ring, _ = _ring("a")
    sealed = ring.encrypt("secret", "c")
    flipped = bytearray(sealed.ciphertext)
    flipped[-1] ^= 1
    with pytest.raises(DecryptionError):
        ring.decrypt(Sealed("a", bytes(flipped)), "c")


def test_rotation_old_key_still_decrypts() -> None:
    old_ring, keys = _ring("old")
    sealed = old_ring.encrypt("secret", "c")
    new_key = KeyRing.generate_key()
    rotated = KeyRing.parse(f"new:{new_key},old:{keys['old']}")
    assert rotated.needs_rotation(sealed)
    assert rotated.decrypt(sealed, "c") == "secret"
    assert rotated.encrypt("secret", "c").key_id == "new"


def test_unknown_key_id_fails_clearly() -> None:
    ring, _ = _ring("a")
    with pytest.raises(DecryptionError, match="'gone'"):
        ring.decrypt(Sealed("gone", b"\x00" * 40), "c")


@pytest.mark.parametrize(
    "spec",
    ["", "nokey", "a:not-base64!", "a:" + "QUJD", "a:{k},a:{k}"],
)
def test_malformed_key_rings_are_refused(spec: str) -> None:
    with pytest.raises(KeyRingError):
        KeyRing.parse(spec.format(k=KeyRing.generate_key()))
