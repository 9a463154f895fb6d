"""Reproducers a driver developer can run without migfuzz, and a regression test: ``migfuzz export``.

``migfuzz export FILE --python OUT.py --c OUT.c --pytest OUT.py [--standalone] [--minimize]``

* ``--python``, kernel finding (or ``--standalone``): a stand-alone Python 3 script (standard
  library only) = a banner, ``harness/runtime.py`` verbatim (the device runtime the fuzzer
  itself uses), then generated data: the layouts (``ABI_SPEC``, from ``harness.uapi``), the
  program (``PROGRAM``) and the finding's claim (``CLAIM``), and a call of its ``main``.
* ``--python``, simulator finding: a short script that replays the program on migfuzz's
  simulator (:func:`replay_recorded`; migfuzz must be installed).
* ``--c``: one C file = a banner, the generated part (:func:`c_header`: ioctl numbers of both
  ``_IOC`` families, ``_Static_assert``-checked structs, constants, the program as a table of
  ops, the claim as a check code), then ``harness/runtime.c`` verbatim. Builds with
  ``cc -Wall -Werror``. A program with an op the C runtime cannot run is refused with a reason.
* ``--pytest``: a regression test calling :func:`assert_no_finding`: it fails while the defect
  is there and keeps it fixed afterwards.

The claim a reproducer checks is the finding's :class:`~fuzz.findings.Check`, from a replay on
the simulator or from the crash file's ``# migfuzz-data:`` line; the ``expected``/``observed``
texts are only shown. A crash file recorded on a real device is never replayed here.

Exit codes of the reproducers are ``harness.runtime``'s: 1 the defect showed up, 0 it did not,
2 usage, 3 the device cannot be opened, 4 inconclusive (not checkable from user space, or a
different problem showed up).
"""
from __future__ import annotations

import os
import pprint
import re
import sys
from importlib import resources
from pathlib import Path

from construct import FormatField, Struct

from harness import runtime, uapi
from harness.base import TargetError, TargetUnavailable

from . import crashfile
from .errors import UsageError
from .findings import Finding, short_hash, signature
from .minimize import minimize_program
from .program import (
    F_RACE,
    FAULT_KINDS,
    OPS,
    SIZES,
    Program,
    applies,
    field_value,
    format_op,
    parse_program,
    signed,
)
from .targets import open_target, parse_target
from .triage import format_trace, replay

# ----------------------------------------------------------------------------- what is exported


class Export:
    """A program, the finding it shows (or None) with its claim, the target it was found on."""

    def __init__(self, program: Program, finding: Finding | None, target: str, sig: str = ""):
        self.program = program
        self.finding = finding
        self.target = target
        self.signature = sig or (signature(finding) if finding is not None else "")


def load_for_export(path: Path, target_text: str | None = None) -> Export:
    """The program in ``path`` and its finding.

    A simulator target is replayed (the finding is what happens now); a real device is never
    opened here: the finding is the one the file records (``# migfuzz-data:``)."""
    meta = crashfile.read_meta(path)
    ttext = target_text or meta.target or "sim"
    spec = parse_target(ttext)
    if spec.kind != "sim":
        prog, meta = crashfile.read_program(path)
        finding = meta.finding
        if finding is not None and not 0 <= finding.step < len(prog.ops):
            raise UsageError(f"{path}: the recorded finding is at step {finding.step}; the program has "
                             f"{len(prog.ops)} ops")
        return Export(prog, finding, ttext, meta.signature if finding is not None else "")
    target = open_target(spec)
    try:
        prog, _meta = crashfile.read_program(path, target.proto)
        finding, _trace = replay(target, prog, trace=False)
    finally:
        close_target(target)
    return Export(prog, finding, spec.text())


def minimized(ex: Export) -> Export:
    """``ex`` with its program minimized on the simulator (same signature)."""
    spec = parse_target(ex.target)
    if spec.kind != "sim":
        raise UsageError(f"--minimize replays the program again and again: simulator targets only ({ex.target} "
                         "is a real device; see `migfuzz minimize`)")
    if ex.finding is None:
        return ex
    target = open_target(spec)
    try:
        res = minimize_program(target, ex.program, want=ex.signature)
    finally:
        close_target(target)
    if res is None or res.finding is None:
        return ex
    return Export(res.program, res.finding, ex.target, res.signature)


