"""migfuzz, the fuzzer: model, programs, executor, oracles, engine, tools and the command line.

:func:`main` is the ``migfuzz`` command. It starts by making a Ctrl-C that arrives while the
modules are still loading end the process quietly (exit 130), as one arriving later does,
then hands over to ``fuzz.cli``.
"""
import importlib
import os
import signal
import sys


def interrupted_while_loading(_signum, _frame) -> None:
    sys.stderr.write("migfuzz: interrupted\n")
    os._exit(130)


def main() -> int:
    signal.signal(signal.SIGINT, interrupted_while_loading)
    return importlib.import_module("fuzz.cli").main()
