"""The audit trail (SPEC §5): exactly one record per request, hash-chained, in a
rotating local JSONL file and, in fleet mode, also in a capped Redis Stream.

- `chain`: the record format (canonical JSON, `seal`) and the local file, `AuditFile`.
- `stream`: the fleet-wide copy, `AuditStream`, with its disk `Spool`.
- `log`: `AuditLog`, what the gateway uses: the queue, the writer task, health.
- `verification`: `verify()`, `verify_lines()` and `render()` (`gateway audit verify`).
"""

from gateway.audit.chain import ZERO_HASH, AuditFile, lines_backwards, canonical, seal
from gateway.audit.log import AuditLog
from gateway.audit.verification import render, verify, verify_lines

__all__ = [
    "ZERO_HASH",
    "AuditFile",
    "AuditLog",
    "lines_backwards",
    "canonical",
    "render",
    "seal",
    "verify",
    "verify_lines",
]