def close_target(target) -> None:
    """Close a target after a replay. A simulator is first brought back to its power-on state:
    a defect may have left it holding something that is no file (v2-errptr-on-alloc-failure),
    which its close would trip over after the finding was already made."""
    if getattr(target, "kind", "") == "sim":
        target.fresh()
    target.close()


def devices_used(prog: Program) -> int:
    """How many devices the program names (as the op's device or a transfer's destination)."""
    used = 1
    for op in prog.ops:
        used = max(used, op.dev + 1)
        if OPS[prog.proto][op.code].name == "transfer":
            used = max(used, op.a + 1)
    return used


def op_args(proto: str, op) -> dict:
    """An op's arguments by the field names of ``fuzz.program.OPS`` (names for fault kinds,
    mangle kinds and v1 fields, bytes for payloads): what ``harness.runtime.Replay`` takes. A field
    not in use (a mangle's arg when it changes a field) is left out."""
    out = {}
    fields = OPS[proto][op.code].fields
    for f in fields:
        if f.when and not applies(fields, f, op):
            continue
        value = field_value(f, op)
        if f.kind == "size":
            value = SIZES[value]
        elif f.kind == "fault":
            value = FAULT_KINDS[value]
        elif f.kind == "mangle":
            value = runtime.MANGLE_KINDS[value]
        elif f.kind == "fix":
            value = runtime.FIX_KINDS[value]
        elif f.kind == "race":
            value = runtime.RACE_CALLS[value]
        elif f.kind == "signed":
            value = signed(value, f.limit)
        elif f.kind == "v1field":
            value = uapi.V1_FIELD_NAMES[value]
        elif f.kind == "bytes":
            value = bytes(value)
        out[f.name] = value
    return out


def banner(ex: Export) -> list[str]:
    """What every reproducer says about its finding, one line each."""
    f = ex.finding
    lines = []
    if f is not None:
        lines += [
            f"finding:   {f.kind} at step {f.step} ({f.op})",
            f"arc:       {f.arc}",
            f"expected:  {f.expected}",
            f"observed:  {f.observed}",
            f"claim:     {crashfile.claim_text(f)}",
            f"signature: {ex.signature}",
        ]
    lines += [f"found on:  {ex.target}", f"program:   {len(ex.program.ops)} ops, protocol {ex.program.proto}"]
    return lines


def _program_lines(prog: Program, indent: str) -> list[str]:
    return [indent + line for line in prog.text().splitlines()]


def _docstring(lines: list[str]) -> str:
    text = "\n".join(lines).replace("\\", "\\\\").replace('"""', "'''")
    return '"""' + text + '\n"""'


def _text_literal(text: str) -> str:
    """A program text as a readable triple-quoted literal (repr if it cannot be one)."""
    if "\\" in text or '"""' in text or text.endswith('"'):
        return repr(text)
    return '"""\\\n' + text + '"""'


def runtime_source(name: str) -> str:
    """``harness/runtime.py`` or ``harness/runtime.c`` (package data of ``harness``)."""
    return (resources.files("harness") / name).read_text()


# ----------------------------------------------------------------------------- Python: stand-alone


EXIT_LINE = (f"exit: {runtime.EXIT_FINDING} reproduced, {runtime.EXIT_OK} not reproduced, {runtime.EXIT_USAGE} "
             f"usage, {runtime.EXIT_UNAVAILABLE} a device cannot be opened, {runtime.EXIT_INCONCLUSIVE} "
             "inconclusive (not checkable from user space, or a different problem)")


def claim_data(finding: Finding) -> dict:
    """The finding as ``harness.runtime.replay`` takes it (check [None, None]: not checkable)."""
    return {"kind": finding.kind, "step": finding.step, "op": finding.op, "arc": finding.arc,
            "expected": finding.expected, "observed": finding.observed, "check": finding.check.data()}


