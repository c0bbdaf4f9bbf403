"""Memos an attacker's names could fill: header verdicts and body-key foldings are
remembered for short names only, so a flood of long, ever-different names (a header
line may be 8 KiB, a body key megabytes) costs CPU per request, never memory that
stays behind (4,096 entries of 8 KiB would be 32 MiB per worker)."""

from __future__ import annotations

from gateway.request import proxy
from gateway.request import body as request_body


def remembered() -> tuple[int, int]:
    """How many header verdicts the request path remembers, to the client and to the upstream."""
    return (sum(map(len, proxy._forwarded_verdicts.values())), sum(map(len, proxy._returned_verdicts.values())))


def test_long_header_names_are_judged_but_not_remembered() -> None:
    rules = proxy.Rules((), {(False, False): frozenset()}, frozenset())
    before = remembered()
    for n in range(50):
        long = b"X-Long-" + b"a" * 4000 + str(n).encode()
        sent = proxy.request_headers([(long, b"1"), (b"X_Under_" + b"b" * 100, b"2")], org_id="o",
                                     decision_id="d", pass_credentials=False, drop_content_encoding=False,
                                     rules=rules)
        assert sent[0] == (long.decode(), "1") and all(name != "X_Under_" + "b" * 100 for name, _ in sent)
        returned = proxy.response_headers([(long, b"1"), (b"Set-Cookie", b"s")], b"id")
        assert returned[0] == (long.lower(), b"1") and all(name != b"set-cookie" for name, _ in returned)
    after = remembered()
    assert after[0] - before[0] <= 1 and after[1] - before[1] <= 2  # only the short names


def test_header_verdicts_are_remembered_up_to_a_bound() -> None:
    rules = proxy.Rules((), {(False, False): frozenset({b"x-bounded"})}, frozenset())
    for n in range(proxy.MEMO_ENTRIES + 100):
        sent = proxy.request_headers([(b"x-many-%d" % n, b"1"), (b"x-bounded", b"2")], org_id="o", decision_id="d",
                                     pass_credentials=False, drop_content_encoding=False, rules=rules)
        assert sent[0] == ("x-many-%d" % n, "1") and all(name != "x-bounded" for name, _ in sent)
    assert len(proxy._forwarded_verdicts[frozenset({b"x-bounded"})]) == proxy.MEMO_ENTRIES


def test_long_body_keys_are_folded_but_not_remembered() -> None:
    before = request_body._memo_folded.cache_info().currsize
    for n in range(50):
        key = " MODEL" + "\x00" + "k" * 100_000 + str(n)
        assert request_body.folded(key) == "model"
    assert request_body._memo_folded.cache_info().currsize == before
    assert request_body.folded("Ｍodel") == "model"
