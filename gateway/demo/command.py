"""`gateway demo`: the whole product in one offline process.

A demo upstream that speaks the OpenAI and Anthropic APIs, the gateway in front
of it with the shipped policies, the embedded country database, a demo JWT
signing key and API keys for several organizations, all state in a temporary
directory. It prints ready-to-paste commands; `--check` runs them itself.

It also prints two operator tokens and a change-control walk-through: a suspension
applies at once on one operator's word; lifting it is a proposal; the second
operator's approval applies it (docs/operators.md, "Change control"); and the operator
console's address with the tokens to sign in with (those two and a viewer's, docs/console.md).

Decisions are made as of DEMO_TIME so that the demo reads the same whatever day
it runs (the shipped example timelines are written around it). 127.0.0.1 is a
trusted proxy, so `X-Forwarded-For` plays the client's public address.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import shlex
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from joserfc import jwt
from joserfc.jwk import generate_key

from gateway.config import Config, load_config
from gateway.policy.decision import Facts, decide
from gateway.demo.upstream import DemoServer
from gateway.demo.upstream import serve as serve_upstream
from gateway.geo.embedded import ATTRIBUTION
from gateway.geo.region_overlay import ATTRIBUTION as REGION_ATTRIBUTION
from gateway.identity import ApiKeyStore
from gateway.policy.load import load_bundle
from gateway.server import Service

SHIPPED_POLICIES = Path(__file__).resolve().parents[2] / "policies"
DEMO_TIME = "2026-12-01T12:00:00Z"
DEMO_MOMENT = datetime.fromisoformat(DEMO_TIME)
ISSUER, AUDIENCE = "https://demo-idp.invalid/", "frontier-gateway"
DEMO_ORGS = ("org-gov-evaluator", "org-partner-us", "org-partner-jp", "org-developer-us", "org-entity-listed")
# Public addresses and where the embedded DB-IP database places them.
US, JP, CN, IR = "8.8.8.8", "133.11.0.1", "114.114.114.114", "217.218.0.1"
OPERATORS = ("ops-alice", "ops-bob")  # two people: a loosening needs the other one's approval
VIEWER = "auditor-eve"  # sees everything in the console and the admin API, changes nothing
WALK_SUSPENSION = "demo-jp"


@dataclass(frozen=True)
class Example:
    title: str
    expect: int
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None = None
    stream: bool = False
    direct: bool = False  # in `make fleet`: sent to a replica, bypassing the load balancer

    def curl(self, base_url: str) -> str:
        argv = ["curl", "-sS" + ("N" if self.stream else ""), *([] if self.stream else ["-i"]), base_url + self.path]
        for name, value in self.headers.items():
            argv += ["-H", f"{name}: {value}"]
        if self.body is not None:
            argv += ["-H", "Content-Type: application/json", "-d", json.dumps(self.body)]
        return shlex.join(argv)


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def bearer(credential: str, ip: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}", "X-Forwarded-For": ip}


def examples(keys: dict[str, str], token: str) -> list[Example]:
    return [
        Example("A vetted US partner uses a covered model in its limited rollout", 200, "/v1/chat/completions",
                bearer(keys["org-partner-us"], US), chat("example-frontier-2", "Hello from a vetted partner")),
        Example("A standard developer asks for that pre-release model: concealed as not found", 404,
                "/v1/chat/completions", bearer(keys["org-developer-us"], US), chat("example-frontier-2", "Is it out yet?")),
        Example("The Japanese partner's credential used from China: 451, with a blocked-by link", 451,
                "/v1/chat/completions", bearer(keys["org-partner-jp"], CN), chat("example-frontier-2", "Hello")),
        Example("The same partner from Japan, through the Anthropic Messages API", 200, "/v1/messages",
                {"x-api-key": keys["org-partner-jp"], "anthropic-version": "2023-06-01", "X-Forwarded-For": JP},
                {"model": "example-frontier-2", "max_tokens": 64, "messages": [{"role": "user", "content": "Konnichiwa"}]}),
        Example("A streaming answer from an open model (server-sent events, chunk by chunk)", 200,
                "/v1/chat/completions", bearer(keys["org-developer-us"], US),
                chat("example-small-latest", "Stream a short answer please", stream=True), stream=True),
        Example("Any model from a comprehensively embargoed country", 451, "/v1/chat/completions",
                bearer(keys["org-developer-us"], IR), chat("example-small-1", "Hello")),
        Example("An Entity List match is refused everything", 403, "/v1/chat/completions",
                bearer(keys["org-entity-listed"], US), chat("example-small-1", "Hello")),
        Example("A government evaluator signs in with a JWT; the model list is filtered to what it may use", 200,
                "/v1/models", bearer(token, US)),
    ]


@dataclass
class DemoRuntime:
    service: Service
    upstream: DemoServer
    workdir: Path
    keys: dict[str, str]
    token: str
    url: str = ""
    admin_url: str = ""
    examples: list[Example] = field(default_factory=list)
    operators: dict[str, str] = field(default_factory=dict)  # name -> admin token
    viewer: str = ""  # VIEWER's admin token

    async def stop(self) -> None:
        await self.service.stop()
        await self.upstream.stop()


def _port_or_free(port: int) -> int:
    """The preferred port if it is free (so printed commands stay short), else 0."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def _config(workdir: Path, upstream_url: str, public: int, admin: int, policy_dir: Path,
            operators: dict[str, str], viewer: str) -> Config:
    path = workdir / "gateway.yaml"
    roles = {name: (token, "operator") for name, token in operators.items()} | {VIEWER: (viewer, "viewer")}
    tokens = [{"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "role": role}
              for name, (token, role) in roles.items()]
    path.write_text(json.dumps({
        "listen": f"127.0.0.1:{public}",
        "admin_listen": f"127.0.0.1:{admin}",
        "policy_dir": str(policy_dir),
        "state_dir": str(workdir / "state"),
        "upstreams": {"default": {"url": upstream_url}},
        "trusted_proxies": ["127.0.0.1/32", "::1/128"],
        # The demo decides at DEMO_TIME with whatever database this package embeds, which
        # may be older than that by then: keeping a database fresh is an operator's job
        # (docs/operators.md), not the demo's.
        "geoip": {"max_age_days": 3650},
        "identity": {"jwt": {"jwks_file": "jwks.json", "issuer": ISSUER, "audience": AUDIENCE, "algorithms": ["RS256"]}},
        "audit": {"path": str(workdir / "audit.jsonl")},
        "admin": {"tokens": tokens},
        "change_control": {"approvals": 1},
    }))
    return load_config(path, {})


def _signing_key(workdir: Path) -> Any:
    key = generate_key("RSA", 2048, {"kid": "demo"})
    public = key.as_dict(private=False) | {"kid": "demo", "alg": "RS256", "use": "sig"}
    (workdir / "jwks.json").write_text(json.dumps({"keys": [public]}))
    return key


async def start_demo(workdir: Path, *, public_port: int = 8080, admin_port: int = 9090,
                     policy_dir: Path = SHIPPED_POLICIES) -> DemoRuntime:
    upstream = await serve_upstream("127.0.0.1", 0, models=sorted(load_bundle(policy_dir).policy.models))
    operators = {name: f"demo-{name}-{secrets.token_urlsafe(12)}" for name in OPERATORS}
    viewer = f"demo-{VIEWER}-{secrets.token_urlsafe(12)}"
    config = _config(workdir, upstream.url, _port_or_free(public_port), _port_or_free(admin_port), policy_dir,
                     operators, viewer)
    signing = _signing_key(workdir)
    store = ApiKeyStore(config.state_dir)
    keys = {org: store.create(org, "demo")[1] for org in DEMO_ORGS}
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "analyst@caisi.example", "org_id": "org-gov-evaluator",
              "iat": now, "exp": now + 24 * 3600}
    token = jwt.encode({"alg": "RS256", "kid": "demo"}, claims, signing)
    demo_time = DEMO_MOMENT.timestamp()
    service = Service(config, clock=lambda: demo_time)
    await service.start()
    public, admin = service.bound_ports()
    runtime = DemoRuntime(service, upstream, workdir, keys, token, f"http://127.0.0.1:{public}",
                          f"http://127.0.0.1:{admin}")
    runtime.examples = examples(keys, token)
    runtime.operators = operators
    runtime.viewer = viewer
    return runtime