def replayed(ex: Export) -> Program:
    """What a reproducer replays: the program up to the finding's step (nothing after it runs)."""
    return Program(ex.program.proto, ex.program.ops[:ex.finding.step + 1])


def program_data(prog: Program) -> dict:
    """The program as ``harness.runtime.replay`` takes it."""
    return {"proto": prog.proto, "devices": devices_used(prog),
            "ops": [(OPS[prog.proto][op.code].name, op.dev, op_args(prog.proto, op), format_op(prog.proto, op))
                    for op in prog.ops]}


def _assign(name: str, value) -> str:
    """``NAME = value`` with the value pretty-printed, continuation lines under its first."""
    prefix = f"{name} = "
    lines = pprint.pformat(value, width=110 - len(prefix), sort_dicts=False).splitlines()
    return prefix + ("\n" + " " * len(prefix)).join(lines)


def python_standalone(ex: Export) -> str:
    """A Python 3 script (standard library only) replaying the program on real VFIO devices."""
    two = devices_used(replayed(ex)) > 1
    doc = [
        "migfuzz reproducer (stand-alone: Python 3 standard library, real VFIO devices).",
        "",
        *banner(ex),
        "",
        "usage:",
        "    sudo python3 THIS.py GROUP DEVICE" + (" GROUP2 DEVICE2" if two else ""),
        "    sudo python3 THIS.py --cdev vfioN" + (" --cdev vfioM" if two else ""),
        "GROUP is the IOMMU group number (/dev/vfio/GROUP), DEVICE the mdev UUID or PCI address",
        "(legacy group/container API); --cdev opens /dev/vfio/devices/vfioN through iommufd.",
        "--timeout SECONDS: how long a call may take before it counts as hung (default 10).",
        "Each device is reset when it is opened and before it is released.",
        EXIT_LINE,
        "",
        "program:",
        *_program_lines(ex.program, "    "),
    ]
    data = [
        "",
        "",
        "# " + "-" * 77 + " generated by `migfuzz export --python`",
        "",
        _assign("ABI_SPEC", uapi.runtime_abi()),
        "",
        _assign("PROGRAM", program_data(replayed(ex))),
        "",
        _assign("CLAIM", claim_data(ex.finding)),
        "",
        "",
        'if __name__ == "__main__":',
        "    sys.exit(main(ABI_SPEC, PROGRAM, CLAIM))",
        "",
    ]
    return "#!/usr/bin/env python3\n" + _docstring(doc) + "\n" + runtime_source("runtime.py").rstrip("\n") \
        + "\n".join(data)


# ----------------------------------------------------------------------------- Python: the simulator

SIM_SCRIPT = '''
import sys

PROGRAM = {program}
TARGET = {target!r}
SIGNATURE = {signature!r}  # the finding's, without the state its arc started from


def main():
    try:
        from fuzz.export import replay_recorded
    except ImportError as e:
        missing = e.name or str(e)
        if missing.split(".")[0] == "fuzz":
            print("migfuzz is not installed (no module %s): pip install vfio-migfuzz" % missing, file=sys.stderr)
        else:
            print("migfuzz cannot be imported: it needs the module %s (%s)" % (missing, e), file=sys.stderr)
        return {usage}
    return replay_recorded(PROGRAM, TARGET, SIGNATURE)


if __name__ == "__main__":
    sys.exit(main())
'''


def python_sim(ex: Export) -> str:
    """A short script replaying the program on migfuzz's simulator (migfuzz must be installed)."""
    doc = [
        "migfuzz reproducer for a finding on the simulator.",
        "",
        *banner(ex),
        "",
        "The simulated device lives in migfuzz: this script needs it installed (pip install vfio-migfuzz)",
        "and replays the program with fuzz.export.replay_recorded, printing every answer.",
        "usage: python3 THIS.py",
        f"exit: {runtime.EXIT_FINDING} the same finding (signature without the state its arc started from), "
        f"{runtime.EXIT_OK} no finding,",
        f"      {runtime.EXIT_INCONCLUSIVE} a different finding, {runtime.EXIT_USAGE} migfuzz missing or a bad target, "
        f"{runtime.EXIT_UNAVAILABLE} target unavailable",
        "",
        "program:",
        *_program_lines(ex.program, "    "),
    ]
    body = SIM_SCRIPT.format(program=_text_literal(ex.program.text()), target=ex.target,
                             signature=signature(ex.finding, coarse=True), usage=runtime.EXIT_USAGE)
    return "#!/usr/bin/env python3\n" + _docstring(doc) + "\n" + body


