"""JWKS mode (#16 item 18): made-up key ids do not make the server hammer the issuer."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.app_fixtures import MakeClient

from .helpers import bearer, runtime

ME = "/api/v1/auth/me"


def _token(key: rsa.RSAPrivateKey, kid: str, **extra: object) -> str:
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, object] = {
        "sub": "someone-" + secrets.token_hex(4),
        "iss": "https://issuer.test",
        "aud": "tusserver",
        "iat": now,
        "exp": now + dt.timedelta(minutes=5),
        "jti": secrets.token_hex(8),
        **extra,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


@dataclass
class Provider:
    """An identity provider's key and its JWKS endpoint; how often the key set was fetched."""

    key: rsa.RSAPrivateKey
    fetches: int = 0


@contextlib.asynccontextmanager
async def provider_client(make_client: MakeClient) -> AsyncIterator[tuple[Any, Provider]]:
    """A server that verifies tokens with a provider's JWKS (served here, key id ``k1``)."""
    provider = Provider(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(provider.key.public_key()))

    async def jwks(_request: web.Request) -> web.Response:
        provider.fetches += 1
        return web.json_response({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]})

    issuer = web.Application()
    issuer.router.add_get("/jwks.json", jwks)
    server = TestServer(issuer)
    await server.start_server()
    try:
        client = await make_client(
            auth="jwt",
            jwt_algorithm="RS256",
            jwks_url=f"http://127.0.0.1:{server.port}/jwks.json",
            jwt_issuer="https://issuer.test",
        )
        yield client, provider
    finally:
        await server.close()


async def test_unknown_kids_refetch_the_key_set_at_most_once_a_minute(
    make_client: MakeClient,
) -> None:
    async with provider_client(make_client) as (client, provider):
        ok = await client.get(ME, headers=bearer(_token(provider.key, "k1")))
        assert ok.status == 200, await ok.text()
        assert provider.fetches == 1
        for i in range(12):
            resp = await client.get(ME, headers=bearer(_token(provider.key, f"made-up-{i}")))
            assert resp.status == 401
        # Twelve unknown kids within the minute: the key set was not fetched again.
        assert provider.fetches == 1, provider.fetches
        assert runtime(client).gateway.tokens is not None
        assert runtime(client).gateway.tokens.jwks_fetches == 1
        # The known key keeps working meanwhile.
        assert (await client.get(ME, headers=bearer(_token(provider.key, "k1")))).status == 200
        text = await (await client.get("/metrics")).text()
        invalid = [
            line
            for line in text.splitlines()
            if line.startswith('tusserver_token_rejections_total{reason="invalid"}')
        ]
        assert invalid and float(invalid[0].split()[-1]) >= 12


async def test_a_providers_access_token_is_accepted_whatever_its_typ_calls_it(
    make_client: MakeClient,
) -> None:
    """Keycloak's access tokens carry "typ": "Bearer": they are access tokens. Its ID and
    refresh tokens ("ID", "Refresh") are not accepted in their place."""
    async with provider_client(make_client) as (client, provider):
        for typ, status in [("Bearer", 200), ("at+jwt", 200), ("ID", 401), ("Refresh", 401)]:
            resp = await client.get(ME, headers=bearer(_token(provider.key, "k1", typ=typ)))
            assert resp.status == status, (typ, await resp.text())
