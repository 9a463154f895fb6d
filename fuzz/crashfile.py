"""The files migfuzz writes and reads programs in: crash files, reproducers, binaries. One module.

Three forms of a program file:

* **text** (``migfuzz-program 1 v1|v2`` then one op per line; ``fuzz.program``). Comment
  lines (``#``) before it are free text for people, except one:
  ``# migfuzz-data: {JSON}``, the file's metadata as data: format version, target,
  protocol, and for a crash the finding (kind, step, arc, the claim as a value, ...) and
  its signature. Readers use only that line; the other comments render it.
* **binary, self-describing**: the line ``#migfuzz-binary 1 v1|v2 TARGET`` then the
  binary form (``fuzz.codec``). Written by ``minimize -o X.bin`` and ``compile``.
* **raw binary**: the codec's bytes alone, exactly what libFuzzer mutated (its corpus and
  ``crash-<sha1>`` artifacts). Its protocol comes from the companion ``<name>.txt``
  migfuzz writes next to every crash, else from the caller (``--proto``/``--target``).

A file that is text (UTF-8, printable) is read as a text program, so a damaged header is
an error naming the line, never a binary program run by accident; the exception is a file
named the way libFuzzer names its inputs (``crash-<sha1>`` and the other artifact prefixes
without a ``.txt`` suffix, or a bare 40-digit sha1 in a corpus), whose bytes are the raw
binary form even when they happen to be printable.

Crash files are written durably (:func:`save_finding`): the ``.txt`` first (it alone
holds the target and the whole program), then the raw binary, each through a unique
temporary file, fsync and rename, then the directory is fsync'ed. If the crash directory
cannot be written, the finding goes to a fallback directory and the caller is told where.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

from harness.runtime import CHECKS

from .codec import decode
from .findings import Finding, signature
from .program import TEXT_MAGIC, Program, ProgramError, format_program, parse_program

DATA_PREFIX = "# migfuzz-data: "
DATA_VERSION = 1
BINARY_MAGIC = "#migfuzz-binary"
BINARY_VERSION = 1
FALLBACK_DIR = Path(tempfile.gettempdir()) / f"migfuzz-crashes-{os.getuid()}"


class Meta(NamedTuple):
    """What a program file records about itself (every field may be empty)."""

    target: str = ""
    proto: str = ""
    finding: Finding | None = None
    signature: str = ""


# ----------------------------------------------------------------------------- reading


def looks_like_text(data: bytes) -> bool:
    """UTF-8 and printable (tabs, newlines allowed): a text program, never a binary one."""
    if not data:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n\ufeff" for c in text)


def is_libfuzzer_input(path: Path) -> bool:
    """Named like a libFuzzer input or artifact: its bytes are the raw binary form."""
    name = path.name
    if name.endswith(".txt") or name.endswith(".tmp"):
        return False
    return name.startswith(ARTIFACT_PREFIXES) or (len(name) == 40 and all(c in "0123456789abcdef" for c in name))


def parse_meta(text: str) -> Meta:
    """The ``# migfuzz-data:`` line of a text file (Meta() if it has none or it is damaged)."""
    for line in text.splitlines():
        if line.startswith(DATA_PREFIX):
            try:
                data = json.loads(line[len(DATA_PREFIX):])
                finding = Finding.from_data(data["finding"]) if data.get("finding") else None
                return Meta(str(data.get("target", "")), str(data.get("proto", "")), finding,
                            str(data.get("signature", "")))
            except (ValueError, KeyError, TypeError):
                return Meta()
        if line.strip() and not line.startswith("#"):
            break
    return Meta()


def companion_txt(path: Path) -> Path | None:
    """The annotated .txt next to a raw binary crash (or the file itself if it is a .txt)."""
    if path.suffix == ".txt":
        return path
    txt = path.with_name(path.name + ".txt")
    return txt if txt.is_file() else None


def read_meta(path: Path) -> Meta:
    """A file's metadata: its own (text or self-describing binary), else its companion .txt's."""
    try:
        data = path.read_bytes()
    except OSError:
        return Meta()
    if data.startswith(BINARY_MAGIC.encode()):
        head = data.split(b"\n", 1)[0].decode("utf-8", "replace").split(None, 3)
        return Meta(head[3] if len(head) > 3 else "", head[2] if len(head) > 2 else "")
    if looks_like_text(data) and not is_libfuzzer_input(path):
        return parse_meta(data.decode("utf-8"))
    txt = companion_txt(path)
    if txt is not None and txt != path:
        try:
            return parse_meta(txt.read_text(errors="replace"))
        except OSError:
            return Meta()
    return Meta()