def replay_recorded(program_text: str, target_text: str, recorded: str, out=print) -> int:
    """Replay a program on a target and say whether the recorded finding shows up (the simulator
    reproducer's body). ``recorded``: the coarse signature. Returns an exit code."""
    try:
        target = open_target(parse_target(target_text))
    except TargetError as e:
        print(f"bad target {target_text}: {e}", file=sys.stderr)
        return runtime.EXIT_USAGE
    except TargetUnavailable as e:
        print(f"target {target_text} unavailable: {e}", file=sys.stderr)
        return runtime.EXIT_UNAVAILABLE
    try:
        prog = parse_program(program_text)
        if prog.proto != target.proto:
            print(f"target {target_text} speaks {target.proto}; the program is {prog.proto}", file=sys.stderr)
            return runtime.EXIT_USAGE
        finding, trace = replay(target, prog)
    finally:
        close_target(target)
    out(format_trace(prog, finding, trace, target_text).rstrip("\n"))
    if finding is None:
        out(f"not reproduced: no finding on {target_text}")
        return runtime.EXIT_OK
    got = signature(finding, coarse=True)
    if got == recorded:
        out(f"REPRODUCED: {got}")
        return runtime.EXIT_FINDING
    out(f"a different finding: {got} (recorded: {recorded})")
    return runtime.EXIT_INCONCLUSIVE


# ----------------------------------------------------------------------------- pytest regression

PYTEST_SCRIPT = '''
import pytest

from fuzz.export import assert_no_finding
from harness.base import TargetUnavailable

PROGRAM = {program}
TARGET = {target!r}


def test_{name}():
    try:
        assert_no_finding(PROGRAM, TARGET)
    except TargetUnavailable as e:
        pytest.skip("target unavailable: %s" % e)
'''


def pytest_regression(ex: Export) -> str:
    """A pytest file asserting the program runs without any finding."""
    text = ex.program.text()
    tag = f"{ex.finding.kind}_{short_hash(ex.signature)}" if ex.finding else f"program_{short_hash(text)}"
    doc = [
        "Regression test exported by migfuzz: this program must run without any finding.",
        "",
        *(banner(ex) if ex.finding else [f"found on:  {ex.target}", "no finding when exported"]),
        "",
        "It fails while the defect is present and keeps it fixed afterwards. The target is the one",
        "the finding was made on; MIGFUZZ_REGRESSION_TARGET overrides it. A target that cannot be",
        "opened here skips the test. Needs migfuzz installed.",
    ]
    body = PYTEST_SCRIPT.format(program=_text_literal(text), target=ex.target, name=re.sub(r"\W+", "_", tag))
    return _docstring(doc) + "\n" + body


def assert_no_finding(program_text: str, target_text: str) -> None:
    """Run the program on the target (``$MIGFUZZ_REGRESSION_TARGET`` overrides it); AssertionError
    with the annotated replay if a finding shows up. TargetUnavailable when the target cannot be
    opened here (the exported test skips then)."""
    target_text = os.environ.get("MIGFUZZ_REGRESSION_TARGET") or target_text
    prog = parse_program(program_text)
    target = open_target(parse_target(target_text))
    try:
        if prog.proto != target.proto:
            raise TargetUnavailable(f"target {target_text} speaks {target.proto}; the program is {prog.proto}")
        finding, trace = replay(target, prog)
    finally:
        close_target(target)
    if finding is not None:
        raise AssertionError(f"{finding.kind} at step {finding.step} ({finding.op}): expected {finding.expected}; "
                             f"observed {finding.observed} [arc {finding.arc}]\n"
                             + format_trace(prog, finding, trace, target_text))


# ----------------------------------------------------------------------------- C

