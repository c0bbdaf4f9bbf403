"""API keys through the admin API (issue 14): creating one is a loosening, revoking one a
tightening, whatever the policy says, since a key is access in itself.

A key is created from the SHA-256 of its secret, never from the secret: the requester
(`gateway admin key-create` does it for them) draws the secret on their own machine,
sends its hash with the proposal and keeps the secret. So the secret is never sent,
never stored by the gateway or in Redis, never seen by the approvers, and there is no
window in which a generated secret waits somewhere to be collected. The key works once
the proposal is approved. Its id is drawn when it is proposed, so the id reviewed is
the id it gets.

Both changes write the key store (`ApiKeyAdmin`, blocking: run in a thread) and then
the change log, which records the hash, never a secret.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from gateway.identity.apikeys import ApiKeyAdmin, ApiKeyStoreError, _new_key_id, check_new_key
from gateway.live.overlay import ChangeError
from gateway.live.state import Prepared
from gateway.policy.snapshot import Policy

CREATE, REVOKE = "apikey.create", "apikey.revoke"


def request_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """A POST /admin/keys body as the change keeps it: org_id, sha256, label, key_id."""
    request = {name: body.get(name) for name in ("org_id", "sha256", "label", "key_id")}
    try:
        check_new_key(request["org_id"], request["label"], request["sha256"] or "", request["key_id"])
    except ValueError as refused:
        raise ChangeError([str(refused)]) from None
    return request


async def prepare_create(keys: ApiKeyAdmin | None, policy: Policy, body: Mapping[str, Any]) -> Prepared:
    store = _required(keys)
    request = request_of(body)
    if request["org_id"] not in policy.organizations:
        raise ChangeError([f"org_id: no organization {request['org_id']!r} in the policy in force"], status=404)
    known = await _list(store)
    if request["key_id"] is None:
        request["key_id"] = _new_key_id({key.key_id for key in known})
    elif any(key.key_id == request["key_id"] for key in known):
        raise ChangeError([f"key_id: {request['key_id']} exists"], status=409)

    async def create() -> Mapping[str, Any]:
        try:
            await asyncio.to_thread(store.register, request["org_id"], request["sha256"], request["label"],
                                    request["key_id"])
        except ValueError as refused:
            raise ChangeError([str(refused)], status=409) from None
        return {"key_id": request["key_id"], "org_id": request["org_id"]}

    change = {"action": CREATE, "target": request["key_id"], "before": None,
              "after": {k: request[k] for k in ("org_id", "label", "sha256")}}
    return Prepared(change, policy, answer={"key_id": request["key_id"]}, effect=create)


async def prepare_revoke(keys: ApiKeyAdmin | None, policy: Policy, key_id: str) -> Prepared:
    store = _required(keys)
    found = next((key for key in await _list(store) if key.key_id == key_id), None)
    if found is None or found.revoked_at is not None:
        raise ChangeError([f"no API key {key_id!r} is in force"], status=404)

    async def revoke() -> Mapping[str, Any]:
        await asyncio.to_thread(store.revoke, key_id)
        return {"key_id": key_id, "revoked": True}

    change = {"action": REVOKE, "target": key_id, "before": {"org_id": found.org_id, "label": found.label},
              "after": None}
    return Prepared(change, policy, answer={"key_id": key_id}, effect=revoke)


def _required(keys: ApiKeyAdmin | None) -> ApiKeyAdmin:
    if keys is None:
        raise ChangeError(["API keys are disabled here (identity.api_keys: false)"], status=404)
    return keys


async def _list(store: ApiKeyAdmin) -> list[Any]:
    try:
        return await asyncio.to_thread(store.list)
    except ApiKeyStoreError as failure:
        raise ChangeError([str(failure)], status=503) from None
