"""What can happen to a stream between save and resume: resegmentation and damage.

Standard library only, and self-contained: ``migfuzz export --python`` pastes this
module's source into stand-alone reproducers, so the fuzzer and a reproducer cut and
damage a stream byte for byte the same way.
"""
import random

MANGLE_KINDS = ("truncate", "extend", "flip", "drop", "dup", "swap")
MANGLE_CHUNK = 16  # drop/dup/swap work on chunks of this many bytes


def segments(data, seg):
    """How a transfer cuts the stream: 0 one write, < 1024 fixed pieces, else seeded random splits."""
    if seg == 0:
        return [data]
    if seg < 1024:
        return [data[i:i + seg] for i in range(0, len(data), seg)]
    rng = random.Random(seg)
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 64)
        out.append(data[i:i + n])
        i += n
    return out


def mangle(cap, kind, arg):
    """Damage a captured stream (a bytearray) in place, as transport would."""
    n = len(cap)
    if not n:
        return
    chunk = MANGLE_CHUNK
    nchunks = (n + chunk - 1) // chunk
    k = arg % nchunks
    if kind == "truncate":
        del cap[n - 1 - arg % n:]
    elif kind == "extend":
        cap += bytes((arg + i) & 0xFF for i in range(1 + arg % 16))
    elif kind == "flip":
        cap[(arg >> 3) % n] ^= 1 << (arg & 7)
    elif kind == "drop":
        del cap[k * chunk:(k + 1) * chunk]
    elif kind == "dup":
        cap[k * chunk:k * chunk] = cap[k * chunk:(k + 1) * chunk]
    elif kind == "swap" and k + 1 < nchunks:
        a, b = cap[k * chunk:(k + 1) * chunk], cap[(k + 1) * chunk:(k + 2) * chunk]
        cap[k * chunk:(k + 2) * chunk] = b + a
