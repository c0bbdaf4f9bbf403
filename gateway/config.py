"""The gateway's configuration file (docs/configuration.md), validated whole before anything starts.

Every key may be overridden from the environment: `GATEWAY_REDIS__URL=...` sets
`redis.url` (nested keys joined by `__`, values read as YAML scalars or flow
collections). Unknown keys, in the file or the environment, are errors; every
error names the key and the bad value. Relative paths are taken relative to the
config file's directory, so a config works from any working directory.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError,
                      field_validator, model_validator)

from gateway.request.header_names import GATEWAY_PREFIX, HOP_BY_HOP, NEVER_RETURNED, folded
from gateway.policy.issues import format_path, validation_message
from gateway.policy.yamlsource import YamlDocument, YamlSyntaxError, parse
from gateway.request.routing import DEFAULT_ROUTES, checked_prefixes

ENV_PREFIX = "GATEWAY_"
# Request headers aiohttp writes from the body it forwards.
_FRAMING = frozenset({b"accept-encoding", b"content-length", b"content-type", b"content-encoding", b"host"})
# Read by `gateway admin` (the client), not config keys: exported in an operator's shell, they
# must not make `gateway serve` or `gateway keys` refuse to start.
CLIENT_VARIABLES = frozenset({"GATEWAY_ADMIN_URL", "GATEWAY_ADMIN_TOKEN"})

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")


def _host_port(value: Any) -> str:
    """`listen: 8080` is a number to YAML, so this runs before the type check."""
    if not isinstance(value, str) or not _HOST_PORT.match(value) or not 0 <= int(value.rsplit(":", 1)[1]) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port 0-65535, e.g. 127.0.0.1:8080 or [::1]:8080 (got {value!r})")
    return value


HostPort = Annotated[str, BeforeValidator(_host_port)]
# `true` or `false` only: a quoted "yes" or "on" is text, not a boolean (YAML 1.2).
Bool = StrictBool


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


HeaderName = Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]  # an RFC 9110 token
# A field value: no line breaks or other controls (tab is allowed), nothing an upstream could split on.
HeaderValue = Annotated[str, Field(pattern=r"^[^\x00-\x08\x0a-\x1f\x7f]*$")]


UpstreamUrl = Annotated[str, Field(pattern=r"^https?://[^/?#\s]+/?$")]


class HealthCheck(Section):
    """Active health checks of every URL of a pool: a GET of `path` with the upstream's
    configured headers; a 2xx answer within `timeout_s` is healthy (docs/operators.md)."""

    path: str = Field("/v1/models", pattern=r"^/[^\s#]*$")
    interval_s: float = Field(10.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)


class Upstream(Section):
    # One URL (`url`) or a pool of them (`urls`), chosen among by least outstanding requests.
    url: UpstreamUrl | None = None
    urls: list[UpstreamUrl] = []
    health_check: HealthCheck | None = None
    # A URL that refused a connection is left out this long; with health_check, until a check passes.
    eject_s: float = Field(10.0, gt=0)
    # Requests in progress per URL; at the limit everywhere, requests are answered 503 (upstream_at_capacity).
    max_concurrent: int | None = Field(None, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(600.0, gt=0)
    # Headers added to every forwarded request, e.g. the upstream's own API key; they
    # replace any the client sent under the same name (docs/headers.md).
    headers: dict[HeaderName, HeaderValue] = {}
    # Response headers the gateway drops by default that this upstream's answers may carry
    # to clients, e.g. [x-ratelimit-remaining-tokens] (docs/headers.md).
    response_headers: list[HeaderName] = []

    @field_validator("headers")
    @classmethod
    def _addable(cls, value: dict[str, str]) -> dict[str, str]:
        seen: set[bytes] = set()
        for name in value:
            key = folded(name.encode())
            if key in HOP_BY_HOP or key.startswith(GATEWAY_PREFIX) or key in _FRAMING:
                raise ValueError(f"{name!r} is set by the gateway and cannot be configured")
            if key in seen:
                raise ValueError(f"{name!r} is given twice (names are compared case-insensitively, _ as -)")
            seen.add(key)
        return value

    @field_validator("response_headers")
    @classmethod
    def _passable(cls, value: list[str]) -> list[str]:
        for name in value:
            key = name.lower().encode()
            if key in NEVER_RETURNED or key.startswith(GATEWAY_PREFIX):
                raise ValueError(f"{name!r} is never passed to clients (redirects, framing and the gateway's own "
                                 "headers are not configurable)")
        return [name.lower() for name in value]

    @model_validator(mode="after")
    def _one_form(self) -> Upstream:
        if (self.url is None) == (not self.urls):
            raise ValueError("give either url (one URL) or urls (a pool of them)")
        if len({url.rstrip("/") for url in self.urls}) != len(self.urls):
            raise ValueError("urls lists a URL twice")
        return self

    @property
    def members(self) -> tuple[str, ...]:
        """The pool's URLs, without a trailing slash; `url` is a pool of one."""
        return tuple(url.rstrip("/") for url in ([self.url] if self.url is not None else self.urls))