def read_program(path: Path, proto: str | None = None) -> tuple[Program, Meta]:
    """The program in a file of any of the three forms, and its metadata.

    ``proto`` is what the caller needs (a target's protocol) or None. Raises ProgramError:
    unreadable, a text that is not a program (with the line), a protocol that differs from
    ``proto``, or a raw binary whose protocol nobody knows."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ProgramError(f"{path}: is a directory, not a program file") from None
    except OSError as e:
        raise ProgramError(f"{path}: {e.strerror or e}") from None
    if data.startswith(BINARY_MAGIC.encode()):
        head, _, body = data.partition(b"\n")
        words = head.decode("utf-8", "replace").split(None, 3)
        if len(words) < 3 or words[1] != str(BINARY_VERSION) or words[2] not in ("v1", "v2"):
            raise ProgramError(f"{path}: line 1: expected '{BINARY_MAGIC} {BINARY_VERSION} v1|v2 [TARGET]'")
        meta = Meta(words[3] if len(words) > 3 else "", words[2])
        prog = decode(body, words[2])
    elif (looks_like_text(data) or data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(TEXT_MAGIC.encode())) \
            and not is_libfuzzer_input(path):
        try:
            text = data.decode("utf-8").lstrip("\ufeff")
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise ProgramError(f"{path}: line {line}: not UTF-8 text (byte {e.start})") from None
        try:
            prog = parse_program(text)
        except ProgramError as e:
            raise ProgramError(f"{path}: {e}") from None
        meta = parse_meta(text)
    elif not data:
        raise ProgramError(f"{path}: empty file")
    else:
        meta = read_meta(path)
        known = meta.proto or proto
        if not known:
            raise ProgramError(f"{path}: a raw binary program records no protocol (no {path.name}.txt next to "
                               "it): give --proto v1|v2 or a --target")
        prog = decode(data, known)
    if proto and prog.proto != proto:
        raise ProgramError(f"{path} is a {prog.proto} program; the target speaks {proto}")
    return prog, meta


# ----------------------------------------------------------------------------- writing


def data_line(target: str, proto: str, finding: Finding | None = None, sig: str = "") -> str:
    data = {"version": DATA_VERSION, "target": target, "proto": proto}
    if finding is not None:
        data["finding"] = finding.data()
        data["signature"] = sig or signature(finding)
    return DATA_PREFIX + json.dumps(data, sort_keys=True)


def program_text(prog: Program, target: str, finding: Finding | None = None, trace=(), title: str = "",
                 notes=(), sig: str = "") -> str:
    """A text program file: a readable comment header, the data line, then the program."""
    lines = []
    if finding is not None:
        sig = sig or signature(finding)
        lines += [
            f"# {title or 'migfuzz finding'}: {finding.kind}",
            f"# target: {target}",
            f"# step {finding.step}: {finding.op}",
            f"# arc: {finding.arc}",
            f"# expected: {finding.expected}",
            f"# observed: {finding.observed}",
            f"# claim: {claim_text(finding)}",
            f"# signature: {sig}",
        ]
    else:
        lines.append(f"# target: {target}")
    lines += [f"# {note}" for note in notes]
    if trace:
        lines += ["#", "# trace:"] + [f"#   [{step}] {text}" for step, text in trace]
    if finding is not None and finding.detail:
        lines += ["#", "# detail:"] + [f"#   {ln}" for ln in finding.detail.rstrip().splitlines()]
    lines.append(data_line(target, prog.proto, finding, sig))
    return "\n".join(lines) + "\n" + format_program(prog)


def claim_text(finding: Finding) -> str:
    test, arg = finding.check
    if test is None:
        return "not checkable from user space"
    return CHECKS[test] + ("" if arg is None else f" ({arg})")


def binary_bytes(prog: Program, target: str, raw: bytes) -> bytes:
    """The self-describing binary form of ``prog`` (``raw`` is its codec form)."""
    return f"{BINARY_MAGIC} {BINARY_VERSION} {prog.proto} {target}\n".encode() + raw


def write_durably(path: Path, content: bytes) -> None:
    """Write through a unique temporary file in the same directory, fsync, rename."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the renames themselves survive a power loss
    finally:
        os.close(dir_fd)


def crash_name(data: bytes) -> str:
    return f"crash-{hashlib.sha1(data).hexdigest()}"


def save_finding(crashes: Path, data: bytes, prog: Program, finding: Finding, trace, target: str,
                 fallback: Path = FALLBACK_DIR) -> tuple[Path, str]:
    """Write crash-<sha1>.txt then crash-<sha1> durably; returns (binary's path, warning or "").

    If ``crashes`` cannot be written, the finding goes to ``fallback`` and the warning says
    so; OSError only if neither can be written."""
    text = program_text(prog, target, finding, trace).encode()
    warning = ""
    for directory in (crashes, fallback):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / crash_name(data)
            write_durably(path.with_name(path.name + ".txt"), text)
            write_durably(path, data)
            fsync_dir(directory)
            return path, warning
        except OSError as e:
            if directory == fallback:
                raise
            warning = f"cannot write to {crashes} ({e.strerror or e}); the finding went to {fallback} instead"
    raise AssertionError("unreachable")


def is_artifact(path: Path) -> bool:
    return path.name.startswith(ARTIFACT_PREFIXES) and not path.name.endswith(".tmp")


ARTIFACT_PREFIXES = ("crash-", "libfuzzer-", "timeout-", "oom-", "leak-", "slow-unit-")


def crash_files(directory: Path) -> list[Path]:
    """Crash inputs in a directory: each binary (with or without its .txt) and lone .txt files.

    Only libFuzzer/migfuzz artifact names count (crash-*, libfuzzer-*, timeout-*, oom-*,
    leak-*, slow-unit-*); temporaries (*.tmp) and sub-directories are skipped."""
    out = []
    names = {p.name for p in directory.iterdir()}
    for p in sorted(directory.iterdir()):
        if not p.is_file() or not is_artifact(p):
            continue
        if p.suffix == ".txt" and p.name[:-4] in names:
            continue  # the companion of a binary
        out.append(p)
    return out


__all__ = ["TEXT_MAGIC", "Meta", "crash_files", "program_text", "read_meta", "read_program", "save_finding"]
