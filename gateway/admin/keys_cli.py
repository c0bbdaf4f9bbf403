"""`gateway admin key-create|key-revoke|keys`: API keys through the admin API, so each
is a recorded change under change control (docs/operators.md, "API keys").

`key-create` draws the secret here, on the requester's machine, and sends only its
SHA-256: the gateway, Redis and the approvers never see the secret, which is printed
once, for the requester, and works once the proposal is approved
(gateway/live/key_changes.py says why).
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.admin.client import Client, segment, show
from gateway.admin.control_cli import Verb, applied_or_proposed
from gateway.identity.apikeys import hash_secret, new_secret

SHOWN_ONCE = "This secret is shown only once and cannot be shown again: store it now."


def do_key_create(client: Client, args: argparse.Namespace) -> int:
    secret = new_secret()
    body = {"org_id": args.org, "sha256": hash_secret(secret), "label": args.label, "reason": args.reason,
            "reference": args.reference}
    answer = client.call("POST", "/admin/keys", body)

    def readable(b: dict[str, Any]) -> list[str]:
        key_id = b.get("key_id") or (b.get("body") or {}).get("key_id")
        lines = applied_or_proposed(b, lambda c: [f"API key {c.get('key_id')} created for {args.org}"])
        works = "now" if "proposer" not in b else "once the proposal is approved"
        return [*lines, "", f"API key {key_id} for {args.org}; it works {works}.", f"Secret: {secret}",
                f"warning: {SHOWN_ONCE}"]
    show(args, answer | {"secret": secret} if args.json and isinstance(answer, dict) else answer, readable)
    return 0


def do_key_revoke(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("DELETE", f"/admin/keys/{segment(args.key_id)}",
                         query={"reason": args.reason, "reference": args.reference})
    show(args, answer, lambda b: applied_or_proposed(b, lambda c: [f"API key {c.get('key_id')} revoked"]))
    return 0


def do_keys(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("GET", "/admin/keys")

    def readable(b: dict[str, Any]) -> list[str]:
        keys = [k for k in b.get("keys") or [] if args.org is None or k["org_id"] == args.org]
        return [f"{k['key_id']} {k['org_id']} created {k['created_at']}"
                + (f" revoked {k['revoked_at']}" if k.get("revoked_at") else "")
                + (f" {k['label']}" if k.get("label") else "") for k in keys] or ["no API keys"]
    show(args, answer, readable)
    return 0


def add_verbs(verb: Verb) -> None:
    create = verb("key-create", do_key_create, "propose a new API key for an organization (POST /admin/keys); "
                                               "the secret is made and shown here, only its hash is sent")
    create.add_argument("--org", required=True, help="organization id")
    create.add_argument("--label", help="what the key is for")
    revoke = verb("key-revoke", do_key_revoke, "revoke an API key at once (DELETE /admin/keys/ID); another operator "
                                               "countersigns it")
    revoke.add_argument("key_id", metavar="KEY_ID")
    for parser in (create, revoke):
        parser.add_argument("--reason", metavar="TEXT", help="why (recorded)")
        parser.add_argument("--reference", metavar="REF", help="ticket or order (recorded)")
    listing = verb("keys", do_keys, "the API keys, without their hashes (GET /admin/keys)")
    listing.add_argument("--org", help="only this organization's keys")
