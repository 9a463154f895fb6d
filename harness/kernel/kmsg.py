"""Recognising kernel splats (WARN, BUG, oops, soft lockup, lockdep, KASAN, UBSAN) in kernel log text.

Used two ways: on the guest's serial console log after a run (``find_splats``,
``kernel_reports``) and live, inside the guest, on /dev/kmsg (``KmsgWatch``) so a
finding can be tied to the program that caused it.

A splat becomes a :class:`KernelReport`: its normalised title (offsets, line
numbers, addresses and task ids dropped, so one defect has one title), its top
frames (the call trace's first reliable frames below the reporting machinery:
KASAN's, UBSAN's, lockdep's, the WARN and might_sleep paths) and its whole text.
Title and frames are what a finding's signature groups by.
"""
from __future__ import annotations

import errno
import os
import re
import select
from typing import NamedTuple

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


# ---------------------------------------------------------------------------- reports

TOP_FRAMES = 3         # frames of a report's call trace its signature keeps
REPORT_LINES = 400     # a report is cut after this many lines (a flood must not fill a crash file)
_PREFIX = re.compile(r"^(?:<\d+>)?(?:\[\s*\d+\.\d+\]\s?)?(?:\[\s*[CT]\d+\]\s?)?")
# " ? func+0x1e/0x2a0 [module]": "?" marks a frame the unwinder is unsure of (skipped).
_FRAME = re.compile(r"^\s*(\? )?([\w.]+)\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[\w+\])?\s*$")
# Frames of the code that reports, not of the code that erred.
_MACHINERY = re.compile(
    r"^(?:dump_stack|show_stack|print_|kasan_|__kasan_|__asan_|asan_|check_memory_region|ubsan_|__ubsan_"
    r"|__might_|might_|__warn|warn_|report_bug|handle_bug|exc_invalid_op|asm_exc_|check_noncircular|check_prev"
    r"|validate_chain|__lock_acquire|lock_acquire|lock_release|__lock_release|__mutex_lock|mutex_lock|_raw_|__raw_"
    r"|down_|lockdep_|mark_lock|check_deadlock|check_irq_usage|panic|check_panic_on_warn|end_report"
    r"|__schedule_bug|schedule_debug|__bad_area|kernelmode_fixup|page_fault_oops|exc_page_fault|asm_exc_page)")
_TITLE_RULES = (
    # "WARNING: CPU: 0 PID: 231 at samples/vfio-mdev/mtty.c:1220 mtty_step_state+0x1e/0x2a0 [mtty]"
    (re.compile(r"^(?:------------\[ cut here \]------------\s*)?WARNING: CPU: \d+ PID: \d+ at \S+ ([\w.]+).*$"),
     r"WARNING in \1"),
    (re.compile(r"^watchdog: "), ""),
    (re.compile(r"\+0x[0-9a-f]+/0x[0-9a-f]+"), ""),               # function offsets
    # where the source tree was (UBSAN names files as the compiler saw them: absolute out of tree)
    (re.compile(r"(?<=\s)/\S*?/(?=(?:arch|block|crypto|drivers|fs|include|init|io_uring|ipc|kernel|lib|mm|net"
                r"|samples|security|sound|virt)/)"), ""),
    (re.compile(r"(\.[chS]):\d+(?::\d+)?"), r"\1"),                # line and column numbers
    (re.compile(r"\b(?:0x)?[0-9a-f]{12,16}\b"), "ADDR"),           # addresses
    (re.compile(r"\[\w[\w ./-]*:\d+\]$"), ""),                       # "[python3:231]" (soft lockup)
    (re.compile(r"task \S+:\d+"), "task"),                          # "INFO: task python3:231 blocked"
    (re.compile(r"CPU#\d+ stuck for \d+s!"), "CPU stuck"),
    (re.compile(r" \[#\d+\].*$"), ""),                                # oops counters and flags
)


class KernelReport(NamedTuple):
    """One kernel splat: what a ``kernel-splat`` finding carries and is grouped by."""

    title: str                 # normalised first line, e.g. "BUG: KASAN: slab-out-of-bounds in mtty_save_read"
    frames: tuple              # top call-trace functions below the reporting machinery
    text: str                  # the whole report as logged
    headline: str              # its first line as logged (without the printk prefix)

    @property
    def cause(self) -> str:
        """Title and top frames: the finding's ``cause`` (and so its signature)."""
        return f"{self.title}|{','.join(self.frames) or 'no-frames'}"


