"""Recognising kernel splats (WARN, BUG, oops, soft lockup, lockdep) in kernel log text.

Used two ways: on the guest's serial console log after a run (``find_splats``)
and live, inside the guest, on /dev/kmsg (``KmsgWatch``) so a finding can be
tied to the program that caused it.
"""
from __future__ import annotations

import errno
import os
import re

# Splat headers are matched at the start of the message text only: boot-time
# notices such as "RETBleed: WARNING: Spectre v2 mitigation ..." carry the same
# words after a subsystem prefix and are not splats.
_MESSAGE_START = re.compile(
    r"^(?:<\d+>)?"                  # console level prefix, if printed
    r"(?:\[\s*\d+\.\d+\]\s*)?"      # printk timestamp
    r"(?:\[\s*[CT]\d+\]\s*)?"       # printk caller id (CONFIG_PRINTK_CALLER)
    r"(?:watchdog: )?"              # soft lockup reports come from the watchdog
    r"(?:WARNING: |BUG: |BUG [\w.:-]+ \(|kernel BUG at |Oops|general protection fault"
    r"|Kernel panic - not syncing|INFO: task .* blocked for more than|UBSAN: )"
)
# Phrases that are a splat wherever they appear in a line.
_ANYWHERE = re.compile(
    r"sleeping function called from invalid context|soft lockup - CPU#"
    r"|possible circular locking dependency|inconsistent lock state|possible recursive locking"
)


def is_splat(line: str) -> bool:
    """True if one kernel log line (console or /dev/kmsg message text) starts a splat."""
    return bool(_MESSAGE_START.search(line) or _ANYWHERE.search(line))


def find_splats(log: str) -> list[str]:
    """Every splat line in a console log, in order (stripped of carriage returns)."""
    return [line.strip("\r") for line in log.splitlines() if is_splat(line.strip("\r"))]


class KmsgWatch:
    """Non-blocking reader of /dev/kmsg that starts at the current end of the log.

    ``new_splats()`` returns the splat lines logged since the previous call.
    Records lost to ring-buffer overrun (EPIPE) are skipped, not reported.
    """

    def __init__(self, path: str = "/dev/kmsg") -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self._fd, 0, os.SEEK_END)

    def new_lines(self) -> list[str]:
        """Message text of every record logged since the last call."""
        lines = []
        while True:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                return lines
            except OSError as e:
                if e.errno == errno.EPIPE:  # overrun: the reader skips to the oldest record
                    continue
                raise
            if not record:
                return lines
            # A record is "prio,seq,usec,flags[,...];message\n" + continuation lines.
            _, _, text = record.decode(errors="replace").partition(";")
            lines.append(text.split("\n", 1)[0])

    def new_splats(self) -> list[str]:
        return [line for line in self.new_lines() if is_splat(line)]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> KmsgWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
