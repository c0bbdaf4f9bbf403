"""The audit trail (docs/audit.md): exactly one record per request, hash-chained, in a
rotating local JSONL file and, in fleet mode, also in a capped Redis Stream; the
requests never authenticated in a file and stream of their own (`AuditLogs`).

- `canonical`: the canonical JSON a record's hash covers.
- `chain`: the record format (`seal`) and the local file, `AuditFile`.
- `stream`: the fleet-wide copy, `AuditStream`, with its disk `Spool`.
- `log`: `AuditLog`, one log: the queue, the writer task, health; `AuditLogs`, what the
  gateway uses: the authenticated requests' log and the unauthenticated ones' log.
- `bounds`: `bounded()`, the size limits of one record (applied by `seal`).
- `verification`: `verify()`, `verify_lines()` and `render()` (`gateway audit verify`).
- `signing`, `checkpoints`, `evidence`: Ed25519 keys, the signed checkpoint records and
  their outside copies, and what `verify` checks with a public key and those copies.
- `files`: the mode (0600, 0640 with audit.group) every audit file is created with.
"""

from gateway.audit.canonical import canonical
from gateway.audit.chain import ZERO_HASH, AuditFile, lines_backwards, seal
from gateway.audit.log import AuditLog, AuditLogs, unauthenticated_path
from gateway.audit.verification import render, verify, verify_change_log, verify_lines

__all__ = [
    "ZERO_HASH",
    "AuditFile",
    "AuditLog",
    "AuditLogs",
    "lines_backwards",
    "canonical",
    "render",
    "seal",
    "unauthenticated_path",
    "verify",
    "verify_change_log",
    "verify_lines",
]
