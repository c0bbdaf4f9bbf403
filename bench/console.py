"""How fast the operator console's pages answer with 10^5 audit records on disk.

Writes RECORDS audit records (sealed into the hash chain by the gateway's own AuditFile, as
a running gateway writes them: varied orgs, models, countries, decisions and reasons, one
rare org only in the oldest record), starts a gateway on the shipped policies/ with that
audit file, signs in to the console over HTTP and times each page ROUNDS times
(after one warm-up), on loopback, one request at a time:

- the overview; the decisions tail unfiltered, filtered on a common value (deny) and on
  an org only the oldest record has (the whole file is read);
- a decision by id: the newest, the oldest (the whole file is read) and one that is not
  there (the audit log and the unauthenticated log are both read to the end);
- the Policy and Changes pages (they read no audit records; timed for completeness).

Goal: every page within 200 ms (the median; p95 and max shown too). Exits 1 if a median
misses it.

    python bench/console.py                 # 10^5 records, 20 rounds
    python bench/console.py --records 1000000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.cookiejar
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.audit.chain import AuditFile  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.server import Service  # noqa: E402

GOAL_MS = 200.0
TOKEN = "bench-console-token"
ORGS = ["org-caisi", "org-acme", "org-kyoto", "org-public", "org-lapsed", "org-verified-br"]
MODELS = ["frontier-5.6", "fable", "mythos", "small-2"]
PLACES = [("US", None), ("SE", None), ("CN", "CN-22"), ("RU", None), ("UA", "UA-43"), ("IR", None), ("DE", None)]
REASONS = ["jurisdiction_of_concern", "jurisdiction_embargoed", "tier_not_permitted", "org_unknown"]
RARE_ORG = "org-only-in-the-oldest-record"


def write_records(path: Path, count: int, seed: int = 19) -> tuple[str, str]:
    """`count` records, oldest first; (oldest id, newest id)."""
    rng = random.Random(seed)
    audit = AuditFile(path, replica="bench", durable=False)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    ids = []
    batch = []
    for n in range(count):
        decision_id = rng.randbytes(16).hex()
        ids.append(decision_id)
        country, region = rng.choice(PLACES)
        denied = rng.random() < 0.3
        batch.append({
            "time": (start + timedelta(milliseconds=10 * n)).isoformat().replace("+00:00", "Z"),
            "decision_id": decision_id, "method": "POST", "path": "/v1/chat/completions",
            "org": RARE_ORG if n == 0 else rng.choice(ORGS), "subject": "user@example", "credential_id": "key-bench",
            "client_ip": "203.0.113.7", "observed_country": country, "observed_region": region,
            "declared_country": "US", "anonymizer": False, "requested_model": rng.choice(MODELS),
            "model": None, "stage": "general", "covered": True, "tier": "vetted_partner",
            "decision": "deny" if denied else "allow", "status": 451 if denied else 200,
            "reasons": [rng.choice(REASONS)] if denied else [], "error": None, "policy_version": "bench",
            "decision_us": 12.5, "upstream_status": None if denied else 200, "upstream_bytes": 0 if denied else 512,
            "tokens": None, "tokens_charged": 0, "credential_misuse": None, "would_deny": None, "revoked": None,
        })
        if len(batch) == 1000:
            audit.append(batch)
            batch = []
    if batch:
        audit.append(batch)
    audit.close()
    return ids[0], ids[-1]


class Gateway:
    def __init__(self, directory: Path) -> None:
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        config_path = directory / "gateway.yaml"
        config_path.write_text(f"""
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
policy_dir: {REPO / "policies"}
state_dir: {directory / "state"}
audit: {{path: {directory / "audit.jsonl"}, fsync: never}}
admin:
  tokens: [{{name: bench, sha256: "{digest}", role: viewer}}]
""")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.service = Service(load_config(config_path, {}))
        self.run(self.service.start())
        self.url = f"http://127.0.0.1:{self.service.bound_ports()[1]}/console"

    def run(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)  # type: ignore[arg-type]

    def close(self) -> None:
        self.run(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)


def signed_in(url: str) -> urllib.request.OpenerDirector:
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    opener.open(url + "/sign-in", data=urllib.parse.urlencode({"token": TOKEN}).encode(), timeout=10).read()
    return opener


def timed(opener: urllib.request.OpenerDirector, url: str, rounds: int) -> tuple[list[float], int]:
    """Milliseconds per GET (the whole response read), after one warm-up; and the status."""
    status = 0
    samples = []
    for n in range(rounds + 1):
        started = time.perf_counter()
        try:
            with opener.open(url, timeout=30) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as answer:
            answer.read()
            status = answer.code
        if n:
            samples.append((time.perf_counter() - started) * 1000)
    return samples, status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as work:
        directory = Path(work)
        started = time.perf_counter()
        oldest, newest = write_records(directory / "audit.jsonl", args.records)
        size = (directory / "audit.jsonl").stat().st_size
        print(f"{args.records} records, {size / 1e6:.0f} MB, written in {time.perf_counter() - started:.1f} s")
        gateway = Gateway(directory)
        try:
            opener = signed_in(gateway.url)
            pages = {
                "overview": "/",
                "decisions, newest 100": "/decisions",
                "decisions, deny": "/decisions?decision=deny",
                "decisions, rare org (whole file)": f"/decisions?org={RARE_ORG}",
                "decision by id, newest": f"/decisions/{newest}",
                "decision by id, oldest (whole file)": f"/decisions/{oldest}",
                "decision by id, absent (both logs)": f"/decisions/{'0' * 32}",
                "policy": "/policy",
                "changes": "/changes",
            }
            print(f"{'page':40} {'status':>6} {'median':>8} {'p95':>8} {'max':>8}  (ms, {args.rounds} rounds)")
            missed = []
            for name, path in pages.items():
                samples, status = timed(opener, gateway.url + path, args.rounds)
                median = statistics.median(samples)
                p95 = sorted(samples)[max(0, round(0.95 * len(samples)) - 1)]
                print(f"{name:40} {status:>6} {median:8.1f} {p95:8.1f} {max(samples):8.1f}")
                if median > GOAL_MS:
                    missed.append(name)
        finally:
            gateway.close()
    print(f"goal: every median within {GOAL_MS:.0f} ms: " + ("met" if not missed else f"MISSED by {', '.join(missed)}"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