# Ops the C runtime cannot run, and why (any other op it lacks: it has no implementation of it).
C_CANNOT = {
    "fault": "injected faults exist only in the simulator, and a C reproducer runs on real devices "
             "(export --python for it)",
}
_C_TYPES = {"B": "uint8_t", "H": "uint16_t", "I": "uint32_t", "L": "uint32_t", "Q": "uint64_t", "b": "int8_t",
            "h": "int16_t", "i": "int32_t", "l": "int32_t", "q": "int64_t"}
# harness.runtime's constants the C runtime uses, under the same names with MF_ in front.
C_RUNTIME_CONSTS = ("EXIT_OK", "EXIT_FINDING", "EXIT_USAGE", "EXIT_UNAVAILABLE", "EXIT_INCONCLUSIVE",
                    "DRAIN_LIMIT", "DRAIN_CHUNK", "EINTR_RETRIES", "MAX_READ", "MANGLE_CHUNK", "SEG_RANDOM",
                    "SEG_RANDOM_MAX", "RACE_READ", "RACE_SCHEDS", "RACE_OK", "RACE_FD", "RACE_FAILED", "RACE_GOT")
THREE_BIT_DIR = "defined(__powerpc__) || defined(__mips__) || defined(__sparc__) || defined(__alpha__)"
MF_UNUSED = "__attribute__((unused))"


def c_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append("".join(f"\\{b:03o}" for b in ch.encode()))
    return '"' + "".join(out) + '"'


def c_comment(lines: list[str]) -> str:
    body = [(" * " + line.replace("*/", "* /")).rstrip() for line in lines]
    return "/*\n" + "\n".join(body) + "\n */"


def _c_ident(name: str) -> str:
    return re.sub(r"\W", "_", name).upper()


def c_op_names() -> list[str]:
    """Every op name of both protocols, in one order: the C runtime's ``enum mf_opcode``."""
    names: list[str] = []
    for proto in ("v1", "v2"):
        names += [spec.name for spec in OPS[proto] if spec.name not in names]
    return names


def c_handles(kind: str) -> set[str]:
    """What harness/runtime.c implements: ``kind`` "OP" or "CHECK" -> the names it has a case for."""
    return set(re.findall(rf"\bcase MF_{kind}_(\w+):", runtime_source("runtime.c")))


def c_unsupported(ex: Export) -> str | None:
    """Why the C runtime cannot reproduce this finding (one line), or None."""
    f = ex.finding
    proto = ex.program.proto
    ops = c_handles("OP")
    for step, op in enumerate(ex.program.ops[:f.step + 1]):
        name = OPS[proto][op.code].name
        if _c_ident(name) not in ops:
            why = C_CANNOT.get(name, "harness/runtime.c has no implementation of it")
            return f"step {step} ({format_op(proto, op)}): {why}"
    test, arg = f.check
    if test is not None and _c_ident(test) not in c_handles("CHECK"):
        return f"the claim ({test}): harness/runtime.c cannot evaluate it"
    if c_claim_arg(arg) is None:
        return f"the claim's argument {arg!r}: not a number, a set of numbers or a number and a set of numbers"
    return None


