"""What a finding is: its kinds (one table), its claim as data, and its signature.

:data:`KINDS` is the one table of finding kinds: the name, what it means (SARIF, JUnit, HTML
and the README read it from here) and the checks that can show it. A :class:`Finding`
carries its claim as a value, :class:`Check`: a test from ``harness.runtime.CHECKS``
evaluated on the device's answer at the finding step. The reproducers evaluate it; the
``expected``/``observed`` strings are only its rendering for people, and nothing decides
anything by reading them.

:func:`signature` is the dedup key every tool uses (engine, triage, reports).
"""
from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from harness.runtime import CHECKS


class Check(NamedTuple):
    """The claim of a finding: ``test`` (a key of ``harness.runtime.CHECKS``) on the answer of the
    finding step, with its argument; ``test`` None when user space cannot tell (the simulator's
    digest, the driver's open files)."""

    test: str | None = None
    arg: object = None

    def data(self) -> list:
        return [self.test, list(self.arg) if isinstance(self.arg, (tuple, frozenset, set)) else self.arg]

    @classmethod
    def from_data(cls, data) -> Check:
        if not data:
            return cls()
        test, arg = data
        if test is not None and test not in CHECKS:
            raise ValueError(f"unknown check {test!r}")
        return cls(test, tuple(arg) if isinstance(arg, list) else arg)


UNCHECKABLE = Check()


class Kind(NamedTuple):
    name: str
    description: str
    checks: tuple  # the Check tests a finding of this kind may carry (None: not checkable from user space)


KINDS = (
    Kind("accepted-invalid", "an invalid state, value, arc or request accepted, or a read-only field "
                             "that took a write", ("ok", "value_nonzero", "value_changed")),
    Kind("rejected-valid", "a valid arc or request refused", ("failed", "get_failed")),
    Kind("bad-state-after-failure", "after a failed request, a state the protocol forbids", ("state_not_in", None)),
    Kind("state-mismatch", "the state read back is not the one the protocol says",
         ("state_not", "get_failed", "state_unknown")),
    Kind("fd-misuse-accepted", "a data_fd used wrongly (after its session ended or a reset, wrong direction, "
                               "seek) and it worked", ("ok",)),
    Kind("fd-mismatch", "a data_fd returned when none is due, or none when one is due", ("fd", "no_fd")),
    Kind("stream-protocol", "stream framing rules broken: ENOMSG in STOP_COPY, data after the end of the stream, "
                            "pre-copy sizes under-reported, a write that makes no progress, v1 pending_bytes "
                            "growing while stopped",
         ("errno", "longer_than", "data_after_end", "precopy_overrun", "initial_grew", "stalled", "pending_grew")),
    Kind("valid-stream-rejected", "a complete, untouched stream refused on resume", ("failed",)),
    Kind("resume-corrupted", "the state after a resume differs from the source's state", (None,)),
    Kind("damaged-stream-accepted", "a truncated, extended, flipped or reordered stream loaded", ("ok",)),
    Kind("state-changed-while-stopped", "the device's state changed while it was not running", (None,)),
    Kind("info-leak", "the device handed out a kernel address, or data-out bytes that never entered it "
                      "(uninitialized or out-of-bounds memory)", ("kernel_address", "not_entered")),
    Kind("out-of-bounds", "a register access past the end of its region (the size VFIO_DEVICE_GET_REGION_INFO "
                          "reports; 0: not implemented) succeeded: the driver read or wrote memory it does not own",
         ("ok",)),
    Kind("resource-leak", "the driver still holds a migration file it must have released", (None,)),
    Kind("region-layout", "v1: the data window lies outside the migration region", ("window_outside",)),
    Kind("hang", "a call that never returns, or a stream that never ends", ("hang",)),
    Kind("target-exception", "an exception escaped from the target (a simulator or harness defect)",
         ("exception",)),
    Kind("race-not-serializable", "two calls made at once gave answers, or left a state (in a simulator: the files "
                                  "its driver holds), that no serial order of the two gives",
         ("race_outcome_not_in", None)),
    Kind("kernel-splat", "the kernel logged a WARN, BUG, oops or lockup report while the program ran "
                         "(real devices)", (None,)),
)
FINDING_KINDS = tuple(k.name for k in KINDS)
DESCRIPTIONS = {k.name: k.description for k in KINDS}
# A finding made at a race step may be of any kind (one call's answer wrong on its own), but its claim
# is on the race's answer, which the reproducers replay as one step: its outcome where that fits no
# serial order of the two calls, else nothing they can check (fuzz.oracles.Oracle.on_race).
RACE_CHECKS = ("race_outcome_not_in", None)
KIND_CHECKS = {k.name: tuple(dict.fromkeys(k.checks + RACE_CHECKS)) for k in KINDS}


