"""The closed vocabulary of decision reasons (docs/policy.md, "Reasons and their precedence").

One list, used identically in responses, audit records, `explain` and metric
labels. The order of `PRECEDENCE` is the contract: a decision reports every
reason that applies, most important first, and takes its HTTP status from the
first one.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    CREDENTIAL_MISSING = "credential_missing"
    CREDENTIAL_INVALID = "credential_invalid"
    ORG_UNKNOWN = "org_unknown"
    ORG_DENIED = "org_denied"
    ORG_SUSPENDED = "org_suspended"
    MODEL_UNKNOWN = "model_unknown"
    MODEL_NOT_RELEASED = "model_not_released"
    TIER_NOT_PERMITTED = "tier_not_permitted"
    JURISDICTION_EMBARGOED = "jurisdiction_embargoed"
    EXPORT_SUSPENDED = "export_suspended"
    JURISDICTION_OF_CONCERN = "jurisdiction_of_concern"
    ANONYMIZER = "anonymizer"
    JURISDICTION_UNKNOWN = "jurisdiction_unknown"
    JURISDICTION_NOT_PERMITTED = "jurisdiction_not_permitted"
    RATE_LIMITED = "rate_limited"
    STATE_UNAVAILABLE = "state_unavailable"


# (reason, status) in precedence order. `tier_not_permitted` appears twice: it
# outranks jurisdiction (404) while a pre-GA stage is concealed, so that a caller
# who may not know the model exists learns nothing else about it; otherwise it
# ranks after jurisdiction as a plain 403.
_CONCEALED_TIER = "tier_not_permitted/concealed"
PRECEDENCE: tuple[tuple[str, int], ...] = (
    (Reason.CREDENTIAL_MISSING, 401),
    (Reason.CREDENTIAL_INVALID, 401),
    (Reason.ORG_UNKNOWN, 403),
    (Reason.ORG_DENIED, 403),
    (Reason.ORG_SUSPENDED, 403),
    (Reason.MODEL_UNKNOWN, 404),
    (Reason.MODEL_NOT_RELEASED, 404),
    (_CONCEALED_TIER, 404),
    (Reason.JURISDICTION_EMBARGOED, 451),
    (Reason.EXPORT_SUSPENDED, 451),
    (Reason.JURISDICTION_OF_CONCERN, 451),
    (Reason.ANONYMIZER, 451),
    (Reason.JURISDICTION_UNKNOWN, 451),
    (Reason.JURISDICTION_NOT_PERMITTED, 451),
    (Reason.TIER_NOT_PERMITTED, 403),
    (Reason.RATE_LIMITED, 429),
    (Reason.STATE_UNAVAILABLE, 503),
)

_RANK = {name: rank for rank, (name, _) in enumerate(PRECEDENCE)}
_STATUS = dict(PRECEDENCE)


def order(reasons: set[Reason], *, concealed: bool = False) -> tuple[Reason, ...]:
    """Sort reasons by precedence; `concealed` moves tier_not_permitted up."""

    def rank(reason: Reason) -> int:
        if concealed and reason is Reason.TIER_NOT_PERMITTED:
            return _RANK[_CONCEALED_TIER]
        return _RANK[reason]

    return tuple(sorted(reasons, key=rank))


def status_of(first: Reason, *, concealed: bool = False) -> int:
    if concealed and first is Reason.TIER_NOT_PERMITTED:
        return _STATUS[_CONCEALED_TIER]
    return _STATUS[first]
