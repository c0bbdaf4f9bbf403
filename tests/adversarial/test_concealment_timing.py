"""Adversarial: the time of a 404 must not tell a caller that a model exists.

A model the caller may not see (a pre-GA stage with `conceal_unreleased`, an
internal stage, one not yet released) is answered with the unknown model's
404, byte for byte. Its answer must not take measurably longer either: timing
it against a name that surely does not exist would otherwise reveal what the
404 hides.

One gateway on loopback answers thousands of requests of each kind, on one
keep-alive connection, the kinds interleaved in a shuffled order each round so
that drift on a busy machine falls on all alike. Two comparisons:

- what the caller sees: the medians of the whole request time must agree within
  `WINDOW_S`, far above the noise of a loaded 2-core machine (a few µs between
  these medians), far below a real leak (the test fails with a 200 µs sleep added
  to the concealed path);
- where the difference came from (gateway/policy/decision.py, `stand_in`): the decision
  core's own time, the audit record's `decision_us`. A concealed or internal
  model's decision took 30-40 % longer than an unknown one's (the model's stage,
  coverage rules and suspensions were evaluated, an unknown name's were not;
  2-12 µs at the median of the whole request); the medians must now agree within
  `DECISION_RATIO`. A model not yet released sits closer (about 20 % before, 10 %
  after) and is held to the whole-request window only.
"""

from __future__ import annotations

import http.client
import json
import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import US_IP, Stack
from fleet import policy_variant

ROUNDS = 2000
WARM_UP = 100
WINDOW_S = 75e-6
DECISION_RATIO = 1.2
# org-public (standard tier) from the US, at the harness's decision time.
KINDS = {
    "unknown": "no-such-model-9",
    "concealed": "frontier-5.6",   # limited_partner stage: vetted partners only
    "internal": "secret-9",        # internal stage: no tier at all
    "unreleased": "nextgen-7",     # first stage still ahead
}
INTERNAL_MODEL = """  secret-9:
    upstream: default
    evaluations:
      training_compute_flop: 5.0e26
    release:
      - stage: internal
        from: 2026-06-01T00:00:00Z
"""


def add_internal_model(texts: dict[str, str]) -> None:
    texts["models.yaml"] = texts["models.yaml"].replace("models:\n", "models:\n" + INTERNAL_MODEL, 1)


Samples = dict[str, dict[str, list[float]]]  # kind -> {"seconds": [...], "decision_us": [...]}


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Samples, dict[str, tuple[int, bytes]]]]:
    directory = tmp_path_factory.mktemp("concealment-timing")
    stack = Stack(directory, policy_dir=policy_variant(directory / "policy", add_internal_model))
    try:
        yield measure(stack)
    finally:
        stack.close()


def measure(stack: Stack) -> tuple[Samples, dict[str, tuple[int, bytes]]]:
    host, port = stack.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Authorization": f"Bearer {stack.api_key('org-public')}", "X-Forwarded-For": US_IP,
               "Content-Type": "application/json"}
    bodies = {kind: json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
              for kind, model in KINDS.items()}
    samples: Samples = {kind: {"seconds": [], "decision_us": []} for kind in KINDS}
    answered: dict[str, tuple[int, bytes]] = {}
    kinds_of: dict[str, str] = {}
    order = list(KINDS)
    shuffle = random.Random(12).shuffle
    for round_ in range(WARM_UP + ROUNDS):
        shuffle(order)
        for kind in order:
            started = time.perf_counter()
            connection.request("POST", "/v1/chat/completions", bodies[kind], headers)
            response = connection.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            answered[kind] = (response.status, body)
            if round_ >= WARM_UP:
                samples[kind]["seconds"].append(elapsed)
                kinds_of[response.getheader("x-gateway-decision-id") or ""] = kind
    connection.close()
    for record in stack.audit_records():
        kind = kinds_of.get(record["decision_id"])
        if kind is not None:
            samples[kind]["decision_us"].append(record["decision_us"])
    return samples, answered


def test_every_kind_gets_the_same_404(answers: tuple[Samples, dict[str, tuple[int, bytes]]]) -> None:
    _, answered = answers
    assert answered["unknown"][0] == 404
    assert all(answer == answered["unknown"] for answer in answered.values()), answered


@pytest.mark.parametrize("kind", ["concealed", "internal", "unreleased"])
def test_the_answer_takes_as_long_as_an_unknown_models(answers: tuple[Samples, dict[str, tuple[int, bytes]]],
                                                       kind: str) -> None:
    samples, _ = answers
    mine, unknown = (statistics.median(samples[k]["seconds"]) for k in (kind, "unknown"))
    assert len(samples[kind]["seconds"]) == ROUNDS
    assert abs(mine - unknown) < WINDOW_S, (
        f"median {kind} {mine * 1e6:.1f} µs vs unknown {unknown * 1e6:.1f} µs over {ROUNDS} interleaved requests")


@pytest.mark.parametrize("kind", ["concealed", "internal"])
def test_the_decision_takes_as_long_as_an_unknown_models(answers: tuple[Samples, dict[str, tuple[int, bytes]]],
                                                         kind: str) -> None:
    samples, _ = answers
    assert len(samples[kind]["decision_us"]) == ROUNDS
    mine, unknown = (statistics.median(samples[k]["decision_us"]) for k in (kind, "unknown"))
    assert 1 / DECISION_RATIO < mine / unknown < DECISION_RATIO, (
        f"median decision {kind} {mine:.1f} µs vs unknown {unknown:.1f} µs over {ROUNDS} interleaved requests")
