"""The program commands of the CLI: ``repro``, ``show``, ``compile``, ``targets``, ``layout``.
Arguments are declared in ``fuzz.cli``; ``fuzz`` itself is ``fuzz.campaign``."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from harness.runtime import EXIT_FINDING, EXIT_OK
from harness.sim.bugs import BUGS

from . import crashfile, layout
from .codec import encode
from .errors import UsageError
from .findings import signature
from .program import Program
from .targets import TargetSpec, default_corpus, open_target, parse_target, require_opt_in
from .triage import format_trace, replay

# --------------------------------------------------------------------------- repro / show / compile


def read_program_arg(path_text: str, proto: str | None) -> tuple[Program, crashfile.Meta]:
    path = Path(path_text)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    return crashfile.read_program(path, proto)


def cmd_repro(args) -> int:
    meta = crashfile.read_meta(Path(args.file))
    ttext = args.target or meta.target or "sim"
    spec: TargetSpec = parse_target(ttext)
    require_opt_in(spec, args.i_know_this_resets_the_device, "the replay resets it")
    prog, _meta = read_program_arg(args.file, spec.proto or args.proto or None)
    started = time.monotonic()
    target = open_target(spec)
    try:
        if prog.proto != target.proto:
            raise UsageError(f"{args.file} is a {prog.proto} program; target {ttext} speaks {target.proto}")
        finding, trace = replay(target, prog)
    finally:
        target.close()
    sys.stdout.write(format_trace(prog, finding, trace, spec.text()))
    if finding is not None and meta.finding is not None:
        same = signature(finding, coarse=True) == signature(meta.finding, coarse=True)
        print(f"# {'the recorded finding' if same else 'a different finding than the recorded one'} "
              f"({meta.finding.kind}); replayed in {time.monotonic() - started:.2f} s")
    return EXIT_FINDING if finding else EXIT_OK


def cmd_show(args) -> int:
    prog, _meta = read_program_arg(args.file, args.proto)
    sys.stdout.write(prog.text())
    return EXIT_OK


def cmd_compile(args) -> int:
    """Text program -> binary (self-describing unless --raw)."""
    prog, meta = read_program_arg(args.file, None)
    raw = encode(prog)
    data = raw if args.raw else crashfile.binary_bytes(prog, meta.target, raw)
    if args.output:
        Path(args.output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    return EXIT_OK


def cmd_targets(args) -> int:
    print("sim                      simulator, protocol v2, flags STOP_COPY|P2P|PRE_COPY (0x7)")
    print("sim:flags=0x1|0x3|0x5|0x7  simulator with that v2 flag set")
    print("sim:proto=v1             simulator, protocol v1 (migration region)")
    print("sim:...,bug=NAME         simulator with one defect from the bug zoo (below)")
    print("kernel:dev=UUID|BDF[,dev2=...]  a real VFIO device (needs --i-know-this-resets-the-device)")
    print("mtty                     inside the rig guest: the real mtty driver (see `migfuzz vm`)")
    print()
    print("bug zoo:")
    for name, bug in BUGS.items():
        print(f"  {name:32} {bug.proto}  {bug.description}")
        print(f"  {'':32}     modelled on: {bug.modelled_on}; caught as: {bug.finding}")
    return EXIT_OK


# --------------------------------------------------------------------------- layout


def cmd_layout(args) -> int:
    """The stream layout of a target (fuzz.layout): the one kept in the corpus, else inferred and kept."""
    spec = parse_target(args.target)
    require_opt_in(spec, args.i_know_this_resets_the_device, "capturing its stream resets it")
    if args.corpus and Path(args.corpus).exists() and not Path(args.corpus).is_dir():
        raise UsageError(f"the corpus {args.corpus} exists and is not a directory")
    target = open_target(spec)
    try:
        corpus = Path(args.corpus) if args.corpus else default_corpus(target.proto)
        found = layout.for_target(target, spec.text(), corpus, refresh=args.refresh)
    finally:
        target.close()
    if args.json:
        print(json.dumps(found.data(), indent=1))
    else:
        sys.stdout.write(layout.describe(found))
        print(f"kept in {layout.layout_path(corpus, spec.text())}")
    return EXIT_OK