def strip_prefix(line: str) -> str:
    """A log line without its printk level, timestamp and caller id."""
    return _PREFIX.sub("", line.rstrip("\r"), count=1)


def report_title(headline: str) -> str:
    title = headline.strip()
    for pattern, replacement in _TITLE_RULES:
        title = pattern.sub(replacement, title)
    return title.strip()


def top_frames(lines: list[str], count: int = TOP_FRAMES) -> tuple:
    """The first `count` reliable frames of the first call trace in `lines` that are not the
    reporting machinery (gcc's ``.part.0``/``.isra.0`` suffixes dropped)."""
    frames: list[str] = []
    in_trace = False
    for line in lines:
        if not in_trace:
            in_trace = line.strip() == "Call Trace:"
            continue
        m = _FRAME.match(line)
        if m is None:
            if frames and line.strip() in ("</TASK>", "</IRQ>"):
                break
            continue
        name = m.group(2).split(".", 1)[0]
        if m.group(1) or _MACHINERY.match(name):
            continue
        frames.append(name)
        if len(frames) == count:
            break
    return tuple(frames)


# Reports the rig's kernel logs and goes on (panic_on_warn does not cover them): lockdep,
# might_sleep, hung tasks. A panic is blamed on the first report that is not one of these.
_NON_FATAL = re.compile(r"possible circular locking|inconsistent lock state|possible recursive locking"
                        r"|sleeping function called from invalid context|blocked for more than|suspicious RCU usage")


# What still ends a guest booted with panic_on_warn=0 kasan_multi_shot: an oops (its KASAN
# null-ptr-deref or general protection fault line comes first), a BUG, a kernel panic of its own.
_OOPS = re.compile(r"^(BUG|Oops|general protection fault|KASAN: (null-ptr-deref|wild-memory-access)|"
                   r"unable to handle)")


OOPS_FOLLOWS = 8  # lines between an oops' first line and its "Oops:" line


def first_fatal(reports: list[KernelReport], warnings_panic: bool = True) -> int:
    """Index of the report that ended a guest, 0 if none is: with panic_on_warn (``warnings_panic``)
    the first one it acts on; without it, WARN, UBSAN and multi-shot KASAN reports let the guest
    run on, and the oops that ended it is the last report of that kind."""
    first = next((i for i, r in enumerate(reports) if not _NON_FATAL.search(r.title)), 0)
    if warnings_panic:
        return first
    return next((i for i in range(len(reports) - 1, -1, -1) if _OOPS.search(reports[i].title)), first)


def kernel_reports(lines: list[str]) -> list[KernelReport]:
    """The splats in log lines (console or /dev/kmsg), in order: each from its splat line up to the
    next splat line or the end (at most REPORT_LINES lines)."""
    text = [strip_prefix(line) for line in lines]
    starts = [i for i, line in enumerate(text) if is_splat(line)]
    # "BUG: kernel NULL pointer dereference" (or a KASAN line), a few lines later "Oops: 0000 [#1]"
    # and the call trace: one report, titled by the first line, its frames from the trace
    starts = [i for n, i in enumerate(starts)
              if not (n and text[i].startswith("Oops") and i - starts[n - 1] <= OOPS_FOLLOWS
                      and _OOPS.search(text[starts[n - 1]]))]
    reports = []
    for n, start in enumerate(starts):
        end = min(starts[n + 1] if n + 1 < len(starts) else len(text), start + REPORT_LINES)
        body = text[start:end]
        reports.append(KernelReport(report_title(body[0]), top_frames(body[1:]), "\n".join(body), body[0].strip()))
    return reports


class KmsgWatch:
    """Non-blocking reader of /dev/kmsg that starts at the current end of the log.

    ``new_splats()`` returns the splat lines logged since the previous call.
    Records lost to ring-buffer overrun (EPIPE) are skipped, not reported.
    """

    def __init__(self, path: str = "/dev/kmsg") -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self._fd, 0, os.SEEK_END)
        self._ready = select.poll()
        self._ready.register(self._fd, select.POLLIN)

    def new_lines(self) -> list[str]:
        """Message text of every record logged since the last call."""
        lines = []
        # Asked after every program, and nearly always nothing is new: a poll answers that without
        # the read's BlockingIOError (18 us against 69 us a call, measured in the TCG guest).
        if not self._ready.poll(0):
            return lines
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

    def new_reports(self) -> list[KernelReport]:
        """The splats logged since the last call, each with the lines that followed it."""
        return kernel_reports(self.new_lines())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> KmsgWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
