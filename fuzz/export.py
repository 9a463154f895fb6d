"""Reproducers a driver developer can run without migfuzz: Python, C and pytest.

``migfuzz export FILE --python OUT.py --c OUT.c --pytest OUT.py``

* ``--python`` for a ``sim`` finding: a script that imports the simulator and
  the executor from a migfuzz checkout (``--migfuzz PATH``, ``$MIGFUZZ_SRC`` or
  the checkout it was exported from) and replays the program.  For a kernel
  finding (or with ``--standalone``): a Python 3 script using only the standard
  library that opens a real VFIO device (legacy group/container API, or an
  iommufd cdev), replays the op sequence through ioctl/read/write/pread/pwrite,
  prints every answer and checks the finding's condition at its step.
* ``--c``: the same against a real device in C; every VFIO constant and layout
  is a literal generated from ``harness.uapi`` (no ``<linux/vfio.h>``), so it
  builds anywhere with ``cc -Wall -Werror``.
* ``--pytest``: a regression test that replays the program on the target
  through migfuzz's executor and asserts that no finding shows up: it fails
  while the bug is there and keeps it fixed afterwards.

Exit codes of the generated reproducers: 1 the finding showed up, 0 it did not,
2 usage or setup error (device cannot be opened, migfuzz not found), 3
inconclusive (the condition cannot be judged from user space) or a different
problem.

What the stand-alone reproducers check at the finding step is derived from the
finding (:func:`finding_check`): e.g. "the SET succeeded" for an accepted
invalid arc, "read failed with ENOMSG" in STOP_COPY.  Findings that need the
simulator's insight (state digests, the driver's open files) cannot be checked
on a real device; the script then prints the replay and exits 3.
"""
from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

EXIT_REPRODUCED, EXIT_NOT_REPRODUCED, EXIT_SETUP, EXIT_INCONCLUSIVE = 1, 0, 2, 3

# Findings a reproducer cannot judge from user space on a real device.
NOT_CHECKABLE = ("resume-corrupted", "state-changed-while-stopped", "resource-leak", "target-exception")

IOCTL_NAMES = ("VFIO_GET_API_VERSION", "VFIO_SET_IOMMU", "VFIO_GROUP_GET_STATUS", "VFIO_GROUP_SET_CONTAINER",
               "VFIO_GROUP_GET_DEVICE_FD", "VFIO_DEVICE_GET_INFO", "VFIO_DEVICE_GET_REGION_INFO",
               "VFIO_DEVICE_RESET", "VFIO_DEVICE_FEATURE", "VFIO_DEVICE_BIND_IOMMUFD",
               "VFIO_MIG_GET_PRECOPY_INFO")

# Structures the reproducers use: constant name -> harness.uapi construct name.
STRUCTS = (
    ("FEATURE_HDR", "vfio_device_feature"),
    ("MIG_STATE", "vfio_device_feature_mig_state"),
    ("PRECOPY_INFO", "vfio_precopy_info"),
    ("REGION_INFO", "vfio_region_info"),
    ("CAP_HEADER", "vfio_info_cap_header"),
    ("CAP_TYPE", "vfio_region_info_cap_type"),
    ("DEVICE_INFO", "vfio_device_info"),
    ("GROUP_STATUS", "vfio_group_status"),
    ("BIND_IOMMUFD", "vfio_device_bind_iommufd"),
)


# ----------------------------------------------------------------------------- the finding


class FindingInfo:
    """What a reproducer needs to know about the finding (from a replay or a crash header)."""

    def __init__(self, kind: str, step: int, op: str, arc: str, expected: str, observed: str, signature: str,
                 detail: str = ""):
        self.kind, self.step, self.op, self.arc = kind, step, op, arc
        self.expected, self.observed, self.signature, self.detail = expected, observed, signature, detail

    @classmethod
    def from_finding(cls, finding, prog) -> FindingInfo:
        from .triage import signature

        return cls(finding.kind, finding.step, finding.op, finding.arc, finding.expected, finding.observed,
                   signature(finding, prog), finding.detail)


def _state_value(proto: str, name: str) -> int | None:
    from harness.uapi import V1_STATE_NAMES, MigState

    name = name.strip()
    if proto == "v2":
        if name in MigState.__members__:
            return int(MigState[name])
    else:
        for value, text in V1_STATE_NAMES.items():
            if text == name:
                return value
    try:
        return int(name, 0)
    except ValueError:
        return None


def finding_check(proto: str, kind: str, expected: str) -> tuple:
    """(test, argument) a reproducer evaluates on the device's answer at the finding step.

    Tests: ok (the call succeeded), failed, errno (failed with that errno),
    state_not (state read back differs), state_not_in (failed and left a state
    outside the set), fd / no_fd (a data_fd came / did not come), get_failed,
    longer_than (read returned more than asked), value_nonzero (v1 reserved),
    and the flags hang, precopy_overrun, initial_grew, data_after_end,
    window_outside.  (None, None) when a real device cannot show it."""
    e = expected or ""
    if kind == "hang":
        return "hang", None
    if kind in NOT_CHECKABLE:
        return None, None
    if kind == "region-layout":
        return "window_outside", None
    if kind == "fd-mismatch":
        return ("no_fd" if e.startswith("a new") else "fd"), None
    if kind == "bad-state-after-failure":
        states = [_state_value(proto, s) for s in e.split(" or ")]
        return ("state_not_in", sorted(s for s in states if s is not None)) if all(
            s is not None for s in states) else (None, None)
    if kind == "state-mismatch":
        first = e.split(" (", 1)[0].split(" after ", 1)[0]
        value = _state_value(proto, first)
        return ("state_not", value) if value is not None else (None, None)
    if kind == "stream-protocol":
        if "ENOMSG" in e:
            import errno

            return "errno", errno.ENOMSG
        m = re.match(r"at most (\d+) bytes", e)
        if m:
            return "longer_than", int(m.group(1))
        if e.startswith("PRECOPY_INFO"):
            return "precopy_overrun", None
        if e.startswith("initial_bytes"):
            return "initial_grew", None
        if e.startswith("no data after"):
            return "data_after_end", None
        return None, None
    if kind == "accepted-invalid":
        return ("value_nonzero" if "reserved" in e else "ok"), None
    if kind in ("fd-misuse-accepted", "damaged-stream-accepted"):
        return "ok", None
    if kind == "rejected-valid":
        if e in ("GET MIG_DEVICE_STATE succeeds", "device_state can be read back"):
            return "get_failed", None
        return "failed", None
    if kind == "valid-stream-rejected":
        return "failed", None
    return None, None


def devices_used(prog) -> int:
    from .program import OPS

    used = 0
    for op in prog.ops:
        used = max(used, op.dev + 1)
        if OPS[prog.proto][op.code].name == "transfer":
            used = max(used, op.a + 1)
    return used


def _op_args(proto: str, op) -> dict:
    from harness.uapi import V1_FIELD_NAMES

    from .program import FAULT_KINDS, MANGLE_KINDS, OPS

    out = {}
    for f in OPS[proto][op.code].fields:
        value = getattr(op, f.slot)
        if f.kind == "fault":
            value = FAULT_KINDS[value]
        elif f.kind == "mangle":
            value = MANGLE_KINDS[value]
        elif f.kind == "v1field":
            value = V1_FIELD_NAMES[value]
        elif f.kind == "bytes":
            value = bytes(value)
        out[f.name] = value
    return out


def _banner(info: FindingInfo, target_text: str, prog) -> list[str]:
    return [
        f"finding:   {info.kind} at step {info.step} ({info.op})",
        f"arc:       {info.arc}",
        f"expected:  {info.expected}",
        f"observed:  {info.observed}",
        f"signature: {info.signature}",
        f"found on:  {target_text}",
        f"program:   {len(prog.ops)} ops, protocol {prog.proto}",
    ]


# ----------------------------------------------------------------------------- constants from harness.uapi


def _ioctls(arch: str) -> dict:
    from harness import uapi

    return {name: uapi.vfio_ioctl(uapi.VFIO_IOCTL_INDEX[name], arch) for name in IOCTL_NAMES}