def _ints(values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def c_claim_arg(arg) -> tuple[int, list[int]] | None:
    """A claim's argument as harness/runtime.c takes it: (``MF_CLAIM_ARG``, ``mf_claim_set``) for a
    number (``errno``), a set of numbers (``state_not_in``: states) or a number and a set of numbers
    (``not_entered``: a byte index and the register's idle values); None for anything else."""
    if arg is None:
        return 0, []
    if isinstance(arg, int) and not isinstance(arg, bool):
        return arg, []
    if not isinstance(arg, (tuple, list, set, frozenset)):
        return None
    values = sorted(arg) if isinstance(arg, (set, frozenset)) else list(arg)
    if _ints(values):
        return 0, values
    if len(values) == 2 and _ints(values[:1]) and isinstance(values[1], (tuple, list, set, frozenset)) \
            and _ints(values[1]):
        return values[0], sorted(values[1]) if isinstance(values[1], (set, frozenset)) else list(values[1])
    return None


def _c_struct(con, name: str, done: set, out: list) -> None:
    """The C declaration of a construct Struct (nested ones first), checked by a static assert."""
    if name in done:
        return
    fields = []
    for sub in con.subcons:
        inner = sub.subcon if type(sub).__name__ == "Renamed" else sub
        if isinstance(inner, Struct):
            nested = _uapi_name(inner)
            _c_struct(inner, nested, done, out)
            fields.append(f"\tstruct mf_{nested} {sub.name};")
        elif isinstance(inner, FormatField):
            fields.append(f"\t{_C_TYPES[inner.fmtstr[1:]]} {sub.name};")
        elif type(inner).__name__ == "Padded":
            fields.append(f"\tuint8_t {sub.name or 'pad'}[{inner.sizeof()}];")
        else:
            raise TypeError(f"cannot declare {sub!r} in C")
    out.append(f"struct mf_{name} {{\n" + "\n".join(fields) + "\n};")
    out.append(f'_Static_assert(sizeof(struct mf_{name}) == {con.sizeof()}, "struct {name} layout");')
    done.add(name)


def _uapi_name(con) -> str:
    for attr, value in vars(uapi).items():
        if value is con:
            return attr
    raise TypeError("a struct not declared in harness.uapi")


def _c_array(ctype: str, name: str, values: list[str]) -> list[str]:
    return [f"static const {ctype} {name}[] {MF_UNUSED} = {{ " + ", ".join(values or ["0"]) + " };",
            f"#define {name.upper()}_N {len(values)}"]


def _c_abi() -> list[str]:
    """Ioctl numbers, constants, state names and layouts (``harness.uapi.runtime_abi()``)."""
    abi = uapi.runtime_abi()
    out = ["/* ---- from harness/uapi.py (include/uapi/linux/vfio.h) */", "", f"#if {THREE_BIT_DIR}"]
    out += [f"#define MF_{name} {value:#x}UL" for name, value in abi["ioctls"]["three_bit_dir"].items()]
    out.append("#else")
    out += [f"#define MF_{name} {value:#x}UL" for name, value in abi["ioctls"]["generic"].items()]
    out += ["#endif", ""]
    consts = abi["consts"]
    for name, value in consts.items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        out.append(f"#define MF_{name} {value}")
    out += _c_array("char *const", "mf_v2_state_names", [c_string(s) for s in consts["v2_state_names"]])
    out += _c_array("char *const", "mf_v1_state_names", [c_string(s) for s in consts["v1_state_names"]])
    out += _c_array("long long", "mf_v2_running_states", [str(s) for s in consts["v2_running_states"]])
    out += _c_array("long long", "mf_v1_saving_states", [str(s) for s in consts["v1_saving_states"]])
    fields = consts["v1_fields"]
    out += ["", "struct mf_field {", "\tconst char *name;", "\tint offset;", "\tint size;", "};"]
    out += [f"#define MF_V1_FIELD_{_c_ident(name)} {i}" for i, name in enumerate(uapi.V1_FIELD_NAMES)]
    out += [f"static const struct mf_field mf_v1_fields[] {MF_UNUSED} = {{"]
    out += [f"\t{{ {c_string(name)}, {fields[name][0]}, {fields[name][1]} }}," for name in uapi.V1_FIELD_NAMES]
    out += ["};", ""]
    done: set = set()
    for name in abi["structs"]:
        _c_struct(getattr(uapi, name), name, done, out)
    return out


def _c_runtime_consts() -> list[str]:
    """harness.runtime's exit codes, limits, transport kinds and claim tests."""
    out = ["", "/* ---- from harness/runtime.py */", ""]
    out += [f"#define MF_{name} {getattr(runtime, name)}" for name in C_RUNTIME_CONSTS]
    out += ["enum mf_mangle {"] + [f"\tMF_MANGLE_{_c_ident(k)}," for k in runtime.MANGLE_KINDS] + ["};"]
    out += ["enum mf_fix {"] + [f"\tMF_FIX_{_c_ident(k)}," for k in runtime.FIX_KINDS] + ["};"]
    out += ["enum mf_check {", "\tMF_CHECK_NONE,"] + [f"\tMF_CHECK_{_c_ident(k)}," for k in runtime.CHECKS] + ["};"]
    out += _c_array("char *const", "mf_check_text",
                    [c_string("not checkable from user space")] + [c_string(t) for t in runtime.CHECKS.values()])
    out += ["/* kernel virtual address ranges, lowest and highest (harness.runtime.KERNEL_RANGES) */",
            f"static const uint64_t mf_kernel_ranges[][2] {MF_UNUSED} = {{",
            *(f"\t{{ {lo:#x}ULL, {hi:#x}ULL }}," for lo, hi in runtime.KERNEL_RANGES), "};",
            f"#define MF_KERNEL_RANGES_N {len(runtime.KERNEL_RANGES)}"]
    out += ["enum mf_opcode {"] + [f"\tMF_OP_{_c_ident(name)}," for name in c_op_names()] + ["};"]
    out += ["enum mf_race_call {"] + [f"\tMF_RACE_CALL_{_c_ident(k)}," for k in runtime.RACE_CALLS] + ["};"]
    out += ["/* a race op's fields, packed in a (fuzz.program.F_RACE) */"]
    out += [f"#define MF_RACE_{_c_ident(f.name)}_SHIFT {f.shift}\n#define MF_RACE_{_c_ident(f.name)}_MASK {f.limit - 1}"
            for f in F_RACE if f.shift >= 0]
    out += ["", "/* One op of the program: what a and b mean is the op's (fuzz/program.py); a register op's",
            " * fields packed in a come unpacked in region, off and size (bytes), a mangle's in kind, off,",
            " * width, value (sign-extended), fix and at. */",
            "struct mf_op {", "\tint code;", "\tint dev;", "\tuint32_t a;", "\tuint32_t b;",
            "\tconst unsigned char *data;", "\tuint32_t len;", "\tuint32_t region;", "\tuint32_t off;",
            "\tuint32_t size;", "\tint kind;", "\tuint32_t width;", "\tlong long value;", "\tint fix;",
            "\tuint32_t at;", "\tconst char *text;", "};"]
    return out


def _c_program(ex: Export) -> list[str]:
    """The program up to the finding's step as a table, and the claim."""
    prog, f = replayed(ex), ex.finding
    ops = prog.ops
    out = ["", "/* ---- the program (up to the finding's step) and the claim */", "",
           f"#define MF_PROTO_V2 {int(prog.proto == 'v2')}", f"#define MF_PROTO {c_string(prog.proto)}",
           f"#define MF_NDEVICES {devices_used(prog)}", f"#define MF_NOPS {len(ops)}"]
    rows = []
    for step, op in enumerate(ops):
        data = "NULL"
        if op.data:
            data = f"mf_data_{step}"
            out.append(f"static const unsigned char {data}[] = {{ " + ", ".join(f"0x{b:02x}" for b in op.data) + " };")
        name = _c_ident(OPS[prog.proto][op.code].name)
        args = op_args(prog.proto, op)
        reg = ", ".join(f"{args.get(field, 0)}u" for field in ("region", "off", "size"))
        kind = args.get("kind")
        mangle = (f"MF_MANGLE_{_c_ident(kind)}, {args.get('width', 0)}u, {args.get('value', 0)}LL, "
                  f"MF_FIX_{_c_ident(args.get('fix', 'none'))}, {args.get('at', 0)}u"
                  if name == "MANGLE" else "0, 0u, 0LL, 0, 0u")
        rows.append(f"\t{{ MF_OP_{name}, {op.dev}, {op.a}u, {op.b:#x}u, {data}, {len(op.data)}u, {reg}, {mangle}, "
                    f"{c_string(format_op(prog.proto, op))} }},")
    out += ["static const struct mf_op mf_program[] = {", *rows, "};", ""]
    test, arg = f.check
    number, values = c_claim_arg(arg)
    out += [
        f"#define MF_CLAIM_STEP {f.step}",
        f"#define MF_CLAIM_KIND {c_string(f.kind)}",
        f"#define MF_CLAIM_OP {c_string(f.op)}",
        f"#define MF_CLAIM_ARC {c_string(f.arc)}",
        f"#define MF_CLAIM_EXPECTED {c_string(f.expected)}",
        f"#define MF_CLAIM_OBSERVED {c_string(f.observed)}",
        f"#define MF_CLAIM_CHECK MF_CHECK_{_c_ident(test) if test is not None else 'NONE'}",
        f"#define MF_CLAIM_ARG {number}LL",
        f"static const long long mf_claim_set[] {MF_UNUSED} = {{ " + ", ".join(str(v) for v in values or [0]) + " };",
        f"#define MF_CLAIM_NSET {len(values)}",
    ]
    return out


def c_generated(ex: Export) -> str:
    """The generated part of a C reproducer: what harness/runtime.c includes as mf_generated.h."""
    why = c_unsupported(ex)
    if why:
        raise UsageError(f"no C reproducer: {why}")
    head = ["#ifndef _GNU_SOURCE", "#define _GNU_SOURCE", "#endif", "#include <stddef.h>", "#include <stdint.h>", ""]
    return "\n".join(head + _c_abi() + _c_runtime_consts() + _c_program(ex)) + "\n"


def c_header(ex: Export) -> str:
    """``mf_generated.h`` for compiling harness/runtime.c on its own against this program."""
    return ("/* generated by migfuzz (fuzz.export.c_header) */\n#ifndef MF_GENERATED_H\n#define MF_GENERATED_H\n"
            + c_generated(ex) + "#endif\n")


def c_program(ex: Export) -> str:
    """One C file: a banner, the generated part, then harness/runtime.c."""
    two = devices_used(replayed(ex)) > 1
    banner_lines = [
        "migfuzz reproducer (C, real VFIO devices; no <linux/vfio.h> needed).",
        "",
        *banner(ex),
        "",
        "build:  cc -Wall -Werror -o repro THIS.c",
        "run:    sudo ./repro GROUP DEVICE" + (" GROUP2 DEVICE2" if two else "") + "   (legacy group/container API)",
        "        sudo ./repro --cdev vfioN" + (" --cdev vfioM" if two else "") + "   (iommufd cdev)",
        "        -t SECONDS: how long a call may take before it counts as hung (default 10)",
        "Each device is reset when it is opened and before it is released.",
        EXIT_LINE,
        "",
        "program:",
        *_program_lines(ex.program, "  "),
    ]
    generated = c_generated(ex)
    return (c_comment(banner_lines) + "\n\n#define MF_GENERATED 1\n" + generated
            + "\n/* " + "-" * 69 + " harness/runtime.c */\n\n" + runtime_source("runtime.c"))


# ----------------------------------------------------------------------------- the command


def cmd_export(args) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if not (args.python or args.c or args.pytest):
        raise UsageError("nothing to export: give --python OUT.py, --c OUT.c and/or --pytest OUT.py")
    ex = load_for_export(path, args.target)
    if args.minimize:
        ex = minimized(ex)
    if ex.finding is None and (args.python or args.c):
        raise UsageError(f"{path} shows no finding on {ex.target} (and records none): a Python or C reproducer "
                         "needs the finding's claim; --pytest alone works")
    if args.c:
        why = c_unsupported(ex)
        if why:
            raise UsageError(f"no C reproducer: {why}")
    written = []
    if args.python:
        standalone = args.standalone or parse_target(ex.target).kind != "sim"
        _write(Path(args.python), python_standalone(ex) if standalone else python_sim(ex), executable=True)
        written.append(f"{args.python} ({'stand-alone, real devices' if standalone else 'simulator'})")
    if args.c:
        _write(Path(args.c), c_program(ex))
        written.append(f"{args.c} (C, real devices)")
    if args.pytest:
        _write(Path(args.pytest), pytest_regression(ex))
        written.append(f"{args.pytest} (pytest regression)")
    what = f"{ex.finding.kind} at step {ex.finding.step}" if ex.finding else "no finding"
    print(f"migfuzz: {what}; {len(ex.program.ops)} ops -> " + ", ".join(written), file=sys.stderr)
    return runtime.EXIT_OK


def _write(path: Path, text: str, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        path.chmod(path.stat().st_mode | 0o111)
