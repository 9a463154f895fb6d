"""The errors a command ends with: one line on stderr and an exit code (``harness.runtime.EXIT_*``).

Tools raise them; only the command line (``fuzz.cli.main``) prints and exits. Also caught
there: ``harness.base.TargetError`` and ``fuzz.program.ProgramError`` (usage, exit 2),
``harness.base.TargetUnavailable`` (exit 3), and ``OSError`` from reading or writing a
file the user named (exit 2, naming the file).
"""
from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit 2."""
