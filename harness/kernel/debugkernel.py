"""The rig's debug kernel: Debian's ``linux-source-6.12`` built with KASAN, KCOV, lockdep and UBSAN.

``prepare()`` (``migfuzz vm prepare --kernel debug``) fills ``<rig cache>/debug``:

* the rig's host packages and the kernel build tools (:data:`BUILD_PACKAGES`), via apt-get
  when missing, as the stock rig installs QEMU;
* ``source/``: ``linux-source-6.12`` of the stock rig kernel's package version, unpacked once;
* ``build/.config``: ``make allnoconfig`` with :data:`CONFIG_FRAGMENT` (``debug.config``, the
  checked-in list of what the rig needs plus the sanitizers) as ``KCONFIG_ALLCONFIG``, then
  ``olddefconfig``; redone only when the fragment changes. Options the compiler cannot build
  are reported; missing :data:`REQUIRED` options fail the preparation;
* ``nice -n 19 make -jN bzImage modules`` out of tree in ``build/``: incremental, so an
  interrupted build resumes where it stopped; progress every :data:`PROGRESS_EVERY` seconds;
* ``root/``: the modules (``modules_install``, with depmod) and ``boot/vmlinuz-<release>``,
  laid out like the stock rig's root, so ``stage2.sh`` loads vfio, mdev and mtty the same way;
* an initramfs without modules (9p is built in).

``rig.json`` (a :class:`rig.Rig`) is written last; a warm call only checks that its files
exist and that the fragment has not changed since the build.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from harness.kernel import rig

CONFIG_FRAGMENT = rig.KERNEL_DIR / "debug.config"
BUILD_PACKAGES = ["flex", "bison", "bc", "libelf-dev", "libssl-dev", "gcc-12", "make", "xz-utils", "kmod"]
# Without these the debug kernel is not worth booting: the rig cannot run, or it has no senses.
REQUIRED = ("CONFIG_VIRTIO_PCI", "CONFIG_9P_FS", "CONFIG_VFIO", "CONFIG_SAMPLE_VFIO_MDEV_MTTY",
            "CONFIG_KASAN", "CONFIG_KCOV")
PROGRESS_EVERY = 30.0     # seconds between build progress lines
LOG_TAIL = 25             # build log lines shown when make fails
SOURCE_DIR = "linux-source-6.12"
CONFIG_HASH_FILE = ".migfuzz-config-sha256"
# kbuild's per-object lines: "  CC      mm/slub.o", "  CC [M]  samples/vfio-mdev/mtty.o"
COMPILED = re.compile(r"^\s+(?:CC|AS)(?: \[M\])?\s+(\S+\.o)$")
_OPTION = re.compile(r"^(CONFIG_\w+)=(.*)$|^# (CONFIG_\w+) is not set$")


def debug_dir() -> Path:
    return rig.cache_dir() / "debug"


def fragment_hash() -> str:
    return hashlib.sha256(CONFIG_FRAGMENT.read_bytes()).hexdigest()


def load() -> rig.Rig | None:
    """The built debug kernel, or None if the cache holds none, an incomplete one, or one built
    from another ``debug.config``."""
    meta = debug_dir() / "rig.json"
    stamp = debug_dir() / "build" / CONFIG_HASH_FILE
    if not meta.exists() or not stamp.exists() or stamp.read_text().strip() != fragment_hash():
        return None
    built = rig.Rig(**json.loads(meta.read_text()))
    return built if all(Path(p).exists() for p in (built.vmlinuz, built.initramfs, built.mtty_ko)) else None


def prepare() -> tuple[rig.Rig, float]:
    """Build (or resume building) the debug kernel if needed. Returns (rig, seconds of work this call did).

    Serialised by its own lock file: a build of many minutes must not hold up the stock rig."""
    debug_dir().mkdir(parents=True, exist_ok=True)
    with open(debug_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _prepare_locked()


def _prepare_locked() -> tuple[rig.Rig, float]:
    start = time.monotonic()
    built = load()
    if built is not None:
        initramfs = rig._build_initramfs(Path(built.root), built.kernel_version, debug_dir(), [])
        if str(initramfs) != built.initramfs:  # stage1.sh changed
            built.initramfs = str(initramfs)
            (debug_dir() / "rig.json").write_text(json.dumps(built.__dict__, indent=1))
        return built, time.monotonic() - start
    work = debug_dir()
    rig._ensure_host_packages(rig.HOST_PACKAGES + [p for p in BUILD_PACKAGES if p not in rig.HOST_PACKAGES])
    stock = rig.load()
    pkg_version = stock.package_version if stock else rig._newest_kernel()[1]
    source = work / SOURCE_DIR
    if not source.exists():
        _unpack_source(pkg_version, work, source)
    build = work / "build"
    build.mkdir(exist_ok=True)
    _configure(source, build)
    jobs = os.cpu_count() or 1
    build_start = time.monotonic()
    _make(source, build, jobs, ["bzImage", "modules"])
    build_seconds = time.monotonic() - build_start
    release = (build / "include/config/kernel.release").read_text().strip()
    root = work / "root"
    if root.exists():
        shutil.rmtree(root)  # modules of an older build must not linger
    rig._log("installing modules")
    rig._run(["make", "-s", "-C", str(source), f"O={build}", f"INSTALL_MOD_PATH={root}", "INSTALL_MOD_STRIP=1",
              "modules_install"], stdout=subprocess.DEVNULL)
    (root / "boot").mkdir(parents=True)
    vmlinuz = root / "boot" / f"vmlinuz-{release}"
    shutil.copy2(build / "arch/x86/boot/bzImage", vmlinuz)
    mtty_ko = root / "lib/modules" / release / "kernel/samples/vfio-mdev/mtty.ko"
    initramfs = rig._build_initramfs(root, release, work, [])
    built = rig.Rig(kernel_version=release, package_version=pkg_version, root=str(root), vmlinuz=str(vmlinuz),
                    initramfs=str(initramfs), mtty_ko=str(mtty_ko),
                    setup_seconds=round(time.monotonic() - start, 1))
    (work / "rig.json").write_text(json.dumps(built.__dict__, indent=1))
    rig._log(f"debug kernel {release} ready: make took {build_seconds:.0f} s, this preparation "
             f"{built.setup_seconds:.0f} s")
    return built, built.setup_seconds


def _unpack_source(pkg_version: str, work: Path, source: Path) -> None:
    """Download linux-source-6.12 and unpack its tree into `source` (via a temporary name, so an
    interrupted unpack is redone, never half used); the 150 MB .deb is deleted after."""
    debs = work / "debs"
    try:
        deb = rig._download([f"linux-source-6.12={pkg_version}"], debs)[0]
    except subprocess.CalledProcessError:
        rig._log(f"linux-source-6.12 {pkg_version} not downloadable; using the candidate version")
        deb = rig._download(["linux-source-6.12"], debs)[0]
    partial = work / f"{SOURCE_DIR}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    rig._log(f"unpacking {deb.name} (about a minute)")
    tarball = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    inner = subprocess.Popen(["tar", "-xO", "--wildcards", "./usr/src/linux-source-*.tar.xz"],
                             stdin=tarball.stdout, stdout=subprocess.PIPE)
    tarball.stdout.close()
    rig._run(["nice", "-n", "19", "tar", "-xJ", "--strip-components=1", "-C", str(partial)], stdin=inner.stdout)
    inner.stdout.close()
    for step in (tarball, inner):
        if step.wait() != 0:
            raise subprocess.CalledProcessError(step.returncode, step.args)
    partial.rename(source)
    shutil.rmtree(debs)


def requested_options(fragment: str) -> dict[str, str]:
    """CONFIG_X -> value ("y", "m", a string, or "n" for "is not set") of a config fragment."""
    out = {}
    for line in fragment.splitlines():
        m = _OPTION.match(line.strip())
        if m:
            out[m.group(1) or m.group(3)] = m.group(2) if m.group(1) else "n"
    return out


def missing_options(fragment: str, config: str) -> dict[str, tuple[str, str]]:
    """Options of `fragment` whose value `config` (a .config) does not have: name -> (wanted, got)."""
    have = requested_options(config)
    return {name: (value, have.get(name, "n")) for name, value in requested_options(fragment).items()
            if have.get(name, "n") != value}


def _configure(source: Path, build: Path) -> None:
    stamp = build / CONFIG_HASH_FILE
    digest = fragment_hash()
    if (build / ".config").exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return
    rig._log(f"configuring: allnoconfig + {CONFIG_FRAGMENT.name}")
    stamp.unlink(missing_ok=True)
    make = ["make", "-s", "-C", str(source), f"O={build}"]
    rig._run([*make, f"KCONFIG_ALLCONFIG={CONFIG_FRAGMENT}", "allnoconfig"], stdout=subprocess.DEVNULL)
    rig._run([*make, "olddefconfig"], stdout=subprocess.DEVNULL)
    missing = missing_options(CONFIG_FRAGMENT.read_text(), (build / ".config").read_text())
    for name, (wanted, got) in sorted(missing.items()):
        rig._log(f"config: {name}={wanted} did not build here (got {got})")
    required = sorted(set(missing) & set(REQUIRED))
    if required:
        raise RuntimeError(f"the debug kernel config lacks {', '.join(required)} (see the lines above)")
    stamp.write_text(digest + "\n")


def _make(source: Path, build: Path, jobs: int, targets: list[str]) -> None:
    """`nice -n 19 make -jN targets` with its output in build/build.log and a progress line every
    PROGRESS_EVERY seconds (objects compiled by this call, the latest one)."""
    log_path = build / "build.log"
    cmd = ["nice", "-n", "19", "make", "-C", str(source), f"O={build}", f"-j{jobs}", *targets]
    rig._log(f"building the debug kernel: {' '.join(cmd[:4])} -j{jobs} {' '.join(targets)} (log {log_path}); "
             "an interrupted build resumes here")
    start = last = time.monotonic()
    compiled, latest = 0, ""
    with open(log_path, "a", buffering=1) as log:  # line-buffered: the log is current when make fails
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            m = COMPILED.match(line.rstrip("\n"))
            if m:
                compiled += 1
                latest = m.group(1)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                rig._log(f"debug kernel: {compiled} objects compiled in {now - start:.0f} s (latest {latest})")
        code = proc.wait()
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL:]
        rig._log("make failed; the end of its log:\n" + "\n".join(tail))
        raise subprocess.CalledProcessError(code, cmd)
    rig._log(f"debug kernel: make finished, {compiled} objects compiled in {time.monotonic() - start:.0f} s")
