"""A verify-only RS256 instance (public key, no private key) must still check the catalog user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth.passwords import hash_password
from auth.tokens import TokenService
from tests.app_fixtures import TUS, MakeClient
from tests.auth.helpers import bearer, create_upload, runtime, unique


def _keys(tmp_path: Path) -> tuple[str, str, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    path = tmp_path / "jwt_public.pem"
    path.write_text(public)
    return private, public, path


async def _verify_only(make_client: MakeClient, tmp_path: Path) -> tuple[Any, TokenService]:
    """An API instance that only verifies (the public key), and the issuing instance's
    token service (same catalog, same key pair) that hands out tokens at login."""
    private, public, public_file = _keys(tmp_path)
    client = await make_client(
        auth="jwt",
        jwt_algorithm="RS256",
        jwt_public_key_file=str(public_file),
        revocation_check_interval=0,
    )
    cfg = runtime(client).config
    issuer = TokenService(
        algorithm="RS256",
        private_key=private,
        public_key=public,
        issuer=cfg.jwt_issuer,
        audience=cfg.jwt_audience,
        leeway=30,
        access_ttl=900,
        refresh_ttl=86400,
    )
    return client, issuer


async def test_verify_only_instance_refuses_a_disabled_users_token(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client, issuer = await _verify_only(make_client, tmp_path)
    users = runtime(client).gateway.users
    user = await users.create(unique("mallory"), await hash_password("pw-123456789"))
    token, _, _ = issuer.issue(subject=user.id, token_type="access", role="user")
    assert (await client.get("/api/v1/auth/me", headers=bearer(token))).status == 200

    # The operator disables the account (tusserver user disable): every token is refused.
    await users.update(user.id, disabled=True)
    await users.revoke_tokens(user.id)
    resp = await client.get("/api/v1/auth/me", headers=bearer(token))
    assert resp.status == 401, await resp.text()


async def test_verify_only_instance_takes_admin_from_the_catalog_not_the_token(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client, issuer = await _verify_only(make_client, tmp_path)
    users = runtime(client).gateway.users
    pw = await hash_password("pw-123456789")
    former_admin = await users.create(unique("demoted"), pw, role="admin")
    victim = await users.create(unique("victim"), pw)
    admin_token, _, _ = issuer.issue(subject=former_admin.id, token_type="access", role="admin")
    victim_token, _, _ = issuer.issue(subject=victim.id, token_type="access", role="user")
    path = await create_upload(client, victim_token, 10)
    # The operator demotes the admin (tusserver user set --role user): from now on the
    # catalog says "user", and a user sees only their own uploads.
    await users.update(former_admin.id, role="user")
    resp = await client.head(path, headers={**TUS, **bearer(admin_token)})
    assert resp.status == 404, resp.status
