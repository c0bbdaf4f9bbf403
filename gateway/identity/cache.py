"""Tokens already verified, so a client reusing one skips the signature check.

Keyed by the token itself: a dict lookup hashes it at a fraction of what a SHA-256
costs, and only tokens whose signature was verified get in, so no one can fill it
with tokens of their own making. Bounded in entries and in the tokens' total size
(least recently used entries go first). An entry lives until the token's `exp` +
leeway, exactly as long as verifying afresh would accept it, and the whole cache is
dropped when the key set's revision changes: a key the provider withdrew must stop
vouching for tokens at once.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.identity.principal import Principal

# Tokens of ~1 KiB (an RS256 JWT with a few claims) fill the entries first; 8 KiB ones this.
MAX_CHARS = 16 * 1024 * 1024


class VerifiedTokens:
    def __init__(self, capacity: int = 10_000, max_chars: int = MAX_CHARS) -> None:
        self.capacity = capacity
        self.max_chars = max_chars
        self._entries: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._chars = 0  # the keys' total length
        self._revision = ""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, revision: str, now: float) -> Principal | None:
        if revision != self._revision:
            self._follow(revision)
        entry = self._entries.get(token)
        if entry is None:
            return None
        principal, expires_at = entry
        if now >= expires_at:
            self._drop(token)
            return None
        self._entries.move_to_end(token)
        return principal

    def put(self, token: str, revision: str, principal: Principal, expires_at: float) -> None:
        self._follow(revision)
        if token in self._entries:
            self._drop(token)
        self._entries[token] = (principal, expires_at)
        self._chars += len(token)
        while len(self._entries) > self.capacity or self._chars > self.max_chars:
            self._drop(next(iter(self._entries)))

    def _drop(self, token: str) -> None:
        del self._entries[token]
        self._chars -= len(token)

    def _follow(self, revision: str) -> None:
        if revision != self._revision:
            self._entries.clear()
            self._chars = 0
            self._revision = revision