async def check(runtime: DemoRuntime) -> list[tuple[Example, int]]:
    """Send every example; return what each one answered."""
    results = []
    async with aiohttp.ClientSession() as session:
        for example in runtime.examples:
            async with session.request("POST" if example.body is not None else "GET", runtime.url + example.path,
                                       headers=example.headers, json=example.body) as response:
                await response.read()
                results.append((example, response.status))
    return results


def _sdk_snippet(runtime: DemoRuntime) -> str:
    return (
        "from openai import OpenAI\n"
        f"client = OpenAI(base_url=\"{runtime.url}/v1\", api_key=\"{runtime.keys['org-partner-us']}\",\n"
        f"                default_headers={{\"X-Forwarded-For\": \"{US}\"}})\n"
        "reply = client.chat.completions.create(model=\"example-frontier-2\",\n"
        "                                       messages=[{\"role\": \"user\", \"content\": \"Hello\"}])\n"
        "print(reply.choices[0].message.content)"
    )


def describe(runtime: DemoRuntime, *, interactive: bool = True) -> str:
    lines = [
        "Frontier Gateway demo — everything runs in this process, offline.",
        f"  gateway   {runtime.url}   (admin, metrics: {runtime.admin_url}/metrics, {runtime.admin_url}/readyz)",
        f"  upstream  {runtime.upstream.url}   (a demo model server speaking the OpenAI and Anthropic APIs)",
        f"  policy    {SHIPPED_POLICIES} (shipped examples), decisions as of {DEMO_TIME}",
        f"  audit     {runtime.workdir / 'audit.jsonl'}",
        f"  {ATTRIBUTION}",
        f"  {REGION_ATTRIBUTION}",
        "",
        "127.0.0.1 is a trusted proxy here, so X-Forwarded-For plays the caller's public address",
        f"({US} is the US, {JP} Japan, {CN} China, {IR} Iran in the embedded country database).",
        "",
    ]
    for number, example in enumerate(runtime.examples, 1):
        lines += [f"{number}. {example.title} — expect {example.expect}", f"   {example.curl(runtime.url)}", ""]
    lines += ["With the official OpenAI SDK (pip install openai):", "", _sdk_snippet(runtime), "",
              *walkthrough(runtime), "", *console_lines(runtime), *(["", "Press Ctrl-C to stop."] if interactive else [])]
    return "\n".join(lines)