class GeoIPConfig(Section):
    country_db: str | None = None  # None: the embedded DB-IP Country Lite database
    anonymous_ip_db: str | None = None
    # A database older than this (from its build date) is reported (metric, alert); one
    # older than twice this is no longer trusted for covered models (gateway/geo/files.py).
    max_age_days: int = Field(45, gt=0, le=3650)
    # The embedded region overlay (gateway/geo/region_overlay.py) adds Crimea, Sevastopol,
    # Donetsk, Luhansk, Zaporizhzhia and Kherson on top of whichever country database.
    region_overlay: Bool = True


class JwtConfig(Section):
    jwks_file: str | None = None
    jwks_url: str | None = None
    issuer: str
    audience: str
    algorithms: list[str] = ["RS256", "ES256"]
    org_claim: str = "org_id"
    leeway_s: float = Field(30, ge=0, le=300)

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of jwks_file or jwks_url")
        return self


class IdentityConfig(Section):
    jwt: JwtConfig | None = None
    api_keys: Bool = True


class RedisConfig(Section):
    # redis://, rediss://, unix:// or redis+sentinel://host:port[,host:port]/service_name[/db]
    # (gateway/live/redis_connect.py); None: embedded mode, one process.
    url: str | None = None
    # A Redis Cluster, reached through the node(s) in `url` (redis://host:port[,host:port...]).
    cluster: Bool = False
    # Decide from the in-memory mirror for at most this long while Redis is unreachable.
    max_staleness_s: float = Field(5.0, gt=0)
    # Prefix (and Cluster hash tag) of every key, so gateways can share one Redis.
    namespace: str = Field("fgw", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    timeout_s: float = Field(0.5, gt=0, le=10)

    @model_validator(mode="after")
    def _usable_url(self) -> RedisConfig:
        from gateway.live.redis_connect import parse

        if self.url is None:
            if self.cluster:
                raise ValueError("redis.cluster needs redis.url (a node of the cluster)")
            return self
        try:
            parse(self.url, cluster=self.cluster)
        except ValueError as error:
            raise ValueError(f"redis.url: {error}") from None
        return self


class UnauthenticatedAuditConfig(Section):
    """The records of requests never authenticated: a log of their own, so that a flood
    of them cannot rotate away the record of authenticated callers (gateway/audit/log.py)."""

    path: str | None = None  # default: beside audit.path, e.g. audit-unauthenticated.jsonl
    max_bytes: int = Field(100 * 1024 * 1024, ge=4096)
    keep: int = Field(3, ge=1, le=1000)
    stream_maxlen: int = Field(100_000, ge=1000)            # fleet mode: entries kept in {ns}:audit-unauthenticated
    stream_max_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)  # ... and bytes of their records


class AuditConfig(Section):
    path: str = "audit.jsonl"
    # This writer's id in the hash chain and the stream; default: hostname + a hash of
    # the path. Set it where hostnames change across restarts but the files persist.
    replica: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    max_bytes: int = Field(100 * 1024 * 1024, ge=4096)  # rotate the file when it reaches this size
    keep: int = Field(10, ge=1, le=1000)                # rotated files kept: path.1 (newest) .. path.<keep>
    stream_maxlen: int = Field(1_000_000, ge=1000)      # fleet mode: entries kept in {ns}:audit
    stream_max_bytes: int = Field(1024 * 1024 * 1024, ge=64 * 1024)  # fleet mode: bytes of records kept in {ns}:audit
    unauthenticated: UnauthenticatedAuditConfig = UnauthenticatedAuditConfig()
    # Signed checkpoints (gateway/audit/checkpoints.py): none without a key (a warning at start).
    signing_key_file: str | None = None  # an Ed25519 PEM key, made by `gateway audit keygen`
    checkpoint_every: int = Field(1000, ge=1)            # records between two checkpoints, at most (about)
    checkpoint_interval_s: float = Field(60.0, gt=0)     # seconds between two, at most, while records flow
    checkpoints_path: str | None = None  # the outside copy; default: checkpoints.jsonl beside audit.path
    # always: an answer waits for its record's fsync; batch: records are fsynced in groups at
    # most 10 ms after their write (the answer waits for the write); never: the OS decides.
    fsync: Literal["always", "batch", "never"] = "batch"
    group: str | None = None  # audit files 0640 with this group (a log shipper's), else 0600


