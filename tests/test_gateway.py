"""The request path end to end: official SDKs and raw HTTP through a real gateway
to a real upstream on loopback. Every denial asserts that nothing reached the
upstream; every allowed request asserts what the upstream saw."""

from __future__ import annotations

import gzip
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from e2e import CN_IP, GB_ANONYMIZER_IP, SE_IP, US_IP, Stack
from gateway.audit import unauthenticated_path
from gateway.identity.apikeys import hash_secret, new_secret


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("gateway"))
    yield stack
    stack.close()


@pytest.fixture(autouse=True)
def fresh_upstream(stack: Stack) -> None:
    stack.upstream.app.reset()


def openai_client(stack: Stack, key: str, ip: str = US_IP, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0,
                         default_headers={"X-Forwarded-For": ip}, **kwargs)


def anthropic_client(stack: Stack, key: str, ip: str = US_IP) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url, api_key=key, max_retries=0, default_headers={"X-Forwarded-For": ip})


def request(stack: Stack, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    host, port = stack.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    connection.putrequest(method, path, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    if body is not None:
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


CHAT = {"model": "frontier-5.6", "messages": [{"role": "user", "content": "hello"}]}


class TestAllowed:
    def test_openai_chat_reaches_the_upstream_with_gateway_headers_only(self, stack: Stack) -> None:
        client = openai_client(stack, stack.api_key("org-acme"))
        raw = client.chat.completions.with_raw_response.create(model="frontier-5.6", messages=[{"role": "user", "content": "hi"}])
        reply = raw.parse()
        assert reply.choices[0].message.content.startswith("[demo:frontier-5.6]")
        assert raw.headers["x-gateway-decision-id"]
        assert len(raw.headers.get_list("date")) == 1  # the upstream's Date is not repeated
        [seen] = stack.received
        assert seen.header("x-gateway-org") == "org-acme"
        assert seen.header("x-gateway-decision-id") == raw.headers["x-gateway-decision-id"]
        assert seen.header("authorization") is None and seen.header("x-forwarded-for") is None

    def test_openai_stream_async(self, stack: Stack) -> None:
        async def run() -> list[str]:
            client = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key=stack.api_key("org-kyoto"), max_retries=0,
                                        default_headers={"X-Forwarded-For": "2001:218::1"})
            stream = await client.chat.completions.create(model="fr-5.6", stream=True,
                                                          messages=[{"role": "user", "content": "stream please"}])
            parts = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
            await client.close()
            return parts

        import asyncio

        parts = asyncio.run(run())
        assert len(parts) > 1 and "".join(parts).startswith("[demo:fr-5.6]")

    def test_anthropic_messages_and_stream(self, stack: Stack) -> None:
        client = anthropic_client(stack, stack.api_key("org-caisi"))
        message = client.messages.create(model="frontier-5.6", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        assert message.content[0].text.startswith("[demo:frontier-5.6]")
        with client.messages.stream(model="small-2", max_tokens=50, messages=[{"role": "user", "content": "go"}]) as stream:
            text = "".join(stream.text_stream)
        assert text.startswith("[demo:small-2]")

    def test_jwt_caller(self, stack: Stack) -> None:
        client = openai_client(stack, stack.signing.token("org-acme"))
        reply = client.embeddings.create(model="small-2", input="vector")
        assert len(reply.data[0].embedding) > 0
        assert stack.received[0].header("x-gateway-org") == "org-acme"

    def test_models_list_is_filtered_to_the_callers_models(self, stack: Stack) -> None:
        public = [m.id for m in openai_client(stack, stack.api_key("org-public")).models.list()]
        partner = [m.id for m in openai_client(stack, stack.api_key("org-acme")).models.list()]
        assert public == ["fable", "mythos", "small-2"]
        assert partner == ["frontier-5.6", "fable", "mythos", "small-2"]


class TestDenied:
    def test_concealed_pre_release_model_is_not_found(self, stack: Stack) -> None:
        with pytest.raises(openai.NotFoundError) as denied:
            openai_client(stack, stack.api_key("org-public")).chat.completions.create(**CHAT)
        assert denied.value.code == "model_not_found"
        assert "frontier" not in str(denied.value.body)
        assert stack.received == []

    def test_country_of_concern_is_451_with_blocked_by_link(self, stack: Stack) -> None:
        with pytest.raises(openai.APIStatusError) as denied:
            openai_client(stack, stack.api_key("org-kyoto"), ip=CN_IP).chat.completions.create(**CHAT)
        assert denied.value.status_code == 451
        assert denied.value.code == "unsupported_country_region_territory"
        assert 'rel="blocked-by"' in denied.value.response.headers["link"]
        assert stack.received == []

    def test_anthropic_shape_for_anonymizer(self, stack: Stack) -> None:
        with pytest.raises(anthropic.APIStatusError) as denied:
            anthropic_client(stack, stack.api_key("org-acme"), ip=GB_ANONYMIZER_IP).messages.create(
                model="frontier-5.6", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        assert denied.value.status_code == 451
        assert denied.value.body["type"] == "error" and denied.value.body["error"]["type"] == "permission_error"
        assert stack.received == []

    def test_denied_org(self, stack: Stack) -> None:
        with pytest.raises(openai.PermissionDeniedError):
            openai_client(stack, stack.api_key("org-listed")).chat.completions.create(**(CHAT | {"model": "small-2"}))
        assert stack.received == []

    def test_bad_api_key_and_missing_key_get_the_same_401(self, stack: Stack) -> None:
        bodies = []
        for headers in ({"Authorization": "Bearer fgw_not-a-key"}, {}, {"x-api-key": "nope"}):
            status, _, body = request(stack, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(),
                                      headers | {"Content-Type": "application/json"})
            bodies.append((status, body))
        assert {b for b in bodies} == {(401, bodies[0][1])}
        assert stack.received == []

    def test_sdk_authentication_error(self, stack: Stack) -> None:
        with pytest.raises(anthropic.AuthenticationError):
            anthropic_client(stack, "wrong").messages.create(model="small-2", max_tokens=5, messages=[{"role": "user", "content": "x"}])


class TestJwtAttacks:
    @pytest.mark.parametrize("make", [
        lambda s: s.signing.token("org-acme", lifetime=-120),                      # expired beyond leeway
        lambda s: s.signing.token("org-acme", nbf=2_000_000_000),                 # not yet valid
        lambda s: s.signing.token("org-acme", iss="https://evil.test/"),
        lambda s: s.signing.token("org-acme", aud="someone-else"),
        lambda s: s.signing.token("org-acme", org_id=""),
        lambda s: _alg_none(s),
        lambda s: _hs256_with_public_key(s),
        lambda s: s.signing.token("org-acme", padding="x" * 20_000),              # oversized
        lambda s: _without_exp(s),
    ], ids=["expired", "nbf-future", "wrong-iss", "wrong-aud", "empty-org", "alg-none", "hs256-confusion", "oversized", "no-exp"])
    def test_refused_and_not_forwarded(self, stack: Stack, make: Any) -> None:
        token = make(stack)
        status, headers, body = request(stack, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(),
                                        {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                         "X-Forwarded-For": US_IP})
        # A header field over 8 KiB is refused by the listener (limits.max_header_line_bytes).
        assert status == (431 if len(token) > 8 * 1024 else 401), body
        assert headers["x-gateway-decision-id"]
        assert stack.received == []


def _b64(data: dict[str, Any]) -> str:
    import base64

    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _alg_none(stack: Stack) -> str:
    import time

    claims = {"iss": "https://idp.test/", "aud": "frontier-gateway", "sub": "x", "org_id": "org-acme", "exp": int(time.time()) + 60}
    return f"{_b64({'alg': 'none', 'kid': stack.signing.kid})}.{_b64(claims)}.AAAA"


def _hs256_with_public_key(stack: Stack) -> str:
    """The classic confusion: HMAC keyed with the RSA public key a verifier might hold."""
    import base64
    import hashlib
    import hmac
    import time

    public_pem = stack.signing.key.as_pem(private=False)
    claims = {"iss": "https://idp.test/", "aud": "frontier-gateway", "sub": "x", "org_id": "org-acme", "exp": int(time.time()) + 60}
    signing_input = f"{_b64({'alg': 'HS256', 'kid': stack.signing.kid})}.{_b64(claims)}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _without_exp(stack: Stack) -> str:
    import time

    from joserfc import jwt

    claims = {"iss": "https://idp.test/", "aud": "frontier-gateway", "sub": "x", "org_id": "org-acme", "iat": int(time.time())}
    return jwt.encode({"alg": "RS256", "kid": stack.signing.kid}, claims, stack.signing.key)


class TestClientAddress:
    def test_forwarded_for_from_an_untrusted_peer_is_ignored(self, stack: Stack) -> None:
        key = stack.api_key("org-acme")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-Forwarded-For": US_IP}
        # Believed, US_IP would be served both models; the peer 127.0.0.2 (no country) is the client,
        # and an unknown place is refused for every model.
        for body in (CHAT, CHAT | {"model": "small-2"}):
            status, _, _ = request(stack, "POST", "/v1/chat/completions", json.dumps(body).encode(), headers,
                                   source="127.0.0.2")
            assert status == 451
            record = stack.audit_records()[-1]
            assert (record["client_ip"], record["observed_country"], record["reasons"][0]) == (
                "127.0.0.2", None, "jurisdiction_unknown")
        assert stack.received == []

    def test_rightmost_untrusted_entry_wins_over_a_spoofed_left_one(self, stack: Stack) -> None:
        key = stack.api_key("org-kyoto")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-Forwarded-For": f"{SE_IP}, {CN_IP}"}
        status, _, _ = request(stack, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(), headers)
        assert status == 451 and stack.received == []


class TestMalformed:
    def headers(self, stack: Stack, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {stack.api_key('org-public')}", "Content-Type": "application/json",
                "X-Forwarded-For": US_IP} | extra

    @pytest.mark.parametrize("body,status", [
        (b'{"model": "small-2", "model": "frontier-5.6", "messages": []}', 400),
        (b'{"model": "small-2", "MODEL": "frontier-5.6", "messages": []}', 400),
        (b'{"messages": []}', 400),
        (b'{"model": 5}', 400),
        (b'not json', 400),
        (b'\xef\xbb\xbf{"model": "small-2"}', 400),
    ])
    def test_ambiguous_bodies_are_refused(self, stack: Stack, body: bytes, status: int) -> None:
        code, _, reply = request(stack, "POST", "/v1/chat/completions", body, self.headers(stack))
        assert code == status
        assert json.loads(reply)["error"]["code"] == "invalid_request"
        assert stack.received == []

    def test_compressed_body_is_415(self, stack: Stack) -> None:
        body = gzip.compress(json.dumps(CHAT | {"model": "small-2"}).encode())
        code, _, _ = request(stack, "POST", "/v1/chat/completions", body, self.headers(stack, **{"Content-Encoding": "gzip"}))
        assert code == 415 and stack.received == []

    def test_wrong_content_type_is_415(self, stack: Stack) -> None:
        code, _, _ = request(stack, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(),
                             self.headers(stack, **{"Content-Type": "text/plain"}))
        assert code == 415 and stack.received == []

    def test_model_in_the_query_is_refused(self, stack: Stack) -> None:
        code, _, _ = request(stack, "POST", "/v1/chat/completions?model=frontier-5.6",
                             json.dumps(CHAT | {"model": "small-2"}).encode(), self.headers(stack))
        assert code == 400 and stack.received == []

    @pytest.mark.parametrize("path,status", [
        ("/v1/../v1/chat/completions", 400), ("//v1/chat/completions", 400), ("/v1/chat/%63ompletions", 400),
        ("/v1%2fchat/completions", 400), ("/v1/chat/completions/", 400), ("/admin/policy", 404), ("/v2/chat/completions", 404),
        ("/v1/files", 404),
    ])
    def test_path_tricks(self, stack: Stack, path: str, status: int) -> None:
        code, headers, _ = request(stack, "POST", path, json.dumps(CHAT | {"model": "small-2"}).encode(), self.headers(stack))
        assert code == status and headers["x-gateway-decision-id"]
        assert stack.received == []

    def test_client_sent_gateway_headers_never_reach_the_upstream(self, stack: Stack) -> None:
        headers = self.headers(stack, **{"X-Gateway-Org": "org-caisi", "X-Gateway-Decision-Id": "forged",
                                         "X-HTTP-Method-Override": "DELETE", "Connection": "close, X-Secret", "X-Secret": "1"})
        code, _, _ = request(stack, "POST", "/v1/chat/completions", json.dumps(CHAT | {"model": "small-2"}).encode(), headers)
        assert code == 200
        [seen] = stack.received
        assert seen.header("x-gateway-org") == "org-public"
        assert seen.header("x-gateway-decision-id") != "forged"
        assert seen.header("x-http-method-override") is None and seen.header("x-secret") is None


class TestRecordsAndAdmin:
    def test_one_audit_record_per_request(self, stack: Stack) -> None:
        before = len(stack.audit_records())
        key = stack.api_key("org-public")
        statuses = [
            request(stack, "POST", "/v1/chat/completions", json.dumps(CHAT | {"model": "small-2"}).encode(),
                    {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-Forwarded-For": US_IP})[0],
            request(stack, "POST", "/v1/chat/completions", b"{}", {"Content-Type": "application/json"})[0],
            request(stack, "GET", "/nope")[0],
        ]
        records = stack.audit_records()[before:]
        assert statuses == [200, 401, 404]
        assert [(r["status"], r["decision"]) for r in records] == [(200, "allow"), (401, "deny"), (404, "deny")]
        assert records[0]["org"] == "org-public" and records[0]["observed_country"] == "US"
        assert records[1]["reasons"] == ["credential_missing"]

    def test_health_readiness_and_metrics(self, stack: Stack) -> None:
        import urllib.request

        with urllib.request.urlopen(stack.admin_url + "/readyz") as ready:
            assert json.load(ready)["ready"] is True
        with urllib.request.urlopen(stack.admin_url + "/metrics") as metrics:
            text = metrics.read().decode()
        assert "gateway_requests_total{" in text and "gateway_policy_info{version=" in text

    def test_every_decision_is_timed_in_the_histogram(self, stack: Stack) -> None:
        import urllib.request

        def decisions_timed() -> float:
            with urllib.request.urlopen(stack.admin_url + "/metrics") as metrics:
                line = next(line for line in metrics.read().decode().splitlines()
                            if line.startswith("gateway_decision_seconds_count"))
            return float(line.split()[-1])

        before = decisions_timed()
        key = stack.api_key("org-public")
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-Forwarded-For": US_IP}
        body = json.dumps(CHAT | {"model": "small-2"}).encode()
        assert request(stack, "POST", "/v1/chat/completions", body, headers)[0] == 200
        assert request(stack, "POST", "/v1/chat/completions", b"{}", {"Content-Type": "application/json"})[0] == 401
        assert decisions_timed() == before + 2


class TestRefusedCredentials:
    """A 401's record answers "a revoked key is still being used, and from where": the
    client address, its country and a fingerprint of the credential, never the credential."""

    def refused(self, stack: Stack, credential: str | None, forwarded_for: str) -> tuple[int, dict[str, Any], str]:
        before = stack.audit_records()[-1]["time"] if stack.audit_records() else ""
        headers = {"Content-Type": "application/json", "X-Forwarded-For": forwarded_for}
        if credential is not None:
            headers["Authorization"] = f"Bearer {credential}"
        status, _, _ = request(stack, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(), headers)
        [record] = [r for r in stack.audit_records() if r["time"] > before]
        line = unauthenticated_path(stack.config.audit.path).read_text().splitlines()[-1]
        return status, record, line

    def test_an_unknown_key_is_recorded_by_fingerprint_with_address_and_country(self, stack: Stack) -> None:
        secret = new_secret()  # never created: as a revoked key, "unknown or revoked API key"
        status, record, line = self.refused(stack, secret, CN_IP)
        assert status == 401
        assert (record["client_ip"], record["observed_country"]) == (CN_IP, "CN")
        assert record["credential_fingerprint"] == hash_secret(secret)[:12]
        assert (record["credential_kind"], record["credential_error"]) == ("opaque", "unknown or revoked API key")
        assert secret not in line and secret.removeprefix("fgw_") not in line

    def test_a_guessable_credential_gets_no_fingerprint(self, stack: Stack) -> None:
        status, record, line = self.refused(stack, "hunter2", SE_IP)
        assert status == 401 and record["observed_country"] == "SE"
        assert (record["credential_kind"], record["credential_fingerprint"]) == ("short", None)
        assert "hunter2" not in line

    def test_an_unreadable_forwarded_for_leaves_the_401_and_the_place_unknown(self, stack: Stack) -> None:
        status, record, _ = self.refused(stack, new_secret(), "not-an-address")
        assert status == 401  # not the 400 an authenticated caller gets: nothing more to learn
        assert (record["client_ip"], record["observed_country"]) == (None, None)
        assert record["forwarded_for"] == "unreadable"

    def test_the_401_metrics_carry_the_country(self, stack: Stack) -> None:
        import urllib.request

        def count() -> tuple[float, float]:
            with urllib.request.urlopen(stack.admin_url + "/metrics") as metrics:
                lines = metrics.read().decode().splitlines()
            return tuple(sum(float(line.split()[-1]) for line in lines if line.startswith(wanted)) for wanted in (
                'gateway_denials_total{country="CN",model="none",reason="credential_invalid"}',
                'gateway_requests_by_country_total{country="CN",decision="deny"}'))

        before = count()
        assert self.refused(stack, new_secret(), CN_IP)[0] == 401
        assert count() == (before[0] + 1, before[1] + 1)


class TestUpstreamFaults:
    def test_client_going_away_cancels_the_upstream_stream(self, stack: Stack) -> None:
        import socket
        import time

        stack.upstream.app.stream_delay_s = 0.2
        try:
            body = json.dumps({"model": "small-2", "stream": True, "messages": [{"role": "user", "content": "a long story " * 20}]})
            host, port = stack.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              f"Authorization: Bearer {stack.api_key('org-public')}\r\nX-Forwarded-For: {US_IP}\r\n"
                              f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
                assert b"200 OK" in sock.recv(65536)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and stack.received[0].outcome != "disconnected":
                time.sleep(0.05)
            assert stack.received[0].outcome == "disconnected"
        finally:
            stack.upstream.app.stream_delay_s = 0.0
        record = stack.audit_records()[-1]
        assert record["error"] == "client_disconnected" and record["decision"] == "allow"

    def test_a_stream_the_upstream_cuts_off_ends_with_an_error_event(self, stack: Stack,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
        body = json.dumps({"model": "small-2", "stream": True, "messages": [{"role": "user", "content": "tell me"}]})
        headers = {"Authorization": f"Bearer {stack.api_key('org-public')}", "Content-Type": "application/json",
                   "X-Forwarded-For": US_IP, "x-demo-fault": "drop"}
        status, _, data = request(stack, "POST", "/v1/chat/completions", body.encode(), headers)
        assert status == 200 and b"[DONE]" not in data
        last = json.loads(data.rstrip().rsplit(b"\n\ndata: ", 1)[1])
        assert last["error"]["code"] == "upstream_unavailable"  # what an SDK raises, not a silent short answer
        record = stack.audit_records()[-1]
        assert (record["decision"], record["status"], record["error"]) == ("allow", 200, "upstream_protocol")
        assert "Traceback" not in caplog.text

    def test_an_answer_the_upstream_cuts_off_is_cut_short_for_the_client_too(self, stack: Stack,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
        headers = {"Authorization": f"Bearer {stack.api_key('org-public')}", "Content-Type": "application/json",
                   "X-Forwarded-For": US_IP, "x-demo-fault": "drop"}
        with pytest.raises(http.client.IncompleteRead):  # never a truncated body that looks whole
            request(stack, "POST", "/v1/chat/completions", json.dumps(CHAT | {"model": "small-2"}).encode(), headers)
        record = stack.audit_records()[-1]
        assert (record["decision"], record["reasons"], record["error"]) == ("allow", [], "upstream_protocol")
        assert "Traceback" not in caplog.text and "without completing" not in caplog.text

    def test_unreachable_upstream_is_502_in_the_api_shape(self, tmp_path: Path) -> None:
        isolated = Stack(tmp_path)
        try:
            isolated.thread.run(isolated.upstream.stop())
            client = openai_client(isolated, isolated.api_key("org-public"))
            with pytest.raises(openai.APIStatusError) as failed:
                client.chat.completions.create(model="small-2", messages=[{"role": "user", "content": "x"}])
            assert failed.value.status_code == 502 and failed.value.code == "upstream_unavailable"
            record = isolated.audit_records()[-1]
            # Allowed and sent on: the failure is the upstream's, not a denial.
            assert (record["decision"], record["error"]) == ("allow", "upstream_connect")
            text = isolated.service.metrics.exposition().decode()
            assert 'gateway_denials_total{' not in text
            assert 'gateway_upstream_errors_total{kind="connect"} 1.0' in text
        finally:
            isolated.service_stop_only()


class TestConfiguredDecoding:
    def test_gzip_body_is_decoded_and_forwarded_plain_when_configured(self, tmp_path: Path) -> None:
        decoding = Stack(tmp_path, extra_config="request: {decode_encodings: [gzip], max_body_bytes: 100000}")
        try:
            headers = {"Authorization": f"Bearer {decoding.api_key('org-public')}", "Content-Type": "application/json",
                       "Content-Encoding": "gzip", "X-Forwarded-For": US_IP}
            plain = json.dumps(CHAT | {"model": "small-2"}).encode()
            status, _, _ = request(decoding, "POST", "/v1/chat/completions", gzip.compress(plain), headers)
            assert status == 200
            [seen] = decoding.received
            assert seen.body == plain and seen.header("content-encoding") is None
            bomb = gzip.compress(b'{"model": "small-2", "pad": "' + b"a" * 5_000_000 + b'"}')
            status, _, _ = request(decoding, "POST", "/v1/chat/completions", bomb, headers)
            assert status == 413 and len(decoding.received) == 1
        finally:
            decoding.close()


def test_oversized_body_is_413(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.api_key('org-public')}", "Content-Type": "application/json"}
    body = b'{"model": "small-2", "pad": "' + b"a" * (4 * 1024 * 1024) + b'"}'
    status, _, reply = request(stack, "POST", "/v1/chat/completions", body, headers)
    assert status == 413 and json.loads(reply)["error"]["code"] == "request_too_large"
    assert stack.received == []


class TestCredentialMisuse:
    def test_a_credential_seen_from_two_countries_is_flagged_and_suspended(self, tmp_path: Path) -> None:
        watched = Stack(tmp_path, extra_config="credential_misuse: {window_s: 600, countries: 2, suspend: true}")
        try:
            key = watched.api_key("org-public")
            body = json.dumps(CHAT | {"model": "small-2"}).encode()
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            assert request(watched, "POST", "/v1/chat/completions", body, headers | {"X-Forwarded-For": US_IP})[0] == 200
            # The request that reveals the misuse is allowed, unless the suspension it sets off
            # lands while it is answered: then it is revoked in flight (gateway/request/revocation.py).
            assert request(watched, "POST", "/v1/chat/completions", body, headers | {"X-Forwarded-For": SE_IP})[0] in (200, 401)
            flagged = watched.audit_records()[-1]
            assert flagged["credential_misuse"] == ["SE", "US"]
            import time as clock

            deadline = clock.monotonic() + 3
            status = 200
            while status != 401 and clock.monotonic() < deadline:
                status = request(watched, "POST", "/v1/chat/completions", body, headers | {"X-Forwarded-For": US_IP})[0]
            assert status == 401  # suspended fleet-wide as a live change, with a record of why
            forwarded = len(watched.received)
            other = watched.api_key("org-acme")  # other credentials are untouched
            assert request(watched, "POST", "/v1/chat/completions", body,
                           {**headers, "Authorization": f"Bearer {other}", "X-Forwarded-For": US_IP})[0] == 200
            assert len(watched.received) == forwarded + 1
            import urllib.request

            with urllib.request.urlopen(watched.admin_url + "/metrics") as metrics:
                assert 'gateway_credential_misuse_total{tier="standard"}' in metrics.read().decode()
        finally:
            watched.close()


# How long an answer waits for its audit record (gateway/request/app.py settle)


def test_an_answer_waits_for_its_record_a_bounded_time_and_never_cancels_the_write() -> None:
    import asyncio

    from gateway.request.app import _done_within

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        done.set_result(None)
        assert await _done_within(done, 0.01)

        later = loop.create_future()
        loop.call_later(0.01, later.set_result, None)
        assert await _done_within(later, 5.0)

        never = loop.create_future()
        started = loop.time()
        assert not await _done_within(never, 0.05)
        assert 0.04 <= loop.time() - started < 1.0 and not never.cancelled()

        waiting = asyncio.ensure_future(_done_within(never, 5.0))
        await asyncio.sleep(0.01)
        waiting.cancel()  # the client went away: its answer stops waiting, the write goes on
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not never.done()
        never.set_result(None)  # no callback of the cancelled wait is left to run

    asyncio.run(scenario())
