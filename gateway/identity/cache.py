"""Tokens already verified, so a client reusing one skips the signature check.

Bounded (least recently used entries go first), keyed by the token's SHA-256,
so an entry costs the same whatever the token's size. An entry lives until the
token's `exp` + leeway, exactly as long as verifying afresh would accept it,
and the whole cache is dropped when the key set's revision changes: a key the
provider withdrew must stop vouching for tokens at once.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.identity.principal import Principal


class VerifiedTokens:
    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._revision = ""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, revision: str, now: float) -> Principal | None:
        self._follow(revision)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        principal, expires_at = entry
        if now >= expires_at:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return principal

    def put(self, digest: bytes, revision: str, principal: Principal, expires_at: float) -> None:
        self._follow(revision)
        self._entries[digest] = (principal, expires_at)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def _follow(self, revision: str) -> None:
        if revision != self._revision:
            self._entries.clear()
            self._revision = revision
