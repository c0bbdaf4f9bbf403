"""How the audit trail's files are created: mode 0600, or 0640 and the group
`audit.group` (a log shipper's) when one is configured. The change log, the spools
and `checkpoints.jsonl` are created the same way. A file that already exists keeps
its mode (an operator may have chosen it); a warning says when others can read it.
"""

from __future__ import annotations

import grp
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gateway.audit")


@dataclass(frozen=True)
class FileMode:
    mode: int = 0o600
    gid: int | None = None  # the group given read access, if any

    @classmethod
    def for_group(cls, group: str | None) -> FileMode:
        """0600, or 0640 with `group` (a name or a numeric id). Raises ValueError for an unknown group."""
        if group is None:
            return cls()
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"audit.group: no group {group!r} on this host") from None
        return cls(0o640, gid)

    def open(self, path: str | Path, flags: int) -> int:
        """os.open with O_CREAT: a new file gets this mode (whatever the umask) and group."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, self.mode)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return fd
            if info.st_size == 0 and stat.S_IMODE(info.st_mode) != self.mode:
                os.fchmod(fd, self.mode)  # new (or empty): the umask may have taken bits we want, or left some
            if self.gid is not None and info.st_gid != self.gid and info.st_size == 0:
                os.fchown(fd, -1, self.gid)
            elif stat.S_IMODE(info.st_mode) & 0o007:
                log.warning("%s is readable or writable by any user (mode %o): audit files should be 0600, "
                            "or 0640 with audit.group", path, stat.S_IMODE(info.st_mode))
        except BaseException:
            os.close(fd)
            raise
        return fd


def sync_directory(path: str | Path) -> None:
    """Make a file's creation or rename durable: fsync its directory."""
    fd = os.open(Path(path).parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
