"""migfuzz, the fuzzer: model, programs, executor, oracles, engine, tools and the command line.

:func:`main` is the ``migfuzz`` command. A Ctrl-C ends it the same way wherever it arrives:
one line, exit 130 (:func:`exit_interrupted`). While the modules load, that function is the
SIGINT handler itself; once ``fuzz.cli`` runs, the KeyboardInterrupt it catches ends here.
"""
import importlib
import os
import signal
import sys

from harness.runtime import EXIT_INTERRUPTED

# The version: pyproject.toml reads it from here (setuptools' dynamic attr), --version and the
# SARIF driver print it. A constant, not importlib.metadata: that import took 30 ms of every
# start-up on the host, and the rig's TCG guest, which starts a campaign at every boot, runs
# Python 15-20 times slower.
__version__ = "0.1.0"


def exit_interrupted(_signum=None, _frame=None) -> None:
    """Say so and end with exit 130, now. ``os._exit`` because a normal exit after a caught
    KeyboardInterrupt can still end by SIGINT (exit -2): CPython kills the process with the
    signal at shutdown when any interpreter-level code run saw the interrupt unhandled."""
    try:
        sys.stdout.flush()
    except (AttributeError, OSError, ValueError):  # no stdout, a closed pipe: the line below still goes out
        pass
    os.write(2, b"migfuzz: interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def main() -> int:
    signal.signal(signal.SIGINT, exit_interrupted)
    return importlib.import_module("fuzz.cli").main()