class AdminToken(Section):
    name: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    role: Literal["viewer", "operator"]


class AdminConfig(Section):
    tokens: list[AdminToken] = []
    # /metrics only for a bearer token of admin.tokens (any role); /healthz and /readyz
    # stay open for probes. None: required unless admin_listen is a loopback address,
    # since model, stage and country labels are for the operators, not the network.
    metrics_require_token: Bool | None = None


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: Any) -> Any:
    """A duration as seconds: a number, or a number with a unit (`90s`, `30m`, `24h`, `3d`)."""
    if isinstance(value, str) and value[-1:] in _DURATION_UNITS and value[:-1].replace(".", "", 1).isdigit():
        return float(value[:-1]) * _DURATION_UNITS[value[-1]]
    return value


Duration = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]


class ConsoleConfig(Section):
    """The operator console on the admin listener (docs/console.md)."""
    enabled: Bool = True
    # A signed-in session ends this long after sign-in, whatever its use (`8h`, `30m`).
    session_ttl_s: Duration = 8 * 3600.0
    # Also sign in with a JWT of identity.jwt whose claim of this name is "viewer" or
    # "operator"; None: admin tokens only.
    jwt_role_claim: str | None = None


class ChangeControlConfig(Section):
    """Two people for every loosening (docs/operators.md, "Change control")."""

    # Distinct operators, other than the proposer, who must approve a loosening. 0: one
    # operator applies anything at once (a lab's choice; the gateway warns at start).
    approvals: int = Field(1, ge=0, le=10)
    # A tightening applies at once and must be countersigned by another operator within this.
    countersign_within: Duration = 24 * 3600.0
    # An open proposal expires after this.
    proposal_ttl: Duration = 72 * 3600.0
    # `apply`: a valid policy_dir is published at once (its git review is the second person);
    # `propose`: a loosening one becomes a proposal like any other.
    file_reloads: Literal["apply", "propose"] = "apply"


class RequestConfig(Section):
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # Content-Encodings the gateway decodes (then forwards decoded); others get 415.
    decode_encodings: list[Literal["gzip", "deflate"]] = []
    # Objects and arrays in a JSON body, counted before it is parsed (gateway/request/body.py).
    max_json_containers: int = Field(100_000, ge=1)


class LimitsConfig(Section):
    """What one client may cost a listener (gateway/request/listener.py). The head limits are
    nginx's defaults (large_client_header_buffers 4 8k)."""

    max_header_bytes: int = Field(32 * 1024, ge=1024)      # request line + header fields (and trailer fields)
    max_header_line_bytes: int = Field(8 * 1024, ge=256)   # the request line, or one header field
    max_headers: int = Field(100, ge=8)                    # header fields in a request
    head_timeout_s: float = Field(10.0, gt=0)              # for the whole head, from the connection (or its first byte)
    body_timeout_s: float = Field(60.0, gt=0)              # for the whole body, from the end of the head
    max_connections: int = Field(1000, ge=1)               # open at once on the public listener
    admin_max_connections: int = Field(64, ge=1)           # open at once on the admin listener

    @model_validator(mode="after")
    def _line_within_head(self) -> LimitsConfig:
        if self.max_header_line_bytes > self.max_header_bytes:
            raise ValueError("max_header_line_bytes cannot exceed max_header_bytes")
        return self


class ForwardConfig(Section):
    pass_credentials: Bool = False


class MisuseConfig(Section):
    # A credential seen from `countries` or more countries within `window_s` is flagged.
    window_s: float = Field(3600, gt=0)
    countries: int = Field(2, ge=2)
    # Also suspend it (fleet-wide in fleet mode); reinstated through the admin API.
    suspend: Bool = False


