"""Every way a credential can be wrong answers 401 with an ErrorResponse."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from tests.conftest import TEST_JWT_SECRET, Identity, new_identity


def _token(
    claims: dict[str, object], secret: str = TEST_JWT_SECRET, algorithm: str = "HS256"
) -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "tenantId": str(uuid.uuid4()),
        "userId": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _unsigned(claims: dict[str, object]) -> str:
    return jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]


BAD_BEARERS = {
    "bad signature": _token(_claims(), secret="not-the-secret-" + "x" * 40),
    "alg none": _unsigned(_claims()),
    "HS512 algorithm": _token(_claims(), secret=TEST_JWT_SECRET * 3, algorithm="HS512"),
    "expired": _token(_claims(exp=int(time.time()) - 3600)),
    "no exp": _token(_claims(exp=None)),
    "no tenantId": _token(_claims(tenantId=None)),
    "no userId": _token(_claims(userId=None)),
    "tenantId not a uuid": _token(_claims(tenantId="tenant-1")),
    "userId not a string": _token(_claims(userId=42)),
    "no iat": _token(_claims(iat=None)),
    "exp as a string": _token(_claims(exp=str(int(time.time()) + 600))),
    "iat as a string": _token(_claims(iat=str(int(time.time())))),
    "lifetime over a day": _token(_claims(exp=int(time.time()) + 86_400 + 60)),
    "exp ten years ahead": _token(_claims(exp=int(time.time()) + 10 * 365 * 86_400)),
    "exp ahead, iat back-dated": _token(
        _claims(iat=int(time.time()) - 2 * 86_400, exp=int(time.time()) + 600)
    ),
    "iat in the future": _token(_claims(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200)),
    "garbage": "not.a.jwt",
    "empty": "",
}


@pytest.mark.parametrize("case", sorted(BAD_BEARERS))
def test_bad_bearer_token_is_401(client, case: str) -> None:
    response = client.get("/api/accounts", headers={"Authorization": f"Bearer {BAD_BEARERS[case]}"})
    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "UNAUTHORIZED" and body["error"] == "Unauthorized"
    assert isinstance(body["timestamp"], int)


@pytest.mark.parametrize("case", sorted(BAD_BEARERS))
def test_bad_header_token_is_401(client, case: str) -> None:
    claims = jwt.decode(
        BAD_BEARERS["bad signature"], options={"verify_signature": False}
    )  # any well-formed ids for the companion headers
    response = client.get(
        "/api/accounts",
        headers={
            "X-Auth-Token": BAD_BEARERS[case],
            "X-Tenant-ID": str(claims["tenantId"]),
            "X-User-ID": str(claims["userId"]),
        },
    )
    assert response.status_code == 401


def test_no_credentials_is_401(client) -> None:
    response = client.get("/api/accounts")
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHORIZED"


def test_non_bearer_authorization_scheme_is_401(client, alice: Identity) -> None:
    response = client.get("/api/accounts", headers={"Authorization": f"Basic {alice.token}"})
    assert response.status_code == 401


def test_valid_bearer_and_valid_header_auth_both_work(client, alice: Identity) -> None:
    assert client.get("/api/accounts", headers=alice.bearer).status_code == 200
    assert client.get("/api/accounts", headers=alice.header_auth).status_code == 200
    assert (
        client.get("/api/accounts", headers={**alice.bearer, **alice.header_auth}).status_code
        == 200
    )


@pytest.mark.parametrize(
    "change",
    ["tenant mismatch", "user mismatch", "tenant missing", "user missing", "tenant not a uuid"],
)
def test_header_claim_mismatch_is_401(client, alice: Identity, change: str) -> None:
    headers = alice.header_auth
    if change == "tenant mismatch":
        headers["X-Tenant-ID"] = str(uuid.uuid4())
    elif change == "user mismatch":
        headers["X-User-ID"] = str(uuid.uuid4())
    elif change == "tenant missing":
        del headers["X-Tenant-ID"]
    elif change == "user missing":
        del headers["X-User-ID"]
    else:
        headers["X-Tenant-ID"] = "acme"
    assert client.get("/api/accounts", headers=headers).status_code == 401


def test_invalid_bearer_beside_valid_header_auth_is_401(client, alice: Identity) -> None:
    headers = {**alice.header_auth, "Authorization": "Bearer " + BAD_BEARERS["bad signature"]}
    assert client.get("/api/accounts", headers=headers).status_code == 401


def test_invalid_header_token_beside_valid_bearer_is_401(client, alice: Identity) -> None:
    headers = {**alice.bearer, "X-Auth-Token": "", "X-Tenant-ID": "x", "X-User-ID": "y"}
    assert client.get("/api/accounts", headers=headers).status_code == 401


def test_two_valid_credentials_of_different_callers_is_401(client, alice: Identity) -> None:
    other = new_identity()
    headers = {**alice.bearer, **other.header_auth}
    assert client.get("/api/accounts", headers=headers).status_code == 401


def test_health_needs_no_credentials(client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy" and body["service"] == "email_service"


def test_health_reports_a_blob_store_that_does_not_answer(client, runtime, monkeypatch) -> None:
    def unreachable() -> None:
        raise OSError("blob store gone")

    monkeypatch.setattr(runtime.blobs, "ping", unreachable)
    response = client.get("/health")
    assert response.status_code == 503
    assert "blob store" in response.json()["message"]


def test_a_token_within_the_maximum_lifetime_is_accepted(client) -> None:
    claims = _claims(exp=int(time.time()) + 86_400)
    response = client.get("/api/accounts", headers={"Authorization": f"Bearer {_token(claims)}"})
    assert response.status_code == 200


def test_issuer_and_audience_are_checked_when_configured(app_factory) -> None:
    from email_service.auth import TokenPolicy, issue_token

    _, app = app_factory(jwt_issuer="https://id.example", jwt_audience="email-api")
    tenant, user = uuid.uuid4(), uuid.uuid4()
    right = TokenPolicy(issuer="https://id.example", audience="email-api")
    cases = {
        "right": (issue_token(TEST_JWT_SECRET, tenant, user, policy=right), 200),
        "neither": (issue_token(TEST_JWT_SECRET, tenant, user), 401),
        "other issuer": (
            issue_token(
                TEST_JWT_SECRET, tenant, user, policy=TokenPolicy(issuer="x", audience="email-api")
            ),
            401,
        ),
        "other audience": (
            issue_token(
                TEST_JWT_SECRET,
                tenant,
                user,
                policy=TokenPolicy(issuer="https://id.example", audience="other"),
            ),
            401,
        ),
    }
    with app.test_client() as client:
        for name, (token, status) in cases.items():
            response = client.get("/api/accounts", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == status, name


def test_a_short_jwt_secret_stops_the_start_outside_the_embedded_default(tmp_path) -> None:
    from email_service.config import ConfigurationError, load_settings

    with pytest.raises(ConfigurationError, match="JWT_SECRET is 11 bytes"):
        load_settings(data_dir=tmp_path, jwt_secret="short-token", database_url="postgresql://db/x")
    with pytest.raises(ConfigurationError):
        load_settings(data_dir=tmp_path, jwt_secret="s" * 31, redis_url="redis://r:6379/0")
    assert load_settings(data_dir=tmp_path, jwt_secret="s" * 32, redis_url="redis://r/0")
    # The embedded default (a try-out on one machine) only warns.
    assert load_settings(data_dir=tmp_path, jwt_secret="short-token")


def test_a_verified_token_is_not_verified_again_until_it_expires(client, monkeypatch) -> None:
    from email_service import auth

    claims = _claims(exp=int(time.time()) + 60)
    headers = {"Authorization": f"Bearer {_token(claims)}"}
    decoded: list[str] = []
    real_decode = auth._decode

    def counting(token: str, secret: str, policy: auth.TokenPolicy) -> tuple[object, float]:
        decoded.append(token)
        return real_decode(token, secret, policy)

    monkeypatch.setattr(auth, "_decode", counting)
    for _ in range(3):
        assert client.get("/api/accounts", headers=headers).status_code == 200
    assert len(decoded) == 1
    # Past its exp (and the leeway), the cached token is refused like any expired one.
    later = time.time() + 60 + auth.LEEWAY_SECONDS + 1
    monkeypatch.setattr(auth.time, "time", lambda: later)
    monkeypatch.setattr(jwt.api_jwt, "datetime", _clock_at(later))
    response = client.get("/api/accounts", headers=headers)
    assert response.status_code == 401
    assert "expired" in response.json()["message"]


def _clock_at(moment: float):  # type: ignore[no-untyped-def]
    """PyJWT's view of ``now`` (it reads datetime.now(tz=timezone.utc)), moved to ``moment``."""
    import datetime as real

    class _Moved(real.datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def]
            return real.datetime.fromtimestamp(moment, tz=tz)

    return _Moved