def _py_constants(prog, info: FindingInfo) -> str:
    from harness import uapi
    from harness.uapi import V1_FIELDS, V1_STATE_NAMES, MigState

    from . import executor, model

    test, arg = finding_check(prog.proto, info.kind, info.expected)
    lines = ["# ---- constants generated from migfuzz's harness/uapi.py (include/uapi/linux/vfio.h)", ""]
    for label, arch in (("IOCTL_GENERIC", "generic"), ("IOCTL_3BIT_DIR", "powerpc")):
        lines.append(f"{label} = {{  # _IO(';', 100 + n), {arch} _IOC layout")
        lines += [f"    {name!r}: {value:#x}," for name, value in _ioctls(arch).items()]
        lines.append("}")
    lines.append("")
    for const, name in STRUCTS:
        con = getattr(uapi, name)
        lines.append(f"{const} = struct.Struct({uapi.packer(con).format!r})  # struct {name}, {con.sizeof()} bytes")
    lines += [
        "",
        f"FEATURE_GET, FEATURE_SET, FEATURE_PROBE = {uapi.FEATURE_GET:#x}, {uapi.FEATURE_SET:#x}, "
        f"{uapi.FEATURE_PROBE:#x}",
        f"FEATURE_MIGRATION, FEATURE_MIG_DEVICE_STATE, FEATURE_MIG_DATA_SIZE = {uapi.FEATURE_MIGRATION}, "
        f"{uapi.FEATURE_MIG_DEVICE_STATE}, {uapi.FEATURE_MIG_DATA_SIZE}",
        f"VFIO_API_VERSION = {uapi.VFIO_API_VERSION}",
        f"VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU = {uapi.VFIO_TYPE1_IOMMU}, {uapi.VFIO_TYPE1v2_IOMMU}",
        f"GROUP_FLAGS_VIABLE = {uapi.VFIO_GROUP_FLAGS_VIABLE:#x}",
        f"REGION_INFO_FLAG_CAPS = {uapi.VFIO_REGION_INFO_FLAG_CAPS:#x}",
        f"REGION_INFO_CAP_TYPE = {uapi.VFIO_REGION_INFO_CAP_TYPE}",
        f"REGION_TYPE_MIGRATION, REGION_SUBTYPE_MIGRATION = {uapi.VFIO_REGION_TYPE_MIGRATION}, "
        f"{uapi.VFIO_REGION_SUBTYPE_MIGRATION}",
        f"PCI_NUM_REGIONS = {uapi.VFIO_PCI_NUM_REGIONS}",
        f"V2_STATE_NAMES = {tuple(s.name for s in MigState)!r}",
        f"V2_RUNNING, V2_STOP_COPY, V2_RESUMING = {int(MigState.RUNNING)}, {int(MigState.STOP_COPY)}, "
        f"{int(MigState.RESUMING)}",
        f"RUNNING_STATES = {tuple(sorted(int(s) for s in model.RUNNING_STATES))!r}",
        f"V1_STATE_NAMES = {dict(V1_STATE_NAMES)!r}",
        f"V1_RUNNING, V1_RESUMING = {uapi.V1_RUNNING}, {uapi.V1_RESUMING}",
        f"V1_FIELDS = {dict(V1_FIELDS)!r}  # name -> (offset, width) in the region header",
        f"V1_HEADER_SIZE = {model.V1_HEADER_SIZE}",
        "UART_TX, UART_SCR = 0, 7  # 16550 registers an mtty BAR has (activity)",
        "MAX_READ = 1 << 20",
        f"DRAIN_LIMIT, DRAIN_CHUNK, EINTR_RETRIES = {executor.DRAIN_LIMIT}, {executor.DRAIN_CHUNK}, "
        f"{executor.EINTR_RETRIES}",
        "",
        "# ---- the program and the finding",
        "",
        f"PROTO = {prog.proto!r}",
        f"NDEVICES_USED = {devices_used(prog)}",
        "PROGRAM = [  # (op, device, arguments, text form)",
    ]
    from .program import OPS, format_op

    for op in prog.ops:
        lines.append(f"    ({OPS[prog.proto][op.code].name!r}, {op.dev}, {_op_args(prog.proto, op)!r}, "
                     f"{format_op(prog.proto, op)!r}),")
    lines += [
        "]",
        "FINDING = {",
        f"    'kind': {info.kind!r}, 'step': {info.step}, 'op': {info.op!r},",
        f"    'arc': {info.arc!r},",
        f"    'expected': {info.expected!r},",
        f"    'observed': {info.observed!r},",
        f"    'test': {test!r}, 'arg': {arg!r},  # what shows the defect at that step",
        "}",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- Python: stand-alone (real device)


def python_standalone(prog, info: FindingInfo, target_text: str) -> str:
    """A Python 3 script (standard library only) replaying ``prog`` on a real VFIO device."""
    ndev = devices_used(prog)
    usage = ("sudo python3 THIS.py GROUP DEVICE" + (" GROUP2 DEVICE2" if ndev > 1 else "") +
             "\n    sudo python3 THIS.py --cdev vfioN" + (" --cdev vfioM" if ndev > 1 else ""))
    doc = "\n".join([
        "migfuzz reproducer (stand-alone: Python 3 standard library, a real VFIO device).",
        "",
        *_banner(info, target_text, prog),
        "",
        "usage:",
        "    " + usage,
        "",
        "GROUP is the IOMMU group number (/dev/vfio/GROUP), DEVICE the mdev UUID or PCI address",
        "(legacy group/container API); --cdev uses /dev/vfio/devices/vfioN with iommufd instead.",
        "The device is reset before it is released. Injected faults (the fault op) need the",
        "simulator and are skipped here.",
        "",
        "exit: 1 the finding showed up, 0 it did not, 2 usage/setup error,",
        "      3 inconclusive (cannot be judged from user space) or a different problem (a hang elsewhere)",
        "",
        "program:",
        *["    " + line for line in prog.text().splitlines()],
    ])
    head = [
        "#!/usr/bin/env python3",
        '"""' + doc.replace("\\", "\\\\").replace('"""', "'''") + '\n"""',
        "# Generated by `migfuzz export --python`; edit freely.",
        "import argparse",
        "import errno",
        "import fcntl",
        "import os",
        "import random",
        "import struct",
        "import sys",
        "import threading",
        "import time",
        "import traceback",
        "",
    ]
    return "\n".join(head) + "\n" + _py_constants(prog, info) + _transport_source() + PY_KERNEL_BODY


def _transport_source() -> str:
    """fuzz/transport.py verbatim: the reproducer cuts and damages streams as the fuzzer does."""
    import inspect

    from . import transport

    return "\n# ---------------------------------------------------------------------------- transport\n" + \
        inspect.getsource(transport)


# ----------------------------------------------------------------------------- Python: simulator (needs a checkout)


def python_sim(prog, info: FindingInfo, target_text: str) -> str:
    """A script that replays ``prog`` on the simulator from a migfuzz checkout."""
    src = str(Path(__file__).resolve().parent.parent)
    doc = "\n".join([
        "migfuzz reproducer for a finding on the simulator.",
        "",
        *_banner(info, target_text, prog),
        "",
        "The simulated device lives in migfuzz itself, so this script imports harness.sim and",
        "fuzz.executor from a migfuzz checkout: --migfuzz PATH, else $MIGFUZZ_SRC, else the",
        "checkout it was exported from, else an installed migfuzz.",
        "",
        "usage: python3 THIS.py [--migfuzz PATH] [--target SPEC]",
        "exit: 1 the finding showed up, 0 it did not, 2 migfuzz not found / bad target,",
        "      3 a different finding showed up",
    ])
    return f'''#!/usr/bin/env python3
"""{doc}
"""
# Generated by `migfuzz export --python`; edit freely.
import argparse
import os
import sys

PROGRAM = """\\
{prog.text()}"""
TARGET = {target_text!r}
KIND = {info.kind!r}
ARC = {info.arc!r}
SIGNATURE = {info.signature!r}
EXPORTED_FROM = {src!r}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--migfuzz", help="path of a migfuzz checkout")
    parser.add_argument("--target", default=TARGET, help="target spec (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in (args.migfuzz, os.environ.get("MIGFUZZ_SRC"), EXPORTED_FROM):
        if path and os.path.isdir(os.path.join(path, "harness", "sim")):
            sys.path.insert(0, os.path.abspath(path))
            break
    try:
        import harness.sim  # noqa: F401  (the simulated device)
        from fuzz.executor import Executor
        from fuzz.program import format_op, parse_program
        from fuzz.targets import open_target, parse_target
    except ImportError as e:
        print("cannot import migfuzz (%s): pass --migfuzz PATH or set MIGFUZZ_SRC" % e, file=sys.stderr)
        return 2
    try:
        from fuzz.triage import signature
    except ImportError:
        signature = lambda f, p: "%s|%s" % (f.kind, f.arc)  # noqa: E731
    try:
        target = open_target(parse_target(args.target))
    except Exception as e:  # noqa: BLE001 - any setup failure is a usage error here
        print("cannot open target %s: %s" % (args.target, e), file=sys.stderr)
        return 2
    prog = parse_program(PROGRAM)
    ex = Executor(target, trace=True)
    finding = ex.run(prog)
    target.close()
    notes = {{}}
    for step, text in ex.trace:
        notes.setdefault(step, []).append(text)
    last = finding.step if finding else len(prog.ops) - 1
    for i, op in enumerate(prog.ops[:last + 1]):
        print("[%2d] %s" % (i, format_op(prog.proto, op)))
        for text in notes.get(i, []):
            print("       " + text)
    if finding is None:
        print("not reproduced: no finding on %s" % args.target)
        return 0
    sig = signature(finding, prog)
    print("FINDING %s at step %d: expected %s; observed %s  [arc %s]"
          % (finding.kind, finding.step, finding.expected, finding.observed, finding.arc))
    if finding.detail:
        print(finding.detail.rstrip())
    if sig == SIGNATURE or (finding.kind, finding.arc) == (KIND, ARC):
        print("REPRODUCED: %s" % sig)
        return 1
    print("a different finding than the recorded one (%s)" % SIGNATURE)
    return 3


if __name__ == "__main__":
    sys.exit(main())
'''


# ----------------------------------------------------------------------------- pytest regression


def pytest_regression(prog, info: FindingInfo | None, target_text: str) -> str:
    sig = info.signature if info else "no finding when exported"
    name = re.sub(r"\W+", "_", f"{info.kind if info else 'program'}_{hashlib.sha1(sig.encode()).hexdigest()[:8]}")
    about = "\n".join(_banner(info, target_text, prog)) if info else f"target: {target_text}"
    return f'''"""Regression test exported by migfuzz: this program must run without any finding.

{about}

It fails while the defect is present and keeps it fixed afterwards. The target
is the one the finding was made on; MIGFUZZ_REGRESSION_TARGET overrides it.
A target that cannot be opened here (no device) skips the test.
"""
import os

import pytest

PROGRAM = """\\
{prog.text()}"""
TARGET = {target_text!r}
SIGNATURE = {sig!r}


def test_{name}():
    from fuzz.executor import Executor
    from fuzz.program import parse_program
    from fuzz.targets import TargetUnavailable, open_target, parse_target

    target_text = os.environ.get("MIGFUZZ_REGRESSION_TARGET", TARGET)
    try:
        target = open_target(parse_target(target_text))
    except (TargetUnavailable, ImportError, OSError) as e:
        pytest.skip(f"target {{target_text}} unavailable: {{e}}")
    prog = parse_program(PROGRAM)
    if prog.proto != target.proto:
        target.close()
        pytest.skip(f"target {{target_text}} speaks {{target.proto}}, the program is {{prog.proto}}")
    executor = Executor(target, trace=True)
    try:
        finding = executor.run(prog)
    finally:
        target.close()
    trace = "\\n".join(f"  [{{step}}] {{text}}" for step, text in executor.trace)
    assert finding is None, (
        f"{{finding.kind}} at step {{finding.step}} ({{finding.op}}): expected {{finding.expected}}; "
        f"observed {{finding.observed}} [arc {{finding.arc}}] (recorded: {{SIGNATURE}})\\n{{trace}}"
    )
'''


# ----------------------------------------------------------------------------- C


_C_TYPES = {"B": "uint8_t", "H": "uint16_t", "I": "uint32_t", "L": "uint32_t", "Q": "uint64_t", "b": "int8_t",
            "h": "int16_t", "l": "int32_t",
            "i": "int32_t", "q": "int64_t"}


def _c_struct(con, name: str, done: set, out: list) -> None:
    """C declaration of a construct Struct (nested ones first), checked by a static assert."""
    from construct import FormatField, Struct

    if name in done:
        return
    fields = []
    for sub in con.subcons:
        inner = sub.subcon if type(sub).__name__ == "Renamed" else sub
        kind = type(inner).__name__
        if isinstance(inner, Struct):
            nested = _struct_name(inner)
            _c_struct(inner, nested, done, out)
            fields.append(f"\tstruct mf_{nested} {sub.name};")
        elif isinstance(inner, FormatField):
            fields.append(f"\t{_C_TYPES[inner.fmtstr[1:]]} {sub.name};")
        elif kind == "Padded":
            fields.append(f"\tuint8_t {sub.name or 'pad'}[{inner.sizeof()}];")
        else:
            raise TypeError(f"cannot declare {sub!r} in C")
    out.append(f"struct mf_{name} {{\n" + "\n".join(fields) + "\n};")
    out.append(f'_Static_assert(sizeof(struct mf_{name}) == {con.sizeof()}, "struct {name} layout");')
    done.add(name)


def _struct_name(con) -> str:
    from harness import uapi

    for attr in dir(uapi):
        if getattr(uapi, attr) is con:
            return attr
    raise TypeError("a struct not declared in harness.uapi")


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _c_constants(prog, info: FindingInfo) -> str:
    from harness import uapi
    from harness.uapi import V1_FIELDS, V1_STATE_NAMES, MigState

    from . import executor, model
    from .program import MANGLE_CHUNK

    out = ["/* ---- constants generated from migfuzz's harness/uapi.py (include/uapi/linux/vfio.h) */", ""]
    out.append("#if defined(__powerpc__) || defined(__powerpc64__) || defined(__mips__) || defined(__sparc__) "
               "|| defined(__alpha__)")
    out += [f"#define MF_{name} {value:#x}UL" for name, value in _ioctls("powerpc").items()]
    out.append("#else")
    out += [f"#define MF_{name} {value:#x}UL" for name, value in _ioctls("generic").items()]
    out.append("#endif")
    out += [
        f"#define MF_FEATURE_GET {uapi.FEATURE_GET:#x}u",
        f"#define MF_FEATURE_SET {uapi.FEATURE_SET:#x}u",
        f"#define MF_FEATURE_PROBE {uapi.FEATURE_PROBE:#x}u",
        f"#define MF_FEATURE_MIGRATION {uapi.FEATURE_MIGRATION}u",
        f"#define MF_FEATURE_MIG_DEVICE_STATE {uapi.FEATURE_MIG_DEVICE_STATE}u",
        f"#define MF_FEATURE_MIG_DATA_SIZE {uapi.FEATURE_MIG_DATA_SIZE}u",
        f"#define MF_VFIO_API_VERSION {uapi.VFIO_API_VERSION}",
        f"#define MF_VFIO_TYPE1_IOMMU {uapi.VFIO_TYPE1_IOMMU}UL",
        f"#define MF_VFIO_TYPE1v2_IOMMU {uapi.VFIO_TYPE1v2_IOMMU}UL",
        f"#define MF_GROUP_FLAGS_VIABLE {uapi.VFIO_GROUP_FLAGS_VIABLE:#x}u",
        f"#define MF_REGION_INFO_FLAG_CAPS {uapi.VFIO_REGION_INFO_FLAG_CAPS:#x}u",
        f"#define MF_REGION_INFO_CAP_TYPE {uapi.VFIO_REGION_INFO_CAP_TYPE}",
        f"#define MF_REGION_TYPE_MIGRATION {uapi.VFIO_REGION_TYPE_MIGRATION}u",
        f"#define MF_REGION_SUBTYPE_MIGRATION {uapi.VFIO_REGION_SUBTYPE_MIGRATION}u",
        f"#define MF_PCI_NUM_REGIONS {uapi.VFIO_PCI_NUM_REGIONS}u",
    ]
    out += [f"#define MF_STATE_{s.name} {int(s)}" for s in MigState]
    out += [f"#define MF_V1_RUNNING {uapi.V1_RUNNING}", f"#define MF_V1_RESUMING {uapi.V1_RESUMING}"]
    out += [f"#define V1_{name.upper()}_OFF {off}\n#define V1_{name.upper()}_SIZE {size}"
            for name, (off, size) in V1_FIELDS.items()]
    names = list(V1_FIELDS)
    out += [
        "#define V1_FIELD_OFFSETS { " + ", ".join(str(V1_FIELDS[n][0]) for n in names) + " }",
        "#define V1_FIELD_SIZES { " + ", ".join(str(V1_FIELDS[n][1]) for n in names) + " }",
        "#define V1_FIELD_NAMES { " + ", ".join(_c_string(n) for n in names) + " }",
        f"#define V1_DATA_OFFSET_INDEX {names.index('data_offset')}",
        f"#define V1_RESERVED_INDEX {names.index('reserved')}",
        f"#define V1_HEADER_SIZE {model.V1_HEADER_SIZE}u",
        f"#define DRAIN_LIMIT {executor.DRAIN_LIMIT}",
        f"#define DRAIN_CHUNK {executor.DRAIN_CHUNK}",
        f"#define EINTR_RETRIES {executor.EINTR_RETRIES}",
        f"#define MANGLE_CHUNK {MANGLE_CHUNK}",
        "",
        "static const char *const V2_STATE_NAMES[] __attribute__((unused)) = { "
        + ", ".join(_c_string(s.name) for s in MigState) + " };",
        "static const char *const V1_STATE_NAMES[] __attribute__((unused)) = { "
        + ", ".join(_c_string(V1_STATE_NAMES[i]) for i in range(8)) + " };",
        "",
    ]
    done: set = set()
    decls: list = []
    for _const, name in STRUCTS:
        _c_struct(getattr(uapi, name), name, done, decls)
    out += decls
    test, _arg = finding_check(prog.proto, info.kind, info.expected)
    out += [
        "",
        "/* ---- the program and the finding */",
        "",
        f"#define PROTO_V2 {int(prog.proto == 'v2')}",
        f"#define NDEVICES_USED {devices_used(prog)}",
        f"#define FINDING_STEP {info.step}",
        f"#define FINDING_KIND {_c_string(info.kind)}",
        f"#define FINDING_IS_HANG {int(test == 'hang')}",
        "",
    ]
    return "\n".join(out) + "\n"


def _c_condition(test, arg) -> str:
    import errno

    if test == "ok":
        return "r.err == 0"
    if test == "failed":
        return "r.err != 0"
    if test == "errno":
        return f"r.err == {errno.errorcode.get(arg, str(arg))}"
    if test == "state_not":
        return f"r.state != {arg}"
    if test == "state_not_in":
        return "r.err != 0" + "".join(f" && r.state != {s}" for s in arg)
    if test == "fd":
        return "r.fd >= 0"
    if test == "no_fd":
        return "r.err == 0 && r.fd < 0"
    if test == "get_failed":
        return "r.gerr != 0"
    if test == "longer_than":
        return f"r.len > {arg}"
    if test == "value_nonzero":
        return "r.value != 0"
    return f"r.{test}"


def _c_call(proto: str, op, name: str, data_name: str) -> str:
    from .program import FAULT_KINDS, MANGLE_KINDS

    d = f"&d[{op.dev}]"
    if name == "activity":
        return f"op_activity({d}, {op.b}u)"
    if name == "fault":
        return f'op_fault({d}, {op.a}, "{FAULT_KINDS[op.b]}")'
    if name == "mangle":
        return f'op_mangle({d}, "{MANGLE_KINDS[op.a]}", {op.b}u)'
    if name == "transfer":
        return f"{proto}_transfer({d}, &d[{op.a}], {op.b}u)"
    if name in ("reset", "get", "datasize", "save"):
        return f"{proto}_{name}({d})"
    if proto == "v2":
        if name == "set":
            return f"v2_set({d}, {op.b}u)"
        if name == "read":
            return f"v2_read({d}, {op.a}, {op.b}u)"
        if name in ("drain", "close", "seek", "precopy"):
            return f"v2_{name}({d}, {op.a})"
        if name == "write":
            return f"v2_write({d}, {op.a}, {data_name}, {len(op.data)})"
        if name == "feature":
            return f"v2_feature({d}, {op.a}u, {op.b:#x}u)"
    else:
        if name == "set":
            return f"v1_set({d}, {op.b:#x}u)"
        if name == "drain":
            return f"v1_drain({d})"
        if name == "rd":
            return f"v1_rd({d}, {op.a})"
        if name == "wr":
            return f"v1_wr({d}, {op.a}, {op.b:#x}u)"
        if name == "rdwin":
            return f"v1_rdwin({d}, {op.b}u)"
        if name == "wrwin":
            return f"v1_wrwin({d}, {data_name}, {len(op.data)})"
    raise ValueError(f"no C form for {proto} op {name}")


def c_program(prog, info: FindingInfo, target_text: str) -> str:
    """A C reproducer for a real device; literal constants only, builds with cc -Wall -Werror."""
    from .program import OPS, format_op

    test, arg = finding_check(prog.proto, info.kind, info.expected)
    ndev = devices_used(prog)
    comment = "\n".join([
        "migfuzz reproducer (C, a real VFIO device; no <linux/vfio.h> needed).",
        "",
        *_banner(info, target_text, prog),
        "",
        "build:  cc -Wall -Werror -o repro THIS.c",
        "run:    sudo ./repro GROUP DEVICE" + (" GROUP2 DEVICE2" if ndev > 1 else "")
        + "        (legacy group/container API)",
        "        sudo ./repro --cdev vfioN" + (" --cdev vfioM" if ndev > 1 else "")
        + "             (iommufd cdev)",
        "        -t SECONDS: how long a call may take before it counts as hung (default 10)",
        "exit:   1 the finding showed up, 0 it did not, 2 usage/setup error,",
        "        3 inconclusive or a different problem",
        "",
        "program:",
        *["  " + line for line in prog.text().splitlines()],
    ]).replace("*/", "* /")
    parts = ["/*\n" + "\n".join((" * " + ln).rstrip() for ln in comment.splitlines()) + "\n */",
             "#define _GNU_SOURCE",
             *[f"#include <{h}>" for h in ("errno.h", "fcntl.h", "signal.h", "stdint.h", "stdio.h", "stdlib.h",
                                           "string.h", "sys/ioctl.h", "sys/types.h", "unistd.h")],
             "", _c_constants(prog, info), C_BODY]
    body = []
    datas = []
    for step, op in enumerate(prog.ops):
        name = OPS[prog.proto][op.code].name
        data_name = "NULL"
        if op.data:
            data_name = f"data_{step}"
            datas.append(f"static const unsigned char {data_name}[] = {{ "
                         + ", ".join(f"0x{b:02x}" for b in op.data) + " };")
        text = format_op(prog.proto, op)
        body.append(f"\t/* [{step}] {text.replace('*/', '* /')} */")
        body.append(f"\tbegin({step}, {_c_string(text)});")
        body.append(f"\tr = {_c_call(prog.proto, op, name, data_name)};")
        body.append("\tend();")
        if step == info.step:
            break
    parts += datas
    fin = [
        "",
        "int main(int argc, char **argv)",
        "{",
        "\tstruct dev d[2];",
        "\tstruct res r;",
        "\tint status;",
        "",
        "\tmemset(d, 0, sizeof(d));",
        "\td[0].fd = d[1].fd = -1;",
        "\tif (open_devices(argc, argv, d))",
        "\t\treturn 2;",
        "\tsignal(SIGALRM, on_alarm);",
        "\tsetvbuf(stdout, NULL, _IOLBF, 0);",
        "",
        *body,
        "",
    ]
    if test is None:
        fin += [
            "\tprintf(\"the recorded finding (%s: expected %s; observed %s) cannot be judged from user space; \"",
            "\t       \"compare the output above with it\\n\", FINDING_KIND, "
            f"{_c_string(info.expected)}, {_c_string(info.observed)});",
            "\tstatus = 3;",
        ]
    else:
        fin += [
            f"\tif (!r.skipped && ({_c_condition(test, arg)})) {{",
            "\t\tprintf(\"REPRODUCED: %s at step %d: expected %s; recorded %s\\n\", FINDING_KIND, FINDING_STEP,",
            f"\t\t       {_c_string(info.expected)}, {_c_string(info.observed)});",
            "\t\tstatus = 1;",
            "\t} else {",
            f"\t\tprintf(\"not reproduced: step %d behaved as the protocol requires (expected %s)\\n\", "
            f"FINDING_STEP, {_c_string(info.expected)});",
            "\t\tstatus = 0;",
            "\t}",
        ]
    fin += [
        "\tclose_device(&d[0]);",
        "\tclose_device(&d[1]);",
        "\treturn status;",
        "}",
    ]
    return "\n".join(parts) + "\n" + "\n".join(fin) + "\n"


# ----------------------------------------------------------------------------- command


def load_for_export(path: Path, target_text: str | None):
    """(program, FindingInfo or None, target text) for a crash/program file.

    A simulator target is replayed (the finding is whatever happens now); a real
    device is never opened here: its finding comes from the crash's header."""
    from .cli import UsageError
    from .program import ProgramError
    from .targets import TargetError, parse_target
    from .triage import load_crash, open_spec, read_meta, replay, signature

    meta = read_meta(path)
    ttext = target_text or meta.target or "sim"
    try:
        spec = parse_target(ttext)
    except TargetError as e:
        raise UsageError(str(e)) from None
    if spec.kind == "sim":
        spec, target = open_spec(ttext)
        try:
            prog = load_crash(path, target.proto)
            if prog.proto != target.proto:
                raise UsageError(f"{path} is a {prog.proto} program; target {ttext} speaks {target.proto}")
            finding, _ = replay(target, prog, trace=False)
        except (ProgramError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: {e}") from None
        finally:
            target.close()
        info = FindingInfo.from_finding(finding, prog) if finding else None
        return prog, info, spec.text()
    try:
        prog = load_crash(path, None)
    except (ProgramError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: {e}") from None
    if not meta.kind:
        return prog, None, ttext
    op = meta.op or ""
    info = FindingInfo(meta.kind, meta.step, op, meta.arc, meta.expected, meta.observed, meta.our_signature(),
                       meta.detail)
    if 0 <= meta.step < len(prog.ops):
        from .oracles import Finding

        info.signature = signature(Finding(meta.kind, meta.step, meta.expected, meta.observed, meta.arc, op,
                                           meta.detail), prog)
    return prog, info, ttext


def cmd_export(args) -> int:
    from .cli import EXIT_OK, UsageError

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if not (args.python or args.c or args.pytest):
        raise UsageError("nothing to export: give --python OUT.py, --c OUT.c and/or --pytest OUT.py")
    prog, info, ttext = load_for_export(path, args.target)
    if args.minimize and info is not None and ttext.startswith("sim"):
        from .triage import Minimizer, open_spec

        _spec, target = open_spec(ttext)
        try:
            res = Minimizer(target, info.signature).minimize(prog)
            prog, info = res.program, FindingInfo.from_finding(res.finding, res.program)
        finally:
            target.close()
    if info is None and (args.python or args.c):
        raise UsageError(f"{path} shows no finding on {ttext} (and carries no finding header): "
                         "a Python/C reproducer needs the finding to check; --pytest alone works")
    written = []
    if args.python:
        standalone = args.standalone or not ttext.startswith("sim")
        text = python_standalone(prog, info, ttext) if standalone else python_sim(prog, info, ttext)
        _write(Path(args.python), text, executable=True)
        written.append(f"{args.python} ({'stand-alone, real device' if standalone else 'simulator'})")
    if args.c:
        _write(Path(args.c), c_program(prog, info, ttext))
        written.append(f"{args.c} (C, real device)")
    if args.pytest:
        _write(Path(args.pytest), pytest_regression(prog, info, ttext))
        written.append(f"{args.pytest} (pytest regression)")
    what = f"{info.kind} at step {info.step}" if info else "no finding"
    print(f"migfuzz: {what}; {len(prog.ops)} ops -> " + ", ".join(written), file=sys.stderr)
    return EXIT_OK


def _write(path: Path, text: str, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        path.chmod(path.stat().st_mode | 0o111)


def add_parser(sub) -> None:
    if "export" in sub.choices:
        return
    from .triage import cli_errors

    p = sub.add_parser("export", help="write reproducers: stand-alone Python, C, pytest regression",
                       description="Turn a crash (or any program file) into reproducers a driver developer can "
                                   "run without migfuzz (--python, --c) and a regression test (--pytest).")
    p.add_argument("file")
    p.add_argument("--target", help="target spec (default: the crash's '# target:' line, else sim)")
    p.add_argument("--python", metavar="OUT.py",
                   help="Python reproducer (sim target: replays on the simulator from a migfuzz checkout; "
                        "kernel target: stand-alone, standard library only)")
    p.add_argument("--standalone", action="store_true",
                   help="with --python: the stand-alone real-device script even for a sim finding")
    p.add_argument("--c", metavar="OUT.c", help="C reproducer against a VFIO group device or an iommufd cdev")
    p.add_argument("--pytest", metavar="OUT.py", help="pytest regression test asserting no finding")
    p.add_argument("--minimize", action="store_true", help="minimize the program first (sim targets)")
    p.set_defaults(func=cli_errors(cmd_export))


# ----------------------------------------------------------------------------- templates

# The body of the stand-alone Python reproducer; the generator prepends constants and the program.
PY_KERNEL_BODY = r'''
# ---------------------------------------------------------------------------- device access


def _ioctl_table():
    machine = os.uname().machine
    return IOCTL_3BIT_DIR if machine.startswith(("ppc", "powerpc", "mips", "sparc", "alpha")) else IOCTL_GENERIC


IOC = _ioctl_table()


def _ioctl(fd, request, arg=0):
    """(errno, return value) of one ioctl; a bytearray argument receives the kernel's answer."""
    try:
        return 0, fcntl.ioctl(fd, request, arg)
    except OSError as e:
        return e.errno, -1


class OpenError(Exception):
    pass


def _checked(what, err):
    if err:
        raise OpenError("%s: %s (%s)" % (what, os.strerror(err), errno.errorcode.get(err, err)))


class VfioDevice:
    """One VFIO device fd; the methods return errno values (0 = success), never raise."""

    def __init__(self, name, device_fd, owned):
        self.name = name
        self.fd = device_fd
        self.owned = owned
        self.data_fds = set()
        self.flags = 0
        self.protocol = 0
        self.region_size = 0
        self.region_offset = 0
        self.bars = []
        err, payload = self.feature(FEATURE_GET | FEATURE_MIGRATION, bytes(8))
        if not err:
            self.protocol = 2
            self.flags = struct.unpack_from("<Q", payload)[0]
        else:
            region = self._find_migration_region()
            if region is not None:
                self.protocol = 1
                self.region_size, self.region_offset = region
        for index in range(6):
            err, info = self._region_info(index)
            if not err and info[2]:
                self.bars.append(info[3])

    # region info, with the capability chain
    def _region_info(self, index):
        argsz = REGION_INFO.size
        for _ in range(2):
            buf = bytearray(argsz)
            REGION_INFO.pack_into(buf, 0, argsz, 0, index, 0, 0, 0)
            err, _ = _ioctl(self.fd, IOC["VFIO_DEVICE_GET_REGION_INFO"], buf)
            if err:
                return err, None
            wanted, flags, _index, cap_offset, size, offset = REGION_INFO.unpack_from(buf)
            if wanted <= argsz:
                break
            argsz = wanted
        types, seen = [], set()
        at = cap_offset if flags & REGION_INFO_FLAG_CAPS else 0
        while at and at not in seen and REGION_INFO.size <= at <= len(buf) - CAP_HEADER.size:
            seen.add(at)
            cap_id, _version, nxt = CAP_HEADER.unpack_from(buf, at)
            if cap_id == REGION_INFO_CAP_TYPE and at + CAP_TYPE.size <= len(buf):
                _, _, _, cap_type, subtype = CAP_TYPE.unpack_from(buf, at)
                types.append((cap_type, subtype))
            at = nxt
        return 0, (flags, types, size, offset)

    def _find_migration_region(self):
        info = bytearray(DEVICE_INFO.size)
        DEVICE_INFO.pack_into(info, 0, DEVICE_INFO.size, 0, 0, 0, 0)
        if _ioctl(self.fd, IOC["VFIO_DEVICE_GET_INFO"], info)[0]:
            return None
        num_regions = DEVICE_INFO.unpack_from(info)[2]
        for index in range(PCI_NUM_REGIONS, num_regions):
            err, region = self._region_info(index)
            if not err and (REGION_TYPE_MIGRATION, REGION_SUBTYPE_MIGRATION) in region[1]:
                return region[2], region[3]
        return None

    # both protocols
    def reset(self):
        return _ioctl(self.fd, IOC["VFIO_DEVICE_RESET"])[0]

    def activity(self, seed):
        """For UART-like devices (mtty): write the scratch and transmit register of every BAR."""
        if self.protocol != 2:
            return
        err, state = self.get_state()
        if err or state not in RUNNING_STATES:
            return
        for port, bar in enumerate(self.bars):
            value = (seed + port) & 0xFF
            for register, byte in ((UART_SCR, value), (UART_TX, value ^ 0x5A)):
                try:
                    os.pwrite(self.fd, bytes([byte]), bar + register)
                except OSError:
                    pass

    def close_device(self):
        for fd in sorted(self.data_fds):
            self.close(fd)
        self.reset()
        for fd in [self.fd] + list(reversed(self.owned)):
            try:
                os.close(fd)
            except OSError:
                pass

    # v2
    def feature(self, flags, payload, argsz=None):
        if argsz is None:
            argsz = FEATURE_HDR.size + len(payload)
        argsz &= 0xFFFFFFFF
        buf = bytearray(max(FEATURE_HDR.size + len(payload), min(argsz, MAX_READ)))
        FEATURE_HDR.pack_into(buf, 0, argsz, flags & 0xFFFFFFFF)
        buf[FEATURE_HDR.size:FEATURE_HDR.size + len(payload)] = payload
        err, _ = _ioctl(self.fd, IOC["VFIO_DEVICE_FEATURE"], buf)
        return err, bytes(buf[FEATURE_HDR.size:])

    def get_state(self):
        err, out = self.feature(FEATURE_GET | FEATURE_MIG_DEVICE_STATE, MIG_STATE.pack(0, -1))
        return (err, -1) if err else (0, MIG_STATE.unpack_from(out)[0])

    def set_state(self, state):
        err, out = self.feature(FEATURE_SET | FEATURE_MIG_DEVICE_STATE, MIG_STATE.pack(state & 0xFFFFFFFF, -1))
        if err:
            return err, -1
        fd = MIG_STATE.unpack_from(out)[1]
        if fd >= 0:
            self.data_fds.add(fd)
        return 0, fd

    def data_size(self):
        err, out = self.feature(FEATURE_GET | FEATURE_MIG_DATA_SIZE, bytes(8))
        return (err, -1) if err else (0, struct.unpack_from("<Q", out)[0])

    def read(self, fd, n):
        if fd not in self.data_fds:
            return errno.EBADF, b""
        try:
            return 0, os.read(fd, max(0, min(n, MAX_READ)))
        except OSError as e:
            return e.errno, b""

    def write(self, fd, data):
        if fd not in self.data_fds:
            return errno.EBADF, 0
        try:
            return 0, os.write(fd, data)
        except OSError as e:
            return e.errno, 0

    def seek(self, fd):
        if fd not in self.data_fds:
            return errno.EBADF
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return 0
        except OSError as e:
            return e.errno

    def precopy_info(self, fd):
        if fd not in self.data_fds:
            return errno.EBADF, 0, 0
        buf = bytearray(PRECOPY_INFO.size)
        PRECOPY_INFO.pack_into(buf, 0, PRECOPY_INFO.size, 0, 0, 0)
        err, _ = _ioctl(fd, IOC["VFIO_MIG_GET_PRECOPY_INFO"], buf)
        if err:
            return err, 0, 0
        _argsz, _flags, initial, dirty = PRECOPY_INFO.unpack_from(buf)
        return 0, initial, dirty

    def close(self, fd):
        if fd not in self.data_fds:
            return errno.EBADF
        self.data_fds.discard(fd)
        try:
            os.close(fd)
            return 0
        except OSError as e:
            return e.errno

    # v1 (migration region)
    def _span_ok(self, offset, size):
        return self.protocol == 1 and 0 <= offset and 0 <= size and offset + size <= self.region_size

    def region_read(self, offset, size):
        if not self._span_ok(offset, size):
            return errno.EINVAL, b""
        try:
            return 0, os.pread(self.fd, size, self.region_offset + offset)
        except OSError as e:
            return e.errno, b""

    def region_write(self, offset, data):
        if not self._span_ok(offset, len(data)):
            return errno.EINVAL, 0
        try:
            return 0, os.pwrite(self.fd, data, self.region_offset + offset)
        except OSError as e:
            return e.errno, 0


_GROUPS = {}  # group number -> (container fd, group fd): two devices of one group share them


def open_group_device(group, name):
    """Legacy API: /dev/vfio/vfio + /dev/vfio/GROUP, SET_CONTAINER, SET_IOMMU, GET_DEVICE_FD."""
    if group in _GROUPS:
        container, group_fd = _GROUPS[group]
        owned = []
    else:
        container = os.open("/dev/vfio/vfio", os.O_RDWR | os.O_CLOEXEC)
        err, version = _ioctl(container, IOC["VFIO_GET_API_VERSION"])
        _checked("VFIO_GET_API_VERSION", err)
        if version != VFIO_API_VERSION:
            raise OpenError("VFIO API version %d, expected %d" % (version, VFIO_API_VERSION))
        group_fd = os.open("/dev/vfio/%d" % group, os.O_RDWR | os.O_CLOEXEC)
        status = bytearray(GROUP_STATUS.size)
        GROUP_STATUS.pack_into(status, 0, GROUP_STATUS.size, 0)
        _checked("VFIO_GROUP_GET_STATUS", _ioctl(group_fd, IOC["VFIO_GROUP_GET_STATUS"], status)[0])
        if not GROUP_STATUS.unpack_from(status)[1] & GROUP_FLAGS_VIABLE:
            raise OpenError("group %d is not viable (a device in it is bound to a host driver)" % group)
        arg = bytearray(struct.pack("<i", container))
        _checked("VFIO_GROUP_SET_CONTAINER", _ioctl(group_fd, IOC["VFIO_GROUP_SET_CONTAINER"], arg)[0])
        err = errno.ENODEV
        for iommu in (VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU):
            err, _ = _ioctl(container, IOC["VFIO_SET_IOMMU"], iommu)
            if not err:
                break
        _checked("VFIO_SET_IOMMU", err)
        _GROUPS[group] = (container, group_fd)
        owned = [container, group_fd]
    err, device_fd = _ioctl(group_fd, IOC["VFIO_GROUP_GET_DEVICE_FD"], bytearray(name.encode() + b"\0"))
    _checked("VFIO_GROUP_GET_DEVICE_FD " + name, err)
    return VfioDevice(name, device_fd, owned)


def open_cdev_device(cdev):
    """iommufd: /dev/vfio/devices/vfioN + /dev/iommu, BIND_IOMMUFD (no IOAS: no DMA is done)."""
    path = cdev if cdev.startswith("/") else "/dev/vfio/devices/" + cdev
    device_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    iommufd = os.open("/dev/iommu", os.O_RDWR | os.O_CLOEXEC)
    bind = bytearray(BIND_IOMMUFD.size)
    BIND_IOMMUFD.pack_into(bind, 0, BIND_IOMMUFD.size, 0, iommufd, 0)
    _checked("VFIO_DEVICE_BIND_IOMMUFD " + path, _ioctl(device_fd, IOC["VFIO_DEVICE_BIND_IOMMUFD"], bind)[0])
    return VfioDevice(path, device_fd, [iommufd])


# ---------------------------------------------------------------------------- replay


def errname(err):
    return errno.errorcode.get(err, str(err)) if err else "success"


def statename(state):
    if state is None or state < 0:
        return "?"
    if PROTO == "v2":
        return V2_STATE_NAMES[state] if state < len(V2_STATE_NAMES) else str(state)
    return V1_STATE_NAMES.get(state & 7, "?") if state < 8 else hex(state)


class View:
    """What the replay knows about one device: data fds (newest last), the captured stream, ..."""

    def __init__(self, dev):
        self.dev = dev
        self.fds = []
        self.saving = {}
        self.capture = bytearray()
        self.state = V2_RUNNING if PROTO == "v2" else V1_RUNNING
        self.ended = False
        self.pc_expect = -1
        self.pc_initial = -1

    def slot(self, index):
        return self.fds[-1 - index] if index < len(self.fds) else None

    def new_capture(self):
        self.capture = bytearray()
        self.ended = False
        self.pc_expect = self.pc_initial = -1


class Replay:
    def __init__(self, devices, out):
        self.views = [View(d) for d in devices]
        self.out = out

    def run_op(self, name, dev, args):
        """Run one op; returns a dict describing the device's answer, or None if skipped."""
        view = self.views[dev]
        handler = getattr(self, "%s_%s" % (PROTO, name), None) or getattr(self, "op_" + name)
        return handler(view, args)

    # -- shared
    def op_activity(self, view, a):
        view.dev.activity(a["seed"])
        view.pc_expect = -1
        return {"err": 0, "text": "activity seed=%d" % a["seed"]}

    def op_fault(self, view, a):
        arm = getattr(view.dev, "arm_fault", None)
        if arm is None:
            return {"err": 0, "text": "fault injection is not available on a real device: skipped"}
        arm(a["nth"], a["kind"])
        return {"err": 0, "text": "armed %s at internal step %d" % (a["kind"], a["nth"])}

    def op_mangle(self, view, a):
        mangle(view.capture, a["kind"], a["arg"])
        return {"err": 0, "text": "capture now %d bytes" % len(view.capture)}

    # -- v2
    def v2_reset(self, view, a):
        err = view.dev.reset()
        gerr, got = view.dev.get_state()
        view.state = got if not gerr else view.state
        view.pc_expect = view.pc_initial = -1
        return {"err": err, "gerr": gerr, "state": got,
                "text": "reset -> %s; state %s" % (errname(err), statename(got))}

    def v2_set(self, view, a):
        new = a["state"]
        err, fd = view.dev.set_state(new)
        gerr, got = view.dev.get_state()
        if fd >= 0:
            view.fds.append(fd)
            view.saving[fd] = new != V2_RESUMING
            if new != V2_RESUMING:
                view.new_capture()
        if not gerr:
            if got != view.state:
                view.pc_expect = -1
            view.state = got
        return {"err": err, "fd": fd, "gerr": gerr, "state": got,
                "text": "SET %s -> %s, data_fd %d; GET %s" % (statename(new), errname(err), fd, statename(got))}

    def v2_get(self, view, a):
        err, got = view.dev.get_state()
        return {"err": err, "gerr": err, "state": got, "text": "GET -> %s %s" % (errname(err), statename(got))}

    def _read(self, view, fd, n, r):
        err, data = view.dev.read(fd, n)
        r["err"], r["len"] = err, len(data)
        if err:
            return True
        if data:
            if view.ended:
                r["data_after_end"] = True
            view.capture += data
            if view.pc_expect >= 0:
                view.pc_expect -= len(data)
                if view.pc_expect < 0:
                    r["precopy_overrun"] = True
            return False
        if view.state == V2_STOP_COPY and n > 0:
            view.ended = True
        return n > 0

    def v2_read(self, view, a):
        fd = view.slot(a["fd"])
        if fd is None:
            return None
        r = {}
        self._read(view, fd, a["n"], r)
        r["text"] = "read fd %d n=%d -> %s, %d bytes" % (fd, a["n"], errname(r["err"]), r["len"])
        return r

    def v2_drain(self, view, a):
        fd = view.slot(a["fd"])
        if fd is None:
            return None
        r, total = {}, 0
        for _ in range(DRAIN_LIMIT):
            done = self._read(view, fd, DRAIN_CHUNK, r)
            total += r["len"]
            if r["err"] == errno.EINTR:
                continue
            if done or r.get("data_after_end") or r.get("precopy_overrun"):
                break
        else:
            r["hang"] = True
        r["text"] = "drain fd %d -> %d bytes, then %s%s" % (fd, total, errname(r["err"]) if r["err"] else "end",
                                                         " (the stream never ended)" if r.get("hang") else "")
        return r

    def v2_write(self, view, a):
        fd = view.slot(a["fd"])
        if fd is None:
            return None
        err, n = view.dev.write(fd, a["data"])
        return {"err": err, "len": n, "text": "write fd %d %d bytes -> %s, %d" % (fd, len(a["data"]), errname(err), n)}

    def v2_close(self, view, a):
        fd = view.slot(a["fd"])
        if fd is None:
            return None
        err = view.dev.close(fd)
        view.fds.remove(fd)
        return {"err": err, "text": "close fd %d -> %s" % (fd, errname(err))}

    def v2_seek(self, view, a):
        fd = view.slot(a["fd"])
        if fd is None:
            return None
        err = view.dev.seek(fd)
        return {"err": err, "text": "lseek fd %d -> %s" % (fd, errname(err))}

    def v2_precopy(self, view, a):
        fd = view.slot(a["fd"])
        if fd is None:
            return None
        err, initial, dirty = view.dev.precopy_info(fd)
        r = {"err": err, "text": "PRECOPY_INFO fd %d -> %s, initial %d, dirty %d" % (fd, errname(err), initial, dirty)}
        if not err:
            if 0 <= view.pc_initial < initial:
                r["initial_grew"] = True
            view.pc_initial = initial
            view.pc_expect = initial + dirty
        return r

    def v2_datasize(self, view, a):
        err, size = view.dev.data_size()
        return {"err": err, "text": "MIG_DATA_SIZE -> %s, %d" % (errname(err), size)}

    def v2_feature(self, view, a):
        payload = MIG_STATE.pack(max(view.state, 0) & 0xFFFFFFFF, -1)
        err, _ = view.dev.feature(a["flags"], payload, a["argsz"])
        return {"err": err, "text": "FEATURE flags %#x argsz %d -> %s" % (a["flags"], a["argsz"], errname(err))}

    def v2_transfer(self, view, a):
        dst = self.views[a["dst"]]
        fd = dst.slot(0)
        data = bytes(view.capture)
        if fd is None or dst.saving.get(fd) or dst.state != V2_RESUMING or not data:
            return None
        for piece in segments(data, a["seg"]):
            while piece:
                for _ in range(EINTR_RETRIES):
                    err, n = dst.dev.write(fd, piece)
                    if err != errno.EINTR:
                        break
                if not err and n <= 0:
                    err = errno.EIO  # no progress: treat as a failed write
                if err:
                    return {"err": err, "text": "transfer write of %d bytes -> %s" % (len(piece), errname(err))}
                piece = piece[n:]
        return {"err": 0, "text": "transferred %d bytes" % len(data)}

    # -- v1
    def _field(self, dev, name):
        off, size = V1_FIELDS[name]
        err, raw = dev.region_read(off, size)
        return err, (int.from_bytes(raw, "little") if not err and len(raw) == size else None)

    def _set_field(self, dev, name, value):
        off, size = V1_FIELDS[name]
        return dev.region_write(off, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))[0]

    def v1_reset(self, view, a):
        err = view.dev.reset()
        gerr, got = self._field(view.dev, "device_state")
        view.state = V1_RUNNING
        view.new_capture()
        return {"err": err, "gerr": gerr, "state": got,
                "text": "reset -> %s; device_state %s" % (errname(err), statename(got))}

    def v1_set(self, view, a):
        value = a["value"] & 0xFFFFFFFF
        cur = view.state
        err = self._set_field(view.dev, "device_state", value)
        gerr, got = self._field(view.dev, "device_state")
        if not err:
            new = value & 7
            saving_was, saving_now = cur in (2, 3), new in (2, 3)
            if saving_now and (not saving_was or (new & V1_RUNNING and not cur & V1_RUNNING)):
                view.new_capture()
        if got is not None:
            view.state = got & 7
        return {"err": err, "gerr": gerr if gerr else (errno.EIO if got is None else 0),
                "state": None if got is None else got & 7,
                "text": "device_state := %#x -> %s; reads %s" % (value, errname(err), statename(got))}

    def v1_get(self, view, a):
        err, got = self._field(view.dev, "device_state")
        return {"err": err, "gerr": err, "state": got, "text": "device_state -> %s %s" % (errname(err), statename(got))}

    def v1_rd(self, view, a):
        name = a["field"]
        if name == "device_state":
            return self.v1_get(view, a)
        err, value = self._field(view.dev, name)
        r = {"err": err, "value": value, "text": "%s -> %s %s" % (name, errname(err), value)}
        if name == "data_offset" and not err and value is not None and (value < V1_HEADER_SIZE or
                                                                       value > view.dev.region_size):
            r["window_outside"] = True
        return r

    def v1_wr(self, view, a):
        name = a["field"]
        if name == "device_state":
            return self.v1_set(view, {"value": a["value"]})
        err = self._set_field(view.dev, name, a["value"])
        r = {"err": err, "text": "%s := %#x -> %s" % (name, a["value"], errname(err))}
        if name == "reserved":
            rerr, value = self._field(view.dev, "reserved")
            r["value"] = value if not rerr else 0
        return r

    def _iteration(self, view, r):
        """One saving iteration (pending_bytes, data_offset, data_size, data); True when done."""
        dev = view.dev
        err, pending = self._field(dev, "pending_bytes")
        r["err"] = err
        if err or view.state not in (2, 3):
            return True
        if pending == 0:
            if view.state == 2:
                view.ended = True
            return True
        err, offset = self._field(dev, "data_offset")
        r["err"] = err
        if err:
            return True
        err, size = self._field(dev, "data_size")
        r["err"] = err
        if err:
            return True
        if offset < V1_HEADER_SIZE or offset + size > dev.region_size:
            r["window_outside"] = True
            return True
        if size == 0:
            return False
        err, data = dev.region_read(offset, size)
        r["err"] = err
        if err:
            return True
        if view.ended:
            r["data_after_end"] = True
            return True
        view.capture += data
        return False

    def v1_save(self, view, a):
        r = {}
        self._iteration(view, r)
        r["text"] = "save iteration -> %s: captured %d bytes" % (errname(r["err"]), len(view.capture))
        return r

    def v1_drain(self, view, a):
        r = {}
        for _ in range(DRAIN_LIMIT):
            if self._iteration(view, r):
                break
        else:
            r["hang"] = True
        r["text"] = "drain -> %s: captured %d bytes%s" % (errname(r["err"]), len(view.capture),
                                                         " (pending_bytes never reached 0)" if r.get("hang") else "")
        return r

    def v1_rdwin(self, view, a):
        err, offset = self._field(view.dev, "data_offset")
        if err or offset is None:
            return {"err": err or errno.EIO, "text": "data_offset -> %s" % errname(err)}
        err, data = view.dev.region_read(offset, a["n"])
        return {"err": err, "len": len(data), "text": "window read %d bytes -> %s" % (a["n"], errname(err))}

    def v1_wrwin(self, view, a):
        err, offset = self._field(view.dev, "data_offset")
        if err or offset is None:
            return {"err": err or errno.EIO, "text": "data_offset -> %s" % errname(err)}
        err, _ = view.dev.region_write(offset, a["data"])
        if not err:
            err = self._set_field(view.dev, "data_size", len(a["data"]))
        return {"err": err, "text": "window write %d bytes + data_size -> %s" % (len(a["data"]), errname(err))}

    def v1_transfer(self, view, a):
        dst = self.views[a["dst"]]
        data = bytes(view.capture)
        if dst.state != V1_RESUMING or not data:
            return None
        ddev = dst.dev
        for piece in segments(data, a["seg"]):
            while piece:
                err, offset = self._field(ddev, "data_offset")
                if not err and (offset < V1_HEADER_SIZE or offset >= ddev.region_size):
                    return {"err": 0, "window_outside": True,
                            "text": "data_offset %#x outside the region" % offset}
                if not err:
                    chunk = piece[:ddev.region_size - offset]
                    err, _ = ddev.region_write(offset, chunk)
                    if not err:
                        err = self._set_field(ddev, "data_size", len(chunk))
                if err == errno.EINTR:
                    continue
                if err:
                    return {"err": err, "text": "transfer chunk -> %s" % errname(err)}
                piece = piece[len(chunk):]
        return {"err": 0, "text": "transferred %d bytes" % len(data)}


def shows_up(test, arg, r):
    """Whether the device's answer ``r`` at the finding step shows the recorded defect."""
    if r is None:
        return False
    if test == "ok":
        return r.get("err") == 0
    if test == "failed":
        return bool(r.get("err"))
    if test == "errno":
        return r.get("err") == arg
    if test == "state_not":
        return r.get("state") != arg
    if test == "state_not_in":
        return bool(r.get("err")) and r.get("state") not in arg
    if test == "fd":
        return r.get("fd", -1) >= 0
    if test == "no_fd":
        return r.get("err") == 0 and r.get("fd", -1) < 0
    if test == "get_failed":
        return bool(r.get("gerr"))
    if test == "longer_than":
        return r.get("len", 0) > arg
    if test == "value_nonzero":
        return bool(r.get("value"))
    return bool(r.get(test))


def replay(devices, out=print, timeout=10.0):
    """Replay PROGRAM on the opened devices; returns the exit code (see the docstring)."""
    rep = Replay(devices, out)
    step_now = [None, 0.0]
    stop = threading.Event()

    def watchdog():
        while not stop.wait(0.05):
            step, since = step_now
            if step is not None and time.monotonic() - since > timeout:
                mine = step == FINDING["step"] and FINDING["test"] == "hang"
                out("       no return after %.0f s: the call hangs" % timeout)
                out("REPRODUCED: %s" % FINDING["kind"] if mine else "a different problem: a hang at step %d" % step)
                sys.stdout.flush()
                os._exit(1 if mine else 3)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        for step, (name, dev, args, text) in enumerate(PROGRAM):
            out("[%2d] %s" % (step, text))
            step_now[:] = [step, time.monotonic()]
            try:
                r = rep.run_op(name, dev, args)
            except Exception:  # noqa: BLE001 - a real device answers with errno values; this is unexpected
                step_now[0] = None
                out("       exception:\n" + traceback.format_exc().rstrip())
                if step == FINDING["step"] and FINDING["kind"] == "target-exception":
                    out("REPRODUCED: %s at step %d" % (FINDING["kind"], step))
                    return 1
                out("a different problem: an exception at step %d" % step)
                return 3
            step_now[0] = None
            out("       " + (r["text"] if r is not None else "skipped (nothing to act on)"))
            if step == FINDING["step"]:
                break
    finally:
        stop.set()
    if FINDING["test"] is None:
        out("the recorded finding (%s: expected %s; observed %s) cannot be judged from user space;"
            " compare the output above with it" % (FINDING["kind"], FINDING["expected"], FINDING["observed"]))
        return 3
    if shows_up(FINDING["test"], FINDING["arg"], r):
        out("REPRODUCED: %s at step %d (%s): expected %s; recorded %s"
            % (FINDING["kind"], FINDING["step"], FINDING["op"], FINDING["expected"], FINDING["observed"]))
        return 1
    out("not reproduced: step %d behaved as the protocol requires (expected %s)"
        % (FINDING["step"], FINDING["expected"]))
    return 0


def main(argv=None, devices=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("devices", nargs="*", metavar="GROUP DEVICE",
                        help="IOMMU group number and device name (mdev UUID or PCI address), once per device")
    parser.add_argument("--cdev", action="append", default=[], metavar="vfioN",
                        help="use an iommufd cdev (/dev/vfio/devices/vfioN) instead; once per device")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a call counts as hung")
    args = parser.parse_args(argv)
    if devices is None:
        pairs = args.devices
        if len(pairs) % 2:
            parser.error("give a GROUP and a DEVICE for every device")
        wanted = NDEVICES_USED
        have = len(pairs) // 2 + len(args.cdev)
        if have < wanted:
            parser.error("the program uses %d device(s); %d given" % (wanted, have))
        devices = []
        try:
            for i in range(0, len(pairs), 2):
                devices.append(open_group_device(int(pairs[i]), pairs[i + 1]))
            for cdev in args.cdev:
                devices.append(open_cdev_device(cdev))
        except (OSError, OpenError, ValueError) as e:
            print("cannot open the device: %s" % e, file=sys.stderr)
            return 2
        for d in devices:
            if d.protocol != (2 if PROTO == "v2" else 1):
                print("%s does not speak migration protocol %s" % (d.name, PROTO), file=sys.stderr)
                return 2
    try:
        return replay(devices, timeout=args.timeout)
    finally:
        for d in devices:
            close = getattr(d, "close_device", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - best effort cleanup
                    pass


if __name__ == "__main__":
    sys.exit(main())
'''

# The body of the C reproducer; the generator prepends constants and appends main().
C_BODY = r'''
/* ------------------------------------------------------------------------- device access */

#define HELPER static __attribute__((unused))
#define MAX_FDS 64
#define MAX_READ (1u << 20)

struct dev {
	const char *name;
	int fd;
	int owned[2];
	int nowned;
	int protocol;
	uint64_t mig_flags;
	uint64_t region_size, region_offset;
	uint64_t bars[6];
	int nbars;
	/* what the replay knows about the device */
	int fds[MAX_FDS];	/* data fds handed out and not closed, newest last */
	int saving[MAX_FDS];
	int nfds;
	long long state;
	unsigned char *cap;	/* the captured stream */
	size_t caplen, capsize;
	int ended;
	long long pc_expect, pc_initial;
};

/* The device's answer to one op. */
struct res {
	int skipped;
	int err;	/* errno of the op (0: success) */
	int gerr;	/* errno of the state read-back after it */
	int fd;		/* data_fd a SET returned, or -1 */
	long long state;	/* state read back */
	long long len;	/* bytes read or written */
	long long value;	/* v1: a field's value */
	int hang, precopy_overrun, initial_grew, data_after_end, window_outside;
};

HELPER struct res res0(void)
{
	struct res r;

	memset(&r, 0, sizeof(r));
	r.fd = -1;
	r.state = -1;
	return r;
}

HELPER const char *errname(int err)
{
	static char buf[32];

	switch (err) {
	case 0: return "success";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EINTR: return "EINTR";
	case EIO: return "EIO";
	case E2BIG: return "E2BIG";
	case EBADF: return "EBADF";
	case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case ENODEV: return "ENODEV";
	case EINVAL: return "EINVAL";
	case ENOTTY: return "ENOTTY";
	case ENOSPC: return "ENOSPC";
	case ESPIPE: return "ESPIPE";
	case ERANGE: return "ERANGE";
	case ENOMSG: return "ENOMSG";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ETIMEDOUT: return "ETIMEDOUT";
	default:
		snprintf(buf, sizeof(buf), "errno %d", err);
		return buf;
	}
}

HELPER const char *statename(long long state)
{
	static char buf[32];

	if (state < 0)
		return "?";
	if (PROTO_V2 && state < 8)
		return V2_STATE_NAMES[state];
	if (!PROTO_V2 && state < 8)
		return V1_STATE_NAMES[state];
	snprintf(buf, sizeof(buf), "%#llx", state);
	return buf;
}

HELPER int xioctl(int fd, unsigned long request, void *arg)
{
	return ioctl(fd, request, arg) < 0 ? errno : 0;
}

HELPER int xioctl_val(int fd, unsigned long request, unsigned long value, int *ret)
{
	int r = ioctl(fd, request, value);

	if (ret)
		*ret = r;
	return r < 0 ? errno : 0;
}

/* VFIO_DEVICE_FEATURE with any flags/argsz; the buffer covers both the payload and argsz. */
HELPER int feature(struct dev *d, uint32_t flags, const void *payload, size_t plen, uint32_t argsz,
			void *out, size_t outlen)
{
	size_t size = sizeof(struct mf_vfio_device_feature) + plen;
	struct mf_vfio_device_feature hdr;
	unsigned char *buf;
	int err;

	if (argsz > size)
		size = argsz < MAX_READ ? argsz : MAX_READ;
	buf = calloc(1, size);
	if (!buf)
		return ENOMEM;
	hdr.argsz = argsz;
	hdr.flags = flags;
	memcpy(buf, &hdr, sizeof(hdr));
	if (plen)
		memcpy(buf + sizeof(hdr), payload, plen);
	err = xioctl(d->fd, MF_VFIO_DEVICE_FEATURE, buf);
	if (out) {
		size_t n = size - sizeof(hdr);

		memcpy(out, buf + sizeof(hdr), n < outlen ? n : outlen);
	}
	free(buf);
	return err;
}

HELPER int get_state(struct dev *d, long long *state)
{
	struct mf_vfio_device_feature_mig_state ms = { 0, -1 };
	int err = feature(d, MF_FEATURE_GET | MF_FEATURE_MIG_DEVICE_STATE, &ms, sizeof(ms),
				sizeof(struct mf_vfio_device_feature) + sizeof(ms), &ms, sizeof(ms));

	*state = err ? -1 : (long long)ms.device_state;
	return err;
}

HELPER int set_state(struct dev *d, uint32_t state, int *fd)
{
	struct mf_vfio_device_feature_mig_state ms = { state, -1 };
	int err = feature(d, MF_FEATURE_SET | MF_FEATURE_MIG_DEVICE_STATE, &ms, sizeof(ms),
				sizeof(struct mf_vfio_device_feature) + sizeof(ms), &ms, sizeof(ms));

	*fd = err ? -1 : ms.data_fd;
	return err;
}

HELPER int region_info(int device_fd, uint32_t index, unsigned char **out, size_t *outlen)
{
	uint32_t argsz = sizeof(struct mf_vfio_region_info);
	int i;

	for (i = 0; i < 2; i++) {
		unsigned char *buf = calloc(1, argsz);
		struct mf_vfio_region_info *info = (struct mf_vfio_region_info *)buf;
		int err;

		if (!buf)
			return ENOMEM;
		info->argsz = argsz;
		info->index = index;
		err = xioctl(device_fd, MF_VFIO_DEVICE_GET_REGION_INFO, buf);
		if (err) {
			free(buf);
			return err;
		}
		if (info->argsz <= argsz || i == 1) {
			*out = buf;
			*outlen = argsz;
			return 0;
		}
		argsz = info->argsz;
		free(buf);
	}
	return EINVAL;
}

HELPER int has_migration_cap(const unsigned char *buf, size_t len)
{
	const struct mf_vfio_region_info *info = (const void *)buf;
	uint32_t at = info->flags & MF_REGION_INFO_FLAG_CAPS ? info->cap_offset : 0;
	int hops = 0;

	while (at && hops++ < 64 && at >= sizeof(*info) && at + sizeof(struct mf_vfio_info_cap_header) <= len) {
		struct mf_vfio_info_cap_header hdr;

		memcpy(&hdr, buf + at, sizeof(hdr));
		if (hdr.id == MF_REGION_INFO_CAP_TYPE && at + sizeof(struct mf_vfio_region_info_cap_type) <= len) {
			struct mf_vfio_region_info_cap_type t;

			memcpy(&t, buf + at, sizeof(t));
			if (t.type == MF_REGION_TYPE_MIGRATION && t.subtype == MF_REGION_SUBTYPE_MIGRATION)
				return 1;
		}
		if (hdr.next <= at)
			break;
		at = hdr.next;
	}
	return 0;
}

/* After opening: protocol (v2 feature, else a v1 region), BAR offsets. */
HELPER void probe(struct dev *d)
{
	uint64_t flags = 0;
	struct mf_vfio_device_info dinfo;
	uint32_t i;

	d->state = PROTO_V2 ? MF_STATE_RUNNING : MF_V1_RUNNING;
	if (!feature(d, MF_FEATURE_GET | MF_FEATURE_MIGRATION, &flags, sizeof(flags),
			sizeof(struct mf_vfio_device_feature) + sizeof(flags), &flags, sizeof(flags))) {
		d->protocol = 2;
		d->mig_flags = flags;
	} else {
		memset(&dinfo, 0, sizeof(dinfo));
		dinfo.argsz = sizeof(dinfo);
		if (!xioctl(d->fd, MF_VFIO_DEVICE_GET_INFO, &dinfo)) {
			for (i = MF_PCI_NUM_REGIONS; i < dinfo.num_regions; i++) {
				unsigned char *buf;
				size_t len;

				if (region_info(d->fd, i, &buf, &len))
					continue;
				if (has_migration_cap(buf, len)) {
					const struct mf_vfio_region_info *info = (const void *)buf;

					d->protocol = 1;
					d->region_size = info->size;
					d->region_offset = info->offset;
					free(buf);
					break;
				}
				free(buf);
			}
		}
	}
	for (i = 0; i < 6; i++) {
		unsigned char *buf;
		size_t len;

		if (region_info(d->fd, i, &buf, &len))
			continue;
		if (((const struct mf_vfio_region_info *)(const void *)buf)->size)
			d->bars[d->nbars++] = ((const struct mf_vfio_region_info *)(const void *)buf)->offset;
		free(buf);
	}
}

static int group_nums[2], group_fds[2], container_fds[2], ngroups;

/* Legacy API: /dev/vfio/vfio + /dev/vfio/GROUP, SET_CONTAINER, SET_IOMMU, GET_DEVICE_FD. */
HELPER int open_group_device(struct dev *d, int group, const char *name)
{
	struct mf_vfio_group_status status;
	char path[64];
	int container = -1, group_fd = -1, ret, err, i;

	d->name = name;
	for (i = 0; i < ngroups; i++) {
		if (group_nums[i] == group) {
			group_fd = group_fds[i];
			container = container_fds[i];
		}
	}
	if (group_fd < 0) {
		container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
		if (container < 0) {
			perror("open /dev/vfio/vfio");
			return -1;
		}
		err = xioctl_val(container, MF_VFIO_GET_API_VERSION, 0, &ret);
		if (err || ret != MF_VFIO_API_VERSION) {
			fprintf(stderr, "VFIO_GET_API_VERSION: %s, version %d\n", errname(err), ret);
			return -1;
		}
		snprintf(path, sizeof(path), "/dev/vfio/%d", group);
		group_fd = open(path, O_RDWR | O_CLOEXEC);
		if (group_fd < 0) {
			perror(path);
			return -1;
		}
		memset(&status, 0, sizeof(status));
		status.argsz = sizeof(status);
		err = xioctl(group_fd, MF_VFIO_GROUP_GET_STATUS, &status);
		if (err || !(status.flags & MF_GROUP_FLAGS_VIABLE)) {
			fprintf(stderr, "group %d: %s\n", group, err ? errname(err) :
				"not viable (a device in it is bound to a host driver)");
			return -1;
		}
		err = xioctl(group_fd, MF_VFIO_GROUP_SET_CONTAINER, &container);
		if (err) {
			fprintf(stderr, "VFIO_GROUP_SET_CONTAINER: %s\n", errname(err));
			return -1;
		}
		err = xioctl_val(container, MF_VFIO_SET_IOMMU, MF_VFIO_TYPE1v2_IOMMU, NULL);
		if (err)
			err = xioctl_val(container, MF_VFIO_SET_IOMMU, MF_VFIO_TYPE1_IOMMU, NULL);
		if (err) {
			fprintf(stderr, "VFIO_SET_IOMMU: %s\n", errname(err));
			return -1;
		}
		if (ngroups < 2) {
			group_nums[ngroups] = group;
			group_fds[ngroups] = group_fd;
			container_fds[ngroups++] = container;
		}
		d->owned[0] = container;
		d->owned[1] = group_fd;
		d->nowned = 2;
	}
	d->fd = ioctl(group_fd, MF_VFIO_GROUP_GET_DEVICE_FD, name);
	if (d->fd < 0) {
		fprintf(stderr, "VFIO_GROUP_GET_DEVICE_FD %s: %s\n", name, errname(errno));
		return -1;
	}
	probe(d);
	return 0;
}

/* iommufd: /dev/vfio/devices/vfioN + /dev/iommu, BIND_IOMMUFD (no DMA is done: no IOAS). */
HELPER int open_cdev_device(struct dev *d, const char *cdev)
{
	static char paths[2][128];
	static int n;
	struct mf_vfio_device_bind_iommufd bind;
	char *path = paths[n++ & 1];
	int iommufd, err;

	if (cdev[0] == '/')
		snprintf(path, sizeof(paths[0]), "%s", cdev);
	else
		snprintf(path, sizeof(paths[0]), "/dev/vfio/devices/%s", cdev);
	d->name = path;
	d->fd = open(path, O_RDWR | O_CLOEXEC);
	if (d->fd < 0) {
		perror(path);
		return -1;
	}
	iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (iommufd < 0) {
		perror("/dev/iommu");
		return -1;
	}
	memset(&bind, 0, sizeof(bind));
	bind.argsz = sizeof(bind);
	bind.iommufd = iommufd;
	err = xioctl(d->fd, MF_VFIO_DEVICE_BIND_IOMMUFD, &bind);
	if (err) {
		fprintf(stderr, "VFIO_DEVICE_BIND_IOMMUFD %s: %s\n", path, errname(err));
		return -1;
	}
	d->owned[0] = iommufd;
	d->nowned = 1;
	probe(d);
	return 0;
}

HELPER void close_device(struct dev *d)
{
	int i;

	if (d->fd <= 0)
		return;
	for (i = 0; i < d->nfds; i++)
		close(d->fds[i]);
	d->nfds = 0;
	ioctl(d->fd, MF_VFIO_DEVICE_RESET);
	close(d->fd);
	for (i = d->nowned - 1; i >= 0; i--)
		close(d->owned[i]);
	d->fd = -1;
	free(d->cap);
}

/* ------------------------------------------------------------------------- replay */

HELPER int slot(struct dev *d, int index)
{
	return index < d->nfds ? d->fds[d->nfds - 1 - index] : -1;
}

HELPER int is_saving(struct dev *d, int fd)
{
	int i;

	for (i = 0; i < d->nfds; i++)
		if (d->fds[i] == fd)
			return d->saving[i];
	return 0;
}

HELPER void capture_add(struct dev *d, const unsigned char *data, size_t n)
{
	if (d->caplen + n > d->capsize) {
		size_t size = d->capsize ? d->capsize : 4096;
		unsigned char *p;

		while (size < d->caplen + n)
			size *= 2;
		p = realloc(d->cap, size);
		if (!p) {
			fprintf(stderr, "out of memory\n");
			exit(2);
		}
		d->cap = p;
		d->capsize = size;
	}
	memcpy(d->cap + d->caplen, data, n);
	d->caplen += n;
}

HELPER void new_capture(struct dev *d)
{
	d->caplen = 0;
	d->ended = 0;
	d->pc_expect = d->pc_initial = -1;
}

/* How a transfer cuts the stream: 0 one write, < 1024 pieces of seg bytes, else
 * pseudo-random pieces of 1..64 bytes seeded by seg (xorshift32: the cut points
 * differ from migfuzz's, which uses Python's random.Random). */
struct cutter {
	uint32_t seg, rng;
};

HELPER size_t next_piece(struct cutter *c, size_t left)
{
	size_t n;

	if (c->seg == 0)
		return left;
	if (c->seg < 1024)
		n = c->seg;
	else {
		c->rng ^= c->rng << 13;
		c->rng ^= c->rng >> 17;
		c->rng ^= c->rng << 5;
		n = 1 + c->rng % 64;
	}
	return n < left ? n : left;
}

/* ---- ops both protocols share */

HELPER struct res op_activity(struct dev *d, uint32_t seed)
{
	struct res r = res0();
	long long state;
	int port, k;

	d->pc_expect = -1;
	if (d->protocol == 2 && !get_state(d, &state) && (state == MF_STATE_RUNNING || state == MF_STATE_RUNNING_P2P ||
							state == MF_STATE_PRE_COPY || state == MF_STATE_PRE_COPY_P2P)) {
		/* UART-like devices (mtty): scratch and transmit register of every BAR */
		for (port = 0; port < d->nbars; port++) {
			unsigned char value = (unsigned char)(seed + port);
			unsigned char bytes[2] = { value, (unsigned char)(value ^ 0x5a) };
			off_t regs[2] = { 7, 0 };

			for (k = 0; k < 2; k++)
				if (pwrite(d->fd, &bytes[k], 1, (off_t)d->bars[port] + regs[k]) < 0)
					continue;
		}
	}
	printf("       activity seed=%u\n", seed);
	return r;
}

HELPER struct res op_fault(struct dev *d, int nth, const char *kind)
{
	(void)d;
	printf("       fault injection (%s at step %d) is not available on a real device: skipped\n", kind, nth);
	return res0();
}

HELPER struct res op_mangle(struct dev *d, const char *kind, uint32_t arg)
{
	size_t n = d->caplen, chunk = MANGLE_CHUNK, nchunks, k, i;
	unsigned char *cap = d->cap;

	if (n) {
		nchunks = (n + chunk - 1) / chunk;
		k = arg % nchunks;
		if (!strcmp(kind, "truncate")) {
			d->caplen = n - 1 - arg % n;
		} else if (!strcmp(kind, "extend")) {
			for (i = 0; i < 1 + arg % 16; i++) {
				unsigned char b = (unsigned char)(arg + i);

				capture_add(d, &b, 1);
			}
		} else if (!strcmp(kind, "flip")) {
			cap[(arg >> 3) % n] ^= (unsigned char)(1u << (arg & 7));
		} else if (!strcmp(kind, "drop")) {
			size_t start = k * chunk, end = start + chunk < n ? start + chunk : n;

			memmove(cap + start, cap + end, n - end);
			d->caplen = n - (end - start);
		} else if (!strcmp(kind, "dup")) {
			size_t start = k * chunk, len = (start + chunk < n ? start + chunk : n) - start;
			unsigned char tmp[MANGLE_CHUNK];

			memcpy(tmp, cap + start, len);
			capture_add(d, tmp, len);	/* grow, then shift the tail */
			cap = d->cap;
			memmove(cap + start + len, cap + start, n - start);
			memcpy(cap + start, tmp, len);
		} else if (!strcmp(kind, "swap") && k + 1 < nchunks) {
			size_t a = k * chunk, b = a + chunk, end = b + chunk < n ? b + chunk : n;
			unsigned char tmp[2 * MANGLE_CHUNK];

			memcpy(tmp, cap + b, end - b);
			memcpy(tmp + (end - b), cap + a, chunk);
			memcpy(cap + a, tmp, end - a);
		}
	}
	printf("       capture now %zu bytes\n", d->caplen);
	return res0();
}

/* ---- protocol v2 */

HELPER struct res v2_reset(struct dev *d)
{
	struct res r = res0();

	r.err = xioctl_val(d->fd, MF_VFIO_DEVICE_RESET, 0, NULL);
	r.gerr = get_state(d, &r.state);
	if (!r.gerr)
		d->state = r.state;
	d->pc_expect = d->pc_initial = -1;
	printf("       reset -> %s; state %s\n", errname(r.err), statename(r.state));
	return r;
}

HELPER struct res v2_set(struct dev *d, uint32_t state)
{
	struct res r = res0();

	r.err = set_state(d, state, &r.fd);
	r.gerr = get_state(d, &r.state);
	if (r.fd >= 0 && d->nfds < MAX_FDS) {
		d->fds[d->nfds] = r.fd;
		d->saving[d->nfds++] = state != MF_STATE_RESUMING;
		if (state != MF_STATE_RESUMING)
			new_capture(d);
	}
	if (!r.gerr) {
		if (r.state != d->state)
			d->pc_expect = -1;
		d->state = r.state;
	}
	printf("       SET %s -> %s, data_fd %d; ", statename(state), errname(r.err), r.fd);
	printf("GET %s\n", statename(r.state));
	return r;
}

HELPER struct res v2_get(struct dev *d)
{
	struct res r = res0();

	r.err = r.gerr = get_state(d, &r.state);
	printf("       GET -> %s %s\n", errname(r.err), statename(r.state));
	return r;
}

/* One read(2) on a saving data_fd; returns 1 when the stream (temporarily) ended. */
HELPER int read_once(struct dev *d, int fd, size_t n, struct res *r)
{
	unsigned char *buf = malloc(n ? n : 1);
	ssize_t got;

	if (!buf) {
		r->err = ENOMEM;
		return 1;
	}
	got = read(fd, buf, n);
	r->err = got < 0 ? errno : 0;
	r->len = got < 0 ? 0 : got;
	if (got > 0) {
		if (d->ended)
			r->data_after_end = 1;
		capture_add(d, buf, (size_t)got);
		if (d->pc_expect >= 0) {
			d->pc_expect -= got;
			if (d->pc_expect < 0)
				r->precopy_overrun = 1;
		}
	} else if (got == 0 && d->state == MF_STATE_STOP_COPY && n > 0) {
		d->ended = 1;
	}
	free(buf);
	return got < 0 || (got == 0 && n > 0);
}

HELPER struct res v2_read(struct dev *d, int index, uint32_t n)
{
	struct res r = res0();
	int fd = slot(d, index);

	if (fd < 0) {
		r.skipped = 1;
		printf("       skipped: no data_fd in slot %d\n", index);
		return r;
	}
	read_once(d, fd, n < MAX_READ ? n : MAX_READ, &r);
	printf("       read fd %d n=%u -> %s, %lld bytes\n", fd, n, errname(r.err), r.len);
	return r;
}

HELPER struct res v2_drain(struct dev *d, int index)
{
	struct res r = res0();
	int fd = slot(d, index), i;
	long long total = 0;

	if (fd < 0) {
		r.skipped = 1;
		printf("       skipped: no data_fd in slot %d\n", index);
		return r;
	}
	for (i = 0; i < DRAIN_LIMIT; i++) {
		int done = read_once(d, fd, DRAIN_CHUNK, &r);

		total += r.len;
		if (r.err == EINTR)
			continue;
		if (done || r.data_after_end || r.precopy_overrun)
			break;
	}
	if (i == DRAIN_LIMIT)
		r.hang = 1;
	printf("       drain fd %d -> %lld bytes, then %s%s\n", fd, total, r.err ? errname(r.err) : "end",
		r.hang ? " (the stream never ended)" : "");
	return r;
}

HELPER struct res v2_write(struct dev *d, int index, const unsigned char *data, size_t len)
{
	struct res r = res0();
	int fd = slot(d, index);
	ssize_t n;

	if (fd < 0) {
		r.skipped = 1;
		printf("       skipped: no data_fd in slot %d\n", index);
		return r;
	}
	n = write(fd, data, len);
	r.err = n < 0 ? errno : 0;
	r.len = n < 0 ? 0 : n;
	printf("       write fd %d %zu bytes -> %s, %lld\n", fd, len, errname(r.err), r.len);
	return r;
}

HELPER struct res v2_close(struct dev *d, int index)
{
	struct res r = res0();
	int fd = slot(d, index), i, j;

	if (fd < 0) {
		r.skipped = 1;
		printf("       skipped: no data_fd in slot %d\n", index);
		return r;
	}
	r.err = close(fd) < 0 ? errno : 0;
	for (i = j = 0; i < d->nfds; i++) {
		if (d->fds[i] != fd) {
			d->fds[j] = d->fds[i];
			d->saving[j++] = d->saving[i];
		}
	}
	d->nfds = j;
	printf("       close fd %d -> %s\n", fd, errname(r.err));
	return r;
}

HELPER struct res v2_seek(struct dev *d, int index)
{
	struct res r = res0();
	int fd = slot(d, index);

	if (fd < 0) {
		r.skipped = 1;
		printf("       skipped: no data_fd in slot %d\n", index);
		return r;
	}
	r.err = lseek(fd, 0, SEEK_SET) < 0 ? errno : 0;
	printf("       lseek fd %d -> %s\n", fd, errname(r.err));
	return r;
}

HELPER struct res v2_precopy(struct dev *d, int index)
{
	struct res r = res0();
	struct mf_vfio_precopy_info info;
	int fd = slot(d, index);

	if (fd < 0) {
		r.skipped = 1;
		printf("       skipped: no data_fd in slot %d\n", index);
		return r;
	}
	memset(&info, 0, sizeof(info));
	info.argsz = sizeof(info);
	r.err = xioctl(fd, MF_VFIO_MIG_GET_PRECOPY_INFO, &info);
	if (r.err) {
		info.initial_bytes = info.dirty_bytes = 0;
	} else {
		if (d->pc_initial >= 0 && (long long)info.initial_bytes > d->pc_initial)
			r.initial_grew = 1;
		d->pc_initial = (long long)info.initial_bytes;
		d->pc_expect = (long long)(info.initial_bytes + info.dirty_bytes);
	}
	printf("       PRECOPY_INFO fd %d -> %s, initial %llu, dirty %llu\n", fd, errname(r.err),
		(unsigned long long)info.initial_bytes, (unsigned long long)info.dirty_bytes);
	return r;
}

HELPER struct res v2_datasize(struct dev *d)
{
	struct res r = res0();
	uint64_t size = 0;

	r.err = feature(d, MF_FEATURE_GET | MF_FEATURE_MIG_DATA_SIZE, &size, sizeof(size),
			sizeof(struct mf_vfio_device_feature) + sizeof(size), &size, sizeof(size));
	printf("       MIG_DATA_SIZE -> %s, %llu\n", errname(r.err), (unsigned long long)size);
	return r;
}

HELPER struct res v2_feature(struct dev *d, uint32_t argsz, uint32_t flags)
{
	struct res r = res0();
	struct mf_vfio_device_feature_mig_state ms = { (uint32_t)(d->state < 0 ? 0 : d->state), -1 };

	r.err = feature(d, flags, &ms, sizeof(ms), argsz, NULL, 0);
	printf("       FEATURE flags %#x argsz %u -> %s\n", flags, argsz, errname(r.err));
	return r;
}

HELPER struct res v2_transfer(struct dev *src, struct dev *dst, uint32_t seg)
{
	struct res r = res0();
	struct cutter c = { seg, seg ? seg : 1 };
	int fd = slot(dst, 0), tries;
	size_t pos = 0;

	if (fd < 0 || is_saving(dst, fd) || dst->state != MF_STATE_RESUMING || !src->caplen) {
		r.skipped = 1;
		printf("       skipped: nothing to transfer or no resuming data_fd\n");
		return r;
	}
	while (pos < src->caplen) {
		size_t piece = next_piece(&c, src->caplen - pos), done = 0;

		while (done < piece) {
			ssize_t n = -1;

			for (tries = 0; tries < EINTR_RETRIES; tries++) {
				n = write(fd, src->cap + pos + done, piece - done);
				if (n >= 0 || errno != EINTR)
					break;
			}
			r.err = n < 0 ? errno : (n == 0 ? EIO : 0);
			if (r.err) {
				printf("       transfer write of %zu bytes -> %s\n", piece - done, errname(r.err));
				return r;
			}
			done += (size_t)n;
		}
		pos += piece;
	}
	printf("       transferred %zu bytes\n", src->caplen);
	return r;
}

/* ---- protocol v1 (the migration region) */

/* Header fields are read and written with their native width (4 or 8 bytes), host byte order. */
HELPER int field_read(struct dev *d, int off, int size, uint64_t *value)
{
	uint32_t v32 = 0;
	ssize_t n;

	*value = 0;
	if (d->protocol != 1 || (uint64_t)(off + size) > d->region_size)
		return EINVAL;
	if (size == 4)
		n = pread(d->fd, &v32, 4, (off_t)(d->region_offset + (uint64_t)off));
	else
		n = pread(d->fd, value, 8, (off_t)(d->region_offset + (uint64_t)off));
	if (n < 0)
		return errno;
	if (size == 4)
		*value = v32;
	return n == size ? 0 : EIO;
}

HELPER int field_write(struct dev *d, int off, int size, uint64_t value)
{
	uint32_t v32 = (uint32_t)value;
	ssize_t n;

	if (d->protocol != 1 || (uint64_t)(off + size) > d->region_size)
		return EINVAL;
	if (size == 4)
		n = pwrite(d->fd, &v32, 4, (off_t)(d->region_offset + (uint64_t)off));
	else
		n = pwrite(d->fd, &value, 8, (off_t)(d->region_offset + (uint64_t)off));
	return n < 0 ? errno : 0;
}

HELPER int span_read(struct dev *d, uint64_t off, uint64_t size, unsigned char *buf)
{
	if (d->protocol != 1 || off + size > d->region_size)
		return EINVAL;
	return pread(d->fd, buf, size, (off_t)(d->region_offset + off)) < 0 ? errno : 0;
}

HELPER int span_write(struct dev *d, uint64_t off, const unsigned char *buf, uint64_t size)
{
	if (d->protocol != 1 || off + size > d->region_size)
		return EINVAL;
	return pwrite(d->fd, buf, size, (off_t)(d->region_offset + off)) < 0 ? errno : 0;
}

#define FIELD(name) V1_##name##_OFF, V1_##name##_SIZE

HELPER struct res v1_reset(struct dev *d)
{
	struct res r = res0();
	uint64_t value;

	r.err = xioctl_val(d->fd, MF_VFIO_DEVICE_RESET, 0, NULL);
	r.gerr = field_read(d, FIELD(DEVICE_STATE), &value);
	r.state = r.gerr ? -1 : (long long)value;
	d->state = MF_V1_RUNNING;
	new_capture(d);
	printf("       reset -> %s; device_state %s\n", errname(r.err), statename(r.state));
	return r;
}

HELPER struct res v1_set(struct dev *d, uint32_t value)
{
	struct res r = res0();
	long long cur = d->state;
	uint64_t got;

	r.err = field_write(d, FIELD(DEVICE_STATE), value);
	r.gerr = field_read(d, FIELD(DEVICE_STATE), &got);
	r.state = r.gerr ? -1 : (long long)(got & 7);
	if (!r.err) {
		long long now = value & 7;
		int saving_was = cur == 2 || cur == 3, saving_now = now == 2 || now == 3;

		if (saving_now && (!saving_was || ((now & MF_V1_RUNNING) && !(cur & MF_V1_RUNNING))))
			new_capture(d);
	}
	if (!r.gerr)
		d->state = r.state;
	printf("       device_state := %#x -> %s; ", value, errname(r.err));
	printf("reads %s\n", statename(r.state));
	return r;
}

HELPER struct res v1_get(struct dev *d)
{
	struct res r = res0();
	uint64_t value;

	r.err = r.gerr = field_read(d, FIELD(DEVICE_STATE), &value);
	r.state = r.err ? -1 : (long long)value;
	printf("       device_state -> %s %s\n", errname(r.err), statename(r.state));
	return r;
}

static const int v1_field_off[] __attribute__((unused)) = V1_FIELD_OFFSETS;
static const int v1_field_size[] __attribute__((unused)) = V1_FIELD_SIZES;
static const char *const v1_field_name[] __attribute__((unused)) = V1_FIELD_NAMES;

HELPER struct res v1_rd(struct dev *d, int field)
{
	struct res r = res0();
	uint64_t value;

	if (field == 0)
		return v1_get(d);
	r.err = field_read(d, v1_field_off[field], v1_field_size[field], &value);
	r.value = (long long)value;
	if (field == V1_DATA_OFFSET_INDEX && !r.err && (value < V1_HEADER_SIZE || value > d->region_size))
		r.window_outside = 1;
	printf("       %s -> %s %llu\n", v1_field_name[field], errname(r.err), (unsigned long long)value);
	return r;
}

HELPER struct res v1_wr(struct dev *d, int field, uint32_t value)
{
	struct res r = res0();
	uint64_t back;

	if (field == 0)
		return v1_set(d, value);
	r.err = field_write(d, v1_field_off[field], v1_field_size[field], value);
	if (field == V1_RESERVED_INDEX && !field_read(d, FIELD(RESERVED), &back))
		r.value = (long long)back;
	printf("       %s := %#x -> %s\n", v1_field_name[field], value, errname(r.err));
	return r;
}

/* One saving iteration (pending_bytes, data_offset, data_size, data); 1 when done. */
HELPER int iteration(struct dev *d, struct res *r)
{
	uint64_t pending, offset, size;
	unsigned char *buf;

	r->err = field_read(d, FIELD(PENDING_BYTES), &pending);
	if (r->err || (d->state != 2 && d->state != 3))
		return 1;
	if (pending == 0) {
		if (d->state == 2)
			d->ended = 1;
		return 1;
	}
	r->err = field_read(d, FIELD(DATA_OFFSET), &offset);
	if (r->err)
		return 1;
	r->err = field_read(d, FIELD(DATA_SIZE), &size);
	if (r->err)
		return 1;
	if (offset < V1_HEADER_SIZE || offset + size > d->region_size) {
		r->window_outside = 1;
		return 1;
	}
	if (size == 0)
		return 0;
	buf = malloc(size);
	if (!buf) {
		r->err = ENOMEM;
		return 1;
	}
	r->err = span_read(d, offset, size, buf);
	if (!r->err) {
		if (d->ended)
			r->data_after_end = 1;
		else
			capture_add(d, buf, size);
	}
	free(buf);
	return r->err || r->data_after_end;
}

HELPER struct res v1_save(struct dev *d)
{
	struct res r = res0();

	iteration(d, &r);
	printf("       save iteration -> %s: captured %zu bytes\n", errname(r.err), d->caplen);
	return r;
}

HELPER struct res v1_drain(struct dev *d)
{
	struct res r = res0();
	int i;

	for (i = 0; i < DRAIN_LIMIT; i++)
		if (iteration(d, &r))
			break;
	if (i == DRAIN_LIMIT)
		r.hang = 1;
	printf("       drain -> %s: captured %zu bytes%s\n", errname(r.err), d->caplen,
		r.hang ? " (pending_bytes never reached 0)" : "");
	return r;
}

HELPER struct res v1_rdwin(struct dev *d, uint32_t n)
{
	struct res r = res0();
	uint64_t offset;
	unsigned char *buf;

	r.err = field_read(d, FIELD(DATA_OFFSET), &offset);
	if (!r.err) {
		buf = malloc(n ? n : 1);
		r.err = buf ? span_read(d, offset, n, buf) : ENOMEM;
		free(buf);
	}
	printf("       window read %u bytes -> %s\n", n, errname(r.err));
	return r;
}

HELPER struct res v1_wrwin(struct dev *d, const unsigned char *data, size_t len)
{
	struct res r = res0();
	uint64_t offset;

	r.err = field_read(d, FIELD(DATA_OFFSET), &offset);
	if (!r.err)
		r.err = span_write(d, offset, data, len);
	if (!r.err)
		r.err = field_write(d, FIELD(DATA_SIZE), len);
	printf("       window write %zu bytes + data_size -> %s\n", len, errname(r.err));
	return r;
}

HELPER struct res v1_transfer(struct dev *src, struct dev *dst, uint32_t seg)
{
	struct res r = res0();
	struct cutter c = { seg, seg ? seg : 1 };
	size_t pos = 0;

	if (dst->state != MF_V1_RESUMING || !src->caplen) {
		r.skipped = 1;
		printf("       skipped: nothing to transfer or the destination is not resuming\n");
		return r;
	}
	while (pos < src->caplen) {
		size_t piece = next_piece(&c, src->caplen - pos), done = 0;

		while (done < piece) {
			uint64_t offset, room, chunk;

			r.err = field_read(dst, FIELD(DATA_OFFSET), &offset);
			if (!r.err && (offset < V1_HEADER_SIZE || offset >= dst->region_size)) {
				r.window_outside = 1;
				printf("       data_offset %#llx outside the region\n", (unsigned long long)offset);
				return r;
			}
			if (!r.err) {
				room = dst->region_size - offset;
				chunk = piece - done < room ? piece - done : room;
				r.err = span_write(dst, offset, src->cap + pos + done, chunk);
				if (!r.err)
					r.err = field_write(dst, FIELD(DATA_SIZE), chunk);
				if (!r.err)
					done += chunk;
			}
			if (r.err == EINTR)
				continue;
			if (r.err) {
				printf("       transfer chunk -> %s\n", errname(r.err));
				return r;
			}
		}
		pos += piece;
	}
	printf("       transferred %zu bytes\n", src->caplen);
	return r;
}

/* ------------------------------------------------------------------------- main */

static volatile sig_atomic_t current_step = -1;

HELPER void on_alarm(int sig)
{
	static const char msg[] = "       the call did not return: it hangs\n";
	int mine = current_step == FINDING_STEP && FINDING_IS_HANG;

	(void)sig;
	if (write(1, msg, sizeof(msg) - 1) < 0)
		_exit(3);
	if (mine) {
		static const char rep[] = "REPRODUCED: " FINDING_KIND " (hang)\n";

		if (write(1, rep, sizeof(rep) - 1) < 0)
			_exit(1);
	}
	_exit(mine ? 1 : 3);
}

static unsigned int timeout_s = 10;

HELPER void begin(int step, const char *text)
{
	printf("[%2d] %s\n", step, text);
	fflush(stdout);
	current_step = step;
	alarm(timeout_s);
}

HELPER void end(void)
{
	alarm(0);
	current_step = -1;
	fflush(stdout);
}

HELPER void usage(const char *argv0)
{
	fprintf(stderr, "usage: %s [-t SECONDS] GROUP DEVICE [GROUP DEVICE]\n"
		"       %s [-t SECONDS] --cdev vfioN [--cdev vfioM]\n"
		"GROUP is the IOMMU group number, DEVICE the mdev UUID or PCI address;\n"
		"the program uses %d device(s). Exit: 1 the finding showed up, 0 it did not,\n"
		"2 usage/setup error, 3 inconclusive or a different problem.\n", argv0, argv0, NDEVICES_USED);
}

HELPER int open_devices(int argc, char **argv, struct dev *d)
{
	int i, n = 0;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-t") && i + 1 < argc) {
			timeout_s = (unsigned int)atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--cdev") && i + 1 < argc) {
			if (n >= 2 || open_cdev_device(&d[n++], argv[++i]))
				return -1;
		} else if (i + 1 < argc && argv[i][0] >= '0' && argv[i][0] <= '9') {
			if (n >= 2 || open_group_device(&d[n++], atoi(argv[i]), argv[i + 1]))
				return -1;
			i++;
		} else {
			usage(argv[0]);
			return -1;
		}
	}
	if (n < NDEVICES_USED) {
		usage(argv[0]);
		return -1;
	}
	for (i = 0; i < n; i++) {
		if (d[i].protocol != (PROTO_V2 ? 2 : 1)) {
			fprintf(stderr, "%s does not speak migration protocol %s\n", d[i].name, PROTO_V2 ? "v2" : "v1");
			return -1;
		}
	}
	return 0;
}
'''