def console_lines(runtime: DemoRuntime) -> list[str]:
    alice, bob = (runtime.operators[name] for name in OPERATORS)
    return [
        f"Operator console: open {runtime.admin_url}/console/ in a browser and sign in with an admin token:",
        f"   {alice}   ({OPERATORS[0]}, operator)",
        f"   {bob}   ({OPERATORS[1]}, operator)",
        f"   {runtime.viewer}   ({VIEWER}, viewer: sees everything, changes nothing)",
        "The map on its overview shades the countries the examples above were denied from.",
    ]


async def check_console(runtime: DemoRuntime) -> list[tuple[str, bool]]:
    """Sign in to the console with each printed token; (what, as printed?) for each."""
    results = []
    tokens = {**runtime.operators, VIEWER: runtime.viewer}
    for name, token in tokens.items():
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            async with session.post(f"{runtime.admin_url}/console/sign-in", data={"token": token}) as answer:
                page = await answer.text()
                results.append((f"console sign-in as {name}", answer.status == 200 and name in page
                                and "Denials by place" in page))
    return results


def walkthrough(runtime: DemoRuntime) -> list[str]:
    """Change control in three steps, with the demo's two operator tokens."""
    alice, bob = (runtime.operators[name] for name in OPERATORS)
    jp = Example("", 0, "/v1/messages", {"x-api-key": runtime.keys["org-partner-jp"], "anthropic-version": "2023-06-01",
                                         "X-Forwarded-For": JP},
                 {"model": "example-frontier-2", "max_tokens": 64, "messages": [{"role": "user", "content": "Konnichiwa"}]})
    return [
        "Change control: two operators, so no one person can grant access alone. In another shell",
        "(the gateway command is .venv/bin/gateway after `make demo`):",
        "",
        f"   export GATEWAY_ADMIN_URL={runtime.admin_url}",
        f"   ALICE={alice}   # {OPERATORS[0]}, operator",
        f"   BOB={bob}   # {OPERATORS[1]}, operator",
        "",
        "a. Suspend at once — a tightening applies on one operator's word (and awaits a countersignature):",
        f"   GATEWAY_ADMIN_TOKEN=$ALICE gateway admin suspend --id {WALK_SUSPENSION} --model example-frontier-2 "
        "--deny-in JP --reason 'demo export order'",
        "   The Japanese partner from Japan (example 4) now gets 451:",
        f"   {jp.curl(runtime.url)}",
        "",
        "b. Lift it — a loosening is a proposal, not applied (the partner still gets 451):",
        f"   GATEWAY_ADMIN_TOKEN=$ALICE gateway admin lift {WALK_SUSPENSION} --reason 'order rescinded'",
        "   GATEWAY_ADMIN_TOKEN=$ALICE gateway admin approve PROPOSAL_ID   # refused: not your own proposal",
        "",
        "c. Approve it with the second token — it applies, and the partner gets 200 again:",
        "   GATEWAY_ADMIN_TOKEN=$BOB gateway admin show PROPOSAL_ID       # diff, access delta, simulation",
        "   GATEWAY_ADMIN_TOKEN=$BOB gateway admin approve PROPOSAL_ID --reason 'order checked'",
        "   GATEWAY_ADMIN_TOKEN=$BOB gateway admin countersign CHANGE_ID  # the suspension of step a",
        "   GATEWAY_ADMIN_TOKEN=$BOB gateway admin changes --verify       # every step, hash-chained",
        "",
        "(PROPOSAL_ID is printed by step b, CHANGE_ID by step a.)",
    ]