class DenialConfig(Section):
    # RFC 7725: the 451 response's Link rel="blocked-by" names who implements the block.
    blocked_by: str = "urn:frontier-gateway:export-controls"
    # The status of a denial for where the caller is: 451 (RFC 7725, "Unavailable For Legal
    # Reasons"), or 403 for clients that only know that one: the official OpenAI and
    # Anthropic SDKs raise PermissionDeniedError for a 403 and a generic APIStatusError for a 451.
    jurisdiction_status: Literal[451, 403] = 451


class RevocationConfig(Section):
    # Requests being answered are decided again when the policy changes, and every
    # check_interval_s for times the policy names (a suspension's `from`); one now
    # denied is ended with the denial it would now get (gateway/request/revocation.py).
    enabled: Bool = True
    check_interval_s: float = Field(0.25, gt=0, le=10)


class QuotaConfig(Section):
    # Under a tokens_per_day quota, the output tokens held for a request that names no
    # limit (max_tokens, max_completion_tokens, max_output_tokens) until its usage is
    # known (docs/quotas.md). The budget is a hard bound only if no answer can be longer.
    default_max_tokens: int = Field(4096, gt=0, le=10**9)


class LoggingConfig(Section):
    # One line per event on stderr: `json` (level, logger, message and the event's fields;
    # a traceback is one field of its event) for log collectors, `text` for people.
    format: Literal["json", "text"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class OtlpConfig(Section):
    """The decision records as an OpenTelemetry log stream, and optionally traces of the
    request path, sent over OTLP/HTTP (gateway/export/, docs/operators.md "SIEM export")."""

    # The collector's base URL (e.g. http://collector:4318): records go to <endpoint>/v1/logs,
    # spans to <endpoint>/v1/traces. None: nothing is exported.
    endpoint: Annotated[str, Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$")] | None = None
    headers: dict[HeaderName, HeaderValue] = {}          # sent with every export, e.g. the collector's token
    timeout_s: float = Field(10.0, gt=0, le=300)         # one export, its retries included
    compression: Literal["gzip", "none"] = "gzip"
    # Records waiting to be sent, at most; beyond that they are dropped and counted
    # (gateway_export_dropped_total), never waited for.
    max_queue_size: int = Field(10_000, ge=16, le=1_000_000)
    max_export_batch_size: int = Field(512, ge=1, le=10_000)
    schedule_delay_s: float = Field(1.0, gt=0, le=60)    # the longest a record waits for its batch
    # Spans for identity, geo, decide and upstream under one span per request; off: no tracing code runs.
    traces: Bool = False
    service_name: str = Field("frontier-gateway", pattern=r"^[A-Za-z0-9._-]{1,128}$")

    @model_validator(mode="after")
    def _batch_within_queue(self) -> OtlpConfig:
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("max_export_batch_size cannot exceed max_queue_size")
        if self.traces and self.endpoint is None:
            raise ValueError("traces needs an endpoint")
        return self


class ExportConfig(Section):
    otlp: OtlpConfig = OtlpConfig()


class Config(Section):
    listen: HostPort = "127.0.0.1:8080"
    admin_listen: HostPort = "127.0.0.1:9090"
    policy_dir: str = "policies/"
    state_dir: str = ".gateway-state/"
    upstreams: dict[str, Upstream] = {"default": Upstream(url="http://127.0.0.1:8000")}
    trusted_proxies: list[str] = ["127.0.0.1/32"]
    routes: list[str] = list(DEFAULT_ROUTES)
    geoip: GeoIPConfig = GeoIPConfig()
    identity: IdentityConfig = IdentityConfig()
    redis: RedisConfig = RedisConfig()
    audit: AuditConfig = AuditConfig()
    admin: AdminConfig = AdminConfig()
    console: ConsoleConfig = ConsoleConfig()
    change_control: ChangeControlConfig = ChangeControlConfig()
    request: RequestConfig = RequestConfig()
    limits: LimitsConfig = LimitsConfig()
    forward: ForwardConfig = ForwardConfig()
    denials: DenialConfig = DenialConfig()
    credential_misuse: MisuseConfig = MisuseConfig()
    revocation: RevocationConfig = RevocationConfig()
    quota: QuotaConfig = QuotaConfig()
    logging: LoggingConfig = LoggingConfig()
    export: ExportConfig = ExportConfig()

    @field_validator("upstreams")
    @classmethod
    def _has_default(cls, value: dict[str, Upstream]) -> dict[str, Upstream]:
        if "default" not in value:
            raise ValueError("an upstream named 'default' is required")
        return value

    @field_validator("routes")
    @classmethod
    def _decidable_routes(cls, value: list[str]) -> list[str]:
        # A prefix must cover a route the gateway knows how to decide on (gateway/request/routing.py).
        checked_prefixes(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        from gateway.request.clientip import parse_network

        for cidr in value:
            parse_network(cidr)
        return value

    @property
    def metrics_require_token(self) -> bool:
        """Whether /metrics asks for an admin token (`admin.metrics_require_token`)."""
        required = self.admin.metrics_require_token
        return not is_loopback(self.admin_listen) if required is None else required


def is_loopback(listen: str) -> bool:
    """Whether a host:port binds only this host's loopback interface."""
    host = listen.rpartition(":")[0].strip("[]")
    if host.casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:  # one line, for the one thing to fix
            super().__init__(f"invalid configuration: {problems[0]}")
        else:
            super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


def load_config(path: str | Path | None, environ: Mapping[str, str]) -> Config:
    """Read the file (if any), apply environment overrides, validate, resolve paths."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    document = YamlDocument(data=None)
    if path is not None:
        base = Path(path).resolve().parent
        try:
            document = parse(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"{path}: cannot be read: {exc.strerror}"]) from None
        except YamlSyntaxError as exc:
            raise ConfigError([f"{path}:{exc.line or '?'}: {exc}"]) from None
        if document.data is not None and not isinstance(document.data, dict):
            raise ConfigError([f"{path}: must be a mapping of keys"])
        data = document.data or {}
    variables: dict[tuple[str, ...], str] = {}
    problems = _apply_environment(data, environ, variables)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += [_describe(err, _where(tuple(str(part) for part in err["loc"]), path, document, variables))
                     for err in exc.errors()]
    if problems:
        raise ConfigError(problems)
    return _resolve_paths(config, base)


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str],
                       variables: dict[tuple[str, ...], str]) -> list[str]:
    """Set each GATEWAY_* variable's key in `data`; `variables` remembers which set what."""
    problems = []
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in CLIENT_VARIABLES:
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if not all(keys):
            problems.append(f"{name}: malformed variable name")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        target = data
        for key in keys[:-1]:
            child = target.setdefault(key, {})
            if not isinstance(child, dict):
                problems.append(f"{name}: {'.'.join(keys)} does not name a setting")
                break
            target = child
        else:
            target[keys[-1]] = value
            variables[tuple(keys)] = name
    return problems


def _where(loc: tuple[str, ...], path: str | Path | None, document: YamlDocument,
           variables: Mapping[tuple[str, ...], str]) -> str:
    """Where a bad value was given: the variable that set it, else the file and line."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in variables:
            return variables[loc[:end]]
    if path is None:
        return "defaults"
    line = document.line_of(loc)
    return f"{path}:{line}" if line else str(path)


def _describe(err: Any, where: str) -> str:
    key = format_path(tuple(err["loc"])) or "(top level)"
    message = validation_message(err)
    bad = err.get("input")
    named = err["type"] in ("missing", "extra_forbidden", "literal_error", "enum", "value_error") or isinstance(bad, dict)
    return f"{where}: {key}: {message}{'' if named else f' (got {bad!r})'}"


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(value: str | None) -> str | None:
        return None if value is None else str((base / value).resolve()) if not Path(value).is_absolute() else value

    geoip = config.geoip.model_copy(
        update={"country_db": resolve(config.geoip.country_db), "anonymous_ip_db": resolve(config.geoip.anonymous_ip_db)}
    )
    updates: dict[str, Any] = {
        "policy_dir": resolve(config.policy_dir),
        "state_dir": resolve(config.state_dir),
        "geoip": geoip,
        "audit": config.audit.model_copy(update={
            "path": resolve(config.audit.path),
            "signing_key_file": resolve(config.audit.signing_key_file),
            "checkpoints_path": resolve(config.audit.checkpoints_path),
            "unauthenticated": config.audit.unauthenticated.model_copy(update={"path": resolve(config.audit.unauthenticated.path)}),
        }),
    }
    if config.identity.jwt is not None and config.identity.jwt.jwks_file is not None:
        jwt = config.identity.jwt.model_copy(update={"jwks_file": resolve(config.identity.jwt.jwks_file)})
        updates["identity"] = config.identity.model_copy(update={"jwt": jwt})
    return config.model_copy(update=updates)