@pytest.mark.parametrize("case", ["bad signature", "expired", "lifetime over a day", "garbage"])
def test_a_bad_token_is_never_remembered_as_good(client, case: str) -> None:
    from email_service import auth

    before = len(auth.verified_tokens)
    for _ in range(2):
        response = client.get(
            "/api/accounts", headers={"Authorization": f"Bearer {BAD_BEARERS[case]}"}
        )
        assert response.status_code == 401
    assert len(auth.verified_tokens) == before


def test_a_verified_token_is_checked_again_under_another_secret_or_policy() -> None:
    from email_service.auth import AuthError, TokenPolicy, VerifiedTokens

    tokens = VerifiedTokens(max_entries=2)
    token = _token(_claims())
    tokens.decode(token, TEST_JWT_SECRET)
    with pytest.raises(AuthError, match="signature"):
        tokens.decode(token, "a-rotated-secret-" + "y" * 40)
    with pytest.raises(AuthError, match="iss"):
        tokens.decode(token, TEST_JWT_SECRET, TokenPolicy(issuer="https://id.example"))
    with pytest.raises(AuthError, match="lifetime"):
        tokens.decode(token, TEST_JWT_SECRET, TokenPolicy(max_ttl_seconds=60))
    for _ in range(3):
        tokens.decode(_token(_claims()), TEST_JWT_SECRET)
    assert len(tokens) == 2  # bounded
