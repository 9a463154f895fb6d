#!/usr/bin/env python3
"""libFuzzer entry point: migration protocol v2 on the simulator (STOP_COPY|P2P|PRE_COPY).

    python3 fuzz_targets/v2_sim_fuzzer.py [libFuzzer flags] [CORPUS_DIR ...]
    MIGFUZZ_TARGET=sim:bug=v2-error-requestable python3 fuzz_targets/v2_sim_fuzzer.py -runs=20000

A finding raises an exception: libFuzzer saves the input as crash-<sha1>
(`migfuzz triage . --target sim` groups and minimizes them).
"""
import sys
from pathlib import Path

if not getattr(sys, "frozen", False):  # run from a checkout: use that checkout's migfuzz
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.engine import EntryPoint  # noqa: E402  (the engine `migfuzz fuzz` runs, in libFuzzer entry mode)

ENTRY = EntryPoint("sim:proto=v2,flags=0x7")


def TestOneInput(data: bytes) -> None:  # noqa: N802 - libFuzzer's name
    ENTRY.test_one_input(data)


if __name__ == "__main__":
    ENTRY.main(sys.argv)