async def check_walkthrough(runtime: DemoRuntime) -> list[tuple[str, bool]]:
    """Do what the walk-through says, through the admin API; (step, as printed?) for each."""
    alice, bob = ({"Authorization": f"Bearer {runtime.operators[name]}"} for name in OPERATORS)
    partner = runtime.examples[3]  # the Japanese partner from Japan
    async with aiohttp.ClientSession() as session:
        async def call(method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
            async with session.request(method, runtime.admin_url + path, headers=headers, json=body) as response:
                return response.status, await response.json()

        async def partner_status() -> int:
            async with session.post(runtime.url + partner.path, headers=partner.headers, json=partner.body) as response:
                await response.read()
                return response.status

        results = []
        suspension = {"id": WALK_SUSPENSION, "models": ["example-frontier-2"], "deny_in": ["JP"], "reason": "demo"}
        status, made = await call("POST", "/admin/suspensions", alice, suspension)
        results.append(("a. suspend at once", status == 201 and await partner_status() == 451))
        status, proposal = await call("DELETE", f"/admin/suspensions/{WALK_SUSPENSION}", alice)
        own, _ = await call("POST", f"/admin/proposals/{proposal.get('id')}/approve", alice)
        results.append(("b. lift is a proposal", status == 202 and own == 403 and await partner_status() == 451))
        status, approved = await call("POST", f"/admin/proposals/{proposal.get('id')}/approve", bob)
        signed, _ = await call("POST", f"/admin/changes/{made.get('change_id')}/countersign", bob)
        _, verified = await call("GET", "/admin/changes/verify", bob)
        results.append(("c. approved by the second operator", status == 200 and approved.get("state") == "applied"
                        and signed == 200 and verified.get("ok") is True and await partner_status() == 200))
    return results


async def _run(check_only: bool, public_port: int, admin_port: int) -> int:
    # Kept after the demo stops, so that its audit log can be verified and explained afterwards.
    directory = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    try:
        return await _serve(directory, check_only, public_port, admin_port)
    finally:
        print(f"\nThe demo's audit log stays in {directory}: check its hash chain with\n"
              f"  gateway audit verify {directory / 'audit.jsonl'}\n"
              f"and remove the directory when done (rm -r {directory}).", flush=True)


async def _serve(directory: Path, check_only: bool, public_port: int, admin_port: int) -> int:
    runtime = await start_demo(directory, public_port=public_port, admin_port=admin_port)
    try:
        print(describe(runtime, interactive=not check_only), flush=True)
        if check_only:
            results = await check(runtime)
            print("\nChecking every example:")
            for example, status in results:
                print(f"  {'ok ' if status == example.expect else 'BAD'} {status}  {example.title}")
            steps = await check_walkthrough(runtime) + await check_console(runtime)
            print("\nChecking the change-control walk-through and the console:")
            for step, ok in steps:
                print(f"  {'ok ' if ok else 'BAD'} {step}")
            return 0 if all(status == example.expect for example, status in results) \
                and all(ok for _, ok in steps) else 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        return 0
    finally:
        await runtime.stop()


def run_demo(*, check_only: bool = False, public_port: int = 8080, admin_port: int = 9090) -> int:
    import uvloop

    return uvloop.run(_run(check_only, public_port, admin_port))


# The offline decision tour (no servers): `gateway demo --tour`.

TOUR = (
    ("A vetted US partner uses a covered model in its limited rollout", "org-partner-us", "example-frontier-2", "US", None, False),
    ("A vetted Japanese partner, from Japan (an allied jurisdiction)", "org-partner-jp", "example-frontier-2", "JP", None, False),
    ("The same partner's credential seen from China", "org-partner-jp", "example-frontier-2", "CN", None, False),
    ("A standard developer asks for the pre-release model: concealed", "org-developer-us", "example-frontier-2", "US", None, False),
    ("A partner whose vetting lapsed counts as standard", "org-lapsed-partner", "example-frontier-2", "US", None, False),
    ("A small, uncovered model is open to every tier", "org-developer-us", "example-small-latest", "BR", None, False),
    ("...but not from a comprehensively embargoed country", "org-developer-us", "example-small-1", "IR", None, False),
    ("...nor from an embargoed region (needs a City database)", "org-developer-us", "example-small-1", "UA", "UA-43", False),
    ("...even where a database files that region under Russia", "org-developer-us", "example-small-1", "RU", "UA-43", False),
    ("An org declared in China is refused a covered model even from a US address", "org-verified-cn", "example-frontier-1", "US", None, False),
    ("Covered models are refused through anonymizers", "org-developer-us", "example-frontier-1", "US", None, True),
    ("Covered models are refused when the country is unknown", "org-developer-us", "example-frontier-1", None, None, False),
    ("...and so is every other model (allow_unknown_places: false)", "org-developer-us", "example-small-1", None, None, False),
    ("An Entity List match is denied everything", "org-entity-listed", "example-small-1", "US", None, False),
)


def _explain_command(org: str, model: str, country: str | None, region: str | None, anonymizer: bool,
                     policy_dir: Path) -> str:
    try:
        policy_dir = policy_dir.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    argv = ["gateway", "explain", "--policy", str(policy_dir), "--org", org, "--model", model, "--at", DEMO_TIME]
    argv += ["--country", country] if country else []
    argv += ["--region", region] if region else []
    argv += ["--anonymizer"] if anonymizer else []
    return shlex.join(argv)


def run_tour(policy_dir: Path = SHIPPED_POLICIES) -> int:
    policy_dir = Path(policy_dir)
    policy = load_bundle(policy_dir).policy
    now = DEMO_MOMENT
    print(f"Frontier Gateway decision tour — policy {policy_dir} (version {policy.version}), as of {DEMO_TIME}\n")
    for number, (story, org, model, country, region, anonymizer) in enumerate(TOUR, 1):
        decision = decide(policy, Facts(org, model, country, region, anonymizer), now)
        outcome = f"{decision.verdict.upper()} {decision.status}" + (f" {', '.join(decision.reasons)}" if decision.reasons else "")
        print(f"{number:2}. {story}\n    -> {outcome}\n    $ {_explain_command(org, model, country, region, anonymizer, policy_dir)}\n")
    print("Run any command above (add --json for machine-readable output) to see every rule behind the")
    print("decision; after `make demo` the command is .venv/bin/gateway, or activate .venv first.")
    return 0
