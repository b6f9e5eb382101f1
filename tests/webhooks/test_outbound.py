"""One delivery attempt against receivers on loopback: the guard, the pinned address, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from email_service.config import Settings
from email_service.netguard import IPAddress
from email_service.services.webhooks.outbound import ReceiverPolicy, post
from tests.conftest import make_settings
from tests.webhooks.conftest import Receiver

LOOPBACK = ipaddress.ip_address("127.0.0.1")


def policy_for(
    tmp_path: Path, answers: dict[str, list[IPAddress]], **overrides: object
) -> ReceiverPolicy:
    settings: Settings = make_settings(
        tmp_path, "sqlite://", **{"webhook_allow_http": True, **overrides}
    )

    def resolver(host: str, port: int) -> list[IPAddress]:
        if host not in answers:
            raise OSError("no such name")
        return answers[host]

    return ReceiverPolicy(settings, resolver)


def test_connects_to_the_checked_address_only(tmp_path: Path, receiver: Receiver) -> None:
    # A name that only our resolver knows: the attempt must use the address it vetted
    # (the system resolver would fail), and name the host in the request.
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    policy = policy_for(
        tmp_path, {"hooks.internal.test": [LOOPBACK]}, webhook_allowed_hosts=["127.0.0.1/32"]
    )

    result = post(policy, f"http://hooks.internal.test:{port}/in?x=1", {"webhook-id": "e1"}, b"{}")

    assert result.ok, result
    (got,) = receiver.requests
    assert got.path == "/in?x=1"
    assert got.headers["Host"] == f"hooks.internal.test:{port}"
    assert got.headers["webhook-id"] == "e1"


def test_internal_addresses_are_refused_at_every_attempt(tmp_path: Path) -> None:
    policy = policy_for(
        tmp_path,
        {
            "rebound.example.test": [ipaddress.ip_address("10.0.0.5")],
            "metadata.example.test": [ipaddress.ip_address("169.254.169.254")],
        },
        webhook_allowed_hosts=["metadata.example.test"],
    )

    private = post(policy, "http://rebound.example.test/h", {}, b"{}")
    metadata = post(policy, "http://metadata.example.test/h", {}, b"{}")
    missing = post(policy, "http://gone.example.test/h", {}, b"{}")

    assert private.status_code is None and "private address" in (private.error or "")
    assert metadata.status_code is None and "metadata" in (metadata.error or "")
    assert missing.status_code is None and "does not resolve" in (missing.error or "")


def test_connection_refused_is_a_failed_attempt(tmp_path: Path) -> None:
    policy = policy_for(tmp_path, {"127.0.0.1": [LOOPBACK]}, webhook_allowed_hosts=["127.0.0.1"])
    result = post(policy, "http://127.0.0.1:1/h", {}, b"{}")
    assert result.status_code is None and "could not connect" in (result.error or "")


@pytest.fixture(scope="module")
def tls_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS receiver on 127.0.0.1 with a self-signed certificate; yields (url, cert)."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / "cert.pem"
    key_file = directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_address[1]}/tls", cert_file
    server.shutdown()
    server.server_close()


def test_tls_certificates_are_verified(tmp_path: Path, tls_receiver: tuple[str, Path]) -> None:
    url, cert_file = tls_receiver
    answers = {"localhost": [LOOPBACK]}
    untrusted = policy_for(tmp_path / "a", answers, webhook_allowed_hosts=["localhost"])
    trusted = policy_for(
        tmp_path / "b",
        answers,
        webhook_allowed_hosts=["localhost"],
        webhook_ca_file=str(cert_file),
    )

    refused = post(untrusted, url, {}, b"{}")
    taken = post(trusted, url, {}, b"{}")

    assert refused.status_code is None and "does not verify" in (refused.error or "")
    assert taken.status_code == 204 and taken.ok
