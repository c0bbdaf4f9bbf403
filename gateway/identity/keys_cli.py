"""`gateway keys create|revoke|list` (docs/operators.md, "API keys"), for the main CLI to wire up.

Each function takes the parsed arguments: `state_dir` (the config's
`state_dir`, already resolved), optionally `redis` (the config's `redis`
section: with a `url`, the keys live in Redis, shared by the fleet), `json`
(bool), and `org`/`label` for create, `key_id` for revoke, optionally `org` for
list. Each returns an exit status.
The secret is printed once, by `create`; nothing can show it again.

`create` and `revoke` report what they did to `record(action, key_id, before, after)`,
which the main CLI points at the change log (actor `local:<user>`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from gateway.identity.apikeys import ApiKeyAdmin, ApiKeyStoreError, ApiKeyStore

SHOWN_ONCE = "This secret is shown only once and cannot be shown again: store it now."
Record = Callable[[str, str, dict[str, Any] | None, dict[str, Any] | None], None]


def _unrecorded(action: str, key_id: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
    return None


def _store(args: argparse.Namespace) -> ApiKeyAdmin:
    """Fleet mode (`redis.url` set): the keys in Redis; embedded mode: the state directory's file."""
    redis = getattr(args, "redis", None)
    if redis is not None and redis.url:
        from gateway.identity.redis_keys import RedisApiKeyStore

        return RedisApiKeyStore(redis.url, namespace=redis.namespace, timeout_s=redis.timeout_s,
                                cluster=getattr(redis, "cluster", False))
    return ApiKeyStore(args.state_dir)


def keys_create(args: argparse.Namespace, record: Record = _unrecorded) -> int:
    store = _store(args)
    label = getattr(args, "label", None)
    try:
        key_id, secret = store.create(args.org, label)
    except (ApiKeyStoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    record("apikey.create", key_id, None, {"org_id": args.org, "label": label})
    if args.json:
        print(json.dumps({"key_id": key_id, "org_id": args.org, "secret": secret, "warning": SHOWN_ONCE}))
    else:
        print(f"Created API key {key_id} for organization {args.org}.")
        print(f"Secret: {secret}")
    print(f"warning: {SHOWN_ONCE}", file=sys.stderr)
    return 0


def keys_revoke(args: argparse.Namespace, record: Record = _unrecorded) -> int:
    store = _store(args)
    try:
        known = {key.key_id: key for key in store.list()}
        found = store.revoke(args.key_id)
    except ApiKeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    key = known.get(args.key_id)
    if found and key is not None and key.revoked_at is None:
        record("apikey.revoke", args.key_id, {"org_id": key.org_id, "label": key.label}, None)
    if args.json:
        print(json.dumps({"key_id": args.key_id, "revoked": found}))
    elif found:
        print(f"Revoked {args.key_id}; running gateways refuse it within about a second.")
    if not found:
        print(f"error: no API key {args.key_id!r}", file=sys.stderr)
        return 1
    return 0


def keys_list(args: argparse.Namespace) -> int:
    try:
        keys = _store(args).list()
    except ApiKeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    org = getattr(args, "org", None)
    keys = [key for key in keys if org is None or key.org_id == org]
    if args.json:
        print(json.dumps([asdict(key) for key in keys], indent=2))
        return 0
    rows = [("KEY ID", "ORG", "CREATED", "REVOKED", "LABEL")]
    rows += [(k.key_id, k.org_id, k.created_at, k.revoked_at or "-", k.label or "") for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    return 0
