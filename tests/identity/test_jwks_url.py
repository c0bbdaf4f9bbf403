"""JwtVerifier with `jwks_url`: a real loopback HTTP server publishes the keys and
counts fetches; the clock is set by hand, so rate limits are tested without sleeping."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.identity.jwks import JwksUrl
from gateway.identity.jwt import JwtVerifier
from gateway.identity.principal import CredentialError

from .conftest import Clock, JwksServer, Keys, Settings, public_jwks

pytestmark = pytest.mark.anyio

ALGORITHMS = ("RS256", "ES256")


def verifier_for(server: JwksServer, clock: Clock, **options: float) -> JwtVerifier:
    source = JwksUrl(server.url, ALGORITHMS, clock, **options)
    return JwtVerifier(Settings(jwks_url=server.url), clock=clock, source=source)


async def refused(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(CredentialError) as caught:
        await verifier.verify(token)
    return caught.value.detail


async def test_keys_are_fetched_once_at_start_and_cached(jwks_server: JwksServer, keys: Keys, clock: Clock) -> None:
    jwks_server.document = public_jwks(keys.rsa, keys.ec)
    verifier = JwtVerifier(Settings(jwks_url=jwks_server.url), clock=clock)  # the real default source
    await verifier.start()
    for _ in range(3):
        await verifier.verify(keys.token())
        await verifier.verify(keys.token(keys.ec))
    assert jwks_server.hits == 1
    await verifier.close()


async def test_unknown_kid_refetches_at_most_once_a_minute(jwks_server: JwksServer, keys: Keys, clock: Clock) -> None:
    jwks_server.document = public_jwks(keys.rsa)
    verifier = verifier_for(jwks_server, clock)
    await verifier.start()
    clock.advance(61)

    assert "no key with kid 'rsa-2'" in await refused(verifier, keys.token(keys.rsa2))
    assert jwks_server.hits == 2
    clock.advance(30)
    await refused(verifier, keys.token(keys.ec))  # another unknown kid within the minute
    assert jwks_server.hits == 2
    clock.advance(31)
    await refused(verifier, keys.token(keys.ec))
    assert jwks_server.hits == 3
    await verifier.close()


async def test_rotated_key_is_accepted_after_refetch(jwks_server: JwksServer, keys: Keys, clock: Clock) -> None:
    jwks_server.document = public_jwks(keys.rsa)
    verifier = verifier_for(jwks_server, clock)
    await verifier.start()
    old = keys.token()
    await verifier.verify(old)

    jwks_server.document = public_jwks(keys.rsa2)  # the provider rotates: rsa-1 out, rsa-2 in
    clock.advance(61)
    assert (await verifier.verify(keys.token(keys.rsa2))).subject == "user-1"
    assert jwks_server.hits == 2
    assert "no key with kid 'rsa-1'" in await refused(verifier, old)  # cached, but its key is gone
    await verifier.close()


async def test_failed_refetch_keeps_the_last_good_keys(jwks_server: JwksServer, keys: Keys, clock: Clock) -> None:
    jwks_server.document = public_jwks(keys.rsa)
    verifier = verifier_for(jwks_server, clock)
    await verifier.start()

    jwks_server.status = 500
    clock.advance(61)
    await refused(verifier, keys.token(keys.rsa2))
    assert jwks_server.hits == 2
    await verifier.verify(keys.token())

    jwks_server.status, jwks_server.document = 200, '{"keys": "garbage"}'
    clock.advance(61)
    await refused(verifier, keys.token(keys.rsa2))
    assert jwks_server.hits == 3
    await verifier.verify(keys.token())
    await verifier.close()


async def test_slow_jwks_server_times_out_and_keeps_the_keys(jwks_server: JwksServer, keys: Keys, clock: Clock) -> None:
    jwks_server.document = public_jwks(keys.rsa)
    verifier = verifier_for(jwks_server, clock, timeout_s=0.1)
    await verifier.start()
    jwks_server.delay_s = 0.5
    clock.advance(61)
    await refused(verifier, keys.token(keys.rsa2))
    await verifier.verify(keys.token())
    await verifier.close()


async def test_failed_first_fetch_does_not_crash_and_is_retried(jwks_server: JwksServer, keys: Keys, clock: Clock) -> None:
    jwks_server.document, jwks_server.status = public_jwks(keys.rsa), 503
    verifier = verifier_for(jwks_server, clock)
    await verifier.start()  # no exception
    token = keys.token()
    await refused(verifier, token)
    assert jwks_server.hits == 1  # start and this request share the retry interval

    jwks_server.status = 200
    clock.advance(4)
    await refused(verifier, token)
    assert jwks_server.hits == 1
    clock.advance(1)
    assert (await verifier.verify(token)).subject == "user-1"
    assert jwks_server.hits == 2
    await verifier.close()


async def test_unreachable_jwks_url_at_start(keys: Keys, clock: Clock) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/jwks.json"
    verifier = JwtVerifier(Settings(jwks_url=url), clock=clock)
    await verifier.start()
    assert "no key" in await refused(verifier, keys.token())
    await verifier.close()


async def test_stale_keys_are_refetched_so_withdrawn_keys_stop_working(jwks_server: JwksServer, keys: Keys, clock: Clock) -> None:
    jwks_server.document = public_jwks(keys.rsa)
    verifier = verifier_for(jwks_server, clock, max_age_s=300)
    await verifier.start()
    token = keys.token(exp=int(clock()) + 3600)
    await verifier.verify(token)

    jwks_server.document = public_jwks(keys.rsa2)  # rsa-1 withdrawn, e.g. compromised
    clock.advance(299)
    await verifier.verify(token)
    clock.advance(1)
    await refused(verifier, token)
    assert jwks_server.hits == 2
    await verifier.close()


async def test_a_burst_of_new_kids_causes_one_fetch(jwks_server: JwksServer, keys: Keys, clock: Clock) -> None:
    jwks_server.document = public_jwks(keys.rsa)
    verifier = verifier_for(jwks_server, clock)
    await verifier.start()
    jwks_server.document = public_jwks(keys.rsa, keys.rsa2)
    jwks_server.delay_s = 0.05
    clock.advance(61)
    results = await asyncio.gather(*(verifier.verify(keys.token(keys.rsa2, jti=str(i))) for i in range(20)))
    assert {principal.subject for principal in results} == {"user-1"}
    assert jwks_server.hits == 2
    await verifier.close()


async def test_each_failed_fetch_is_counted(jwks_server: JwksServer, keys: Keys, clock: Clock) -> None:
    from gateway.metrics import Metrics

    metrics = Metrics()
    failures = lambda: metrics.registry.get_sample_value("gateway_jwks_fetch_failures_total")  # noqa: E731
    jwks_server.document = public_jwks(keys.rsa)
    verifier = JwtVerifier(Settings(jwks_url=jwks_server.url), clock=clock, on_jwks_failure=metrics.jwks_failures.inc)
    await verifier.start()
    assert failures() == 0
    jwks_server.status = 500
    clock.advance(61)
    await refused(verifier, keys.token(keys.rsa2))
    jwks_server.status, jwks_server.document = 200, '{"keys": "garbage"}'
    clock.advance(61)
    await refused(verifier, keys.token(keys.rsa2))
    assert failures() == 2
    await verifier.close()
