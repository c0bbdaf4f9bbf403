"""Who is calling (docs/configuration.md, `identity`), and the one error identity raises.

A `CredentialError` carries one of the decision core's reason codes and a detail
for logs and audit. The detail is never shown to the caller: telling a client
*why* its token failed (wrong `kid`, expired, bad audience) helps an attacker
more than an honest client.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.policy.reasons import Reason


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str  # JWT `sub`, or "apikey:<key id>"
    org_id: str  # the JWT's org claim, or the API key's org
    credential_id: str  # "jwt:<jti or token hash>", or the API key's id
    kind: str  # "jwt" or "api_key"


class CredentialError(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def missing(detail: str) -> CredentialError:
    return CredentialError(Reason.CREDENTIAL_MISSING, detail)


def invalid(detail: str) -> CredentialError:
    return CredentialError(Reason.CREDENTIAL_INVALID, detail)