class Finding(NamedTuple):
    kind: str
    step: int  # index of the op in the program
    expected: str  # rendering of the claim, for people
    observed: str
    arc: str  # protocol arc, e.g. "STOP_COPY -set-> PRE_COPY"
    op: str = ""  # the op as text (filled in by the executor)
    detail: str = ""  # traceback of a target exception, whole kernel report of a splat
    check: Check = UNCHECKABLE  # the claim, as data
    cause: str = ""  # the defect whatever op showed it (e.g. a data_fd used "after reset"), if the oracle knows

    def data(self) -> dict:
        """The finding as JSON-ready data (the crash-file header and the reports carry this)."""
        out = {"kind": self.kind, "step": self.step, "op": self.op, "arc": self.arc, "expected": self.expected,
               "observed": self.observed, "check": self.check.data(), "detail": self.detail}
        if self.cause:
            out["cause"] = self.cause
        return out

    @classmethod
    def from_data(cls, data: dict) -> Finding:
        return cls(str(data["kind"]), int(data["step"]), str(data.get("expected", "")),
                   str(data.get("observed", "")), str(data.get("arc", "")), str(data.get("op", "")),
                   str(data.get("detail", "")), Check.from_data(data.get("check")), str(data.get("cause", "")))


# ----------------------------------------------------------------------------- signatures

HARNESS_FRAMES = 3  # innermost frames inside harness/ that a target-exception signature keeps
_FRAME_RE = re.compile(r'^\s*File "([^"]+)", line \d+, in (\S+)', re.M)


def harness_frames(detail: str, count: int = HARNESS_FRAMES) -> list[str]:
    """The innermost ``count`` traceback frames inside ``harness/`` as 'harness/x.py:function'."""
    frames = []
    for path, func in _FRAME_RE.findall(detail or ""):
        norm = path.replace("\\", "/")
        at = norm.rfind("/harness/")
        if at >= 0:
            rel = norm[at + 1:]
        elif norm.startswith("harness/"):
            rel = norm
        else:
            continue
        frames.append(f"{rel}:{func}")
    return frames[-count:] if count else []


def coarse_arc(arc: str) -> str:
    """The arc without the state it started from ('STOP -set-> ERROR' -> '-set-> ERROR')."""
    at = arc.find(" -")
    return arc[at + 1:] if at >= 0 else arc


def op_name(finding: Finding) -> str:
    """The name of the op the finding happened at ('set', 'read', ...)."""
    return (finding.op or "").split(" ", 1)[0] or "?"


def signature(finding: Finding, coarse: bool = False) -> str:
    """The dedup key of a finding: kind|arc|op[|frames].

    The op is its name only (arguments vary between crashes of one defect); a target
    exception adds its innermost harness frames (file:function, no line numbers, so edits
    elsewhere in a file keep the signature). ``coarse`` drops the state the arc started
    from, so one defect reachable from several states is one signature; where the oracle
    named the finding's cause (a data_fd used after reset, whichever call used it), the
    coarse signature is kind|cause: one defect, one signature. A kernel report's cause is its
    title and top frames (``harness.kernel.kmsg.KernelReport.cause``): the kernel stack names the
    defect whatever op the report followed, so both signatures are kind|cause."""
    if finding.cause and (coarse or finding.kind == "kernel-splat"):
        return f"{finding.kind}|{finding.cause}"
    parts = [finding.kind, coarse_arc(finding.arc) if coarse else finding.arc, op_name(finding)]
    if finding.kind == "target-exception":
        parts.append(",".join(harness_frames(finding.detail)) or "no-harness-frame")
    return "|".join(parts)


def short_hash(sig: str) -> str:
    return hashlib.sha1(sig.encode()).hexdigest()[:8]
