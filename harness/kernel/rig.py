"""A Debian 6.12 guest with the real ``mtty`` migration driver, booted under QEMU.

``prepare()`` builds everything once into a cache directory without touching
the host's kernel or initrd (the host is left untouched):

* host tools (QEMU, static busybox, kmod, a compiler) via apt-get if missing;
* ``apt-get download`` of the newest ``linux-image-6.12.N+deb12-amd64`` that
  also has headers, its headers, the common headers and kbuild, ``dpkg -x``'d
  into ``<cache>/root``;
* ``samples/vfio-mdev/mtty.c`` streamed out of ``linux-source-6.12`` and built
  out of tree into ``<cache>/mtty/mtty.ko``; ``depmod -b <cache>/root``;
* an initramfs (static busybox + the 9p modules) that mounts the host's root
  read-only over 9p and switches to ``stage2.sh`` on it.

``run_guest(command, timeout)`` boots it; in the guest ``stage2.sh`` loads the
VFIO stack and mtty, creates mtty-2 instances and runs ``command`` (a shell
command, cwd = the project root, seen at the same path as on the host) with:

* ``MIGFUZZ_MTTY`` = ``"uuid:group,uuid:group,..."``, one per instance;
* ``MIGFUZZ_RESULTS`` = guest path of a writable share, ``GuestResult.results_dir``
  on the host.
* ``MIGFUZZ_FLIGHT`` = sysfs path of the flight recorder's shared memory
  (``flight.py``), whose host side is ``<results_dir>/flight.bin``.

``MIGFUZZ_QEMU_CPU`` overrides the TCG CPU model (default ``max``).

The command line is ``migfuzz vm prepare|status|run|...`` (``fuzz.vm``).
"""
from __future__ import annotations

import compileall
import fcntl
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.kernel import flight
from harness.kernel.kmsg import find_splats

PROJECT_ROOT = Path(__file__).resolve().parents[2]
KERNEL_DIR = Path(__file__).resolve().parent
GUEST_PACKAGES = ("fuzz", "harness")  # what the guest imports from the project tree
STAGE1 = KERNEL_DIR / "stage1.sh"
STAGE2 = KERNEL_DIR / "stage2.sh"

HOST_PACKAGES = ["qemu-system-x86", "busybox-static", "kmod", "xz-utils", "make", "gcc-12",
                 "libelf1", "libssl3", "zlib1g", "coreutils"]
# Modules the initramfs needs to mount a 9p share (virtio-pci is built in).
NINEP_MODULES = ["9pnet_virtio", "9p"]
MTTY_SOURCE = "samples/vfio-mdev/mtty.c"
KERNEL_ARGS = ("console=ttyS0 loglevel=5 panic_on_warn=1 oops=panic panic=-1 softlockup_panic=1 "
               "mitigations=off rdinit=/init")
KEEP_RESULTS = 50
# The guest mounts its own filesystems here, hiding the host's (see stage2.sh).
GUEST_MOUNTS = ("/proc", "/sys", "/dev", "/run")
MARK_READY, MARK_DONE, MARK_FAILED = "MIGFUZZ-READY", "MIGFUZZ-DONE", "MIGFUZZ-SETUP-FAILED"
FLIGHT_SLOT = 0x10  # PCI slot of the flight recorder's ivshmem device on the guest's root bus


def cache_dir() -> Path:
    return Path(os.environ.get("MIGFUZZ_CACHE") or Path.home() / ".cache/migfuzz/rig")


@dataclass
class Rig:
    """What a prepared cache holds (persisted as ``<cache>/rig.json``)."""

    kernel_version: str     # e.g. "6.12.117+deb12-amd64"
    package_version: str    # e.g. "6.12.117-1~deb12u1"
    root: str               # dpkg -x root: boot/, lib/modules/, usr/src/
    vmlinuz: str
    initramfs: str
    mtty_ko: str
    setup_seconds: float    # wall time of the preparation that filled the cache


@dataclass
class GuestResult:
    exit_status: int | None          # the command's exit status; None if it never finished
    console: str                     # the serial console log (kernel + stage scripts)
    output: str                      # the command's stdout and stderr
    splats: list[str]                # WARN/BUG/oops/soft lockup/lockdep lines seen on the console
    results_dir: Path                # host side of the guest's MIGFUZZ_RESULTS
    accel: str
    timed_out: bool
    setup_failure: str | None        # stage-1/2 setup error, if any
    mtty: list[tuple[str, int]] = field(default_factory=list)  # (uuid, iommu group) per instance
    setup_seconds: float = 0.0       # preparation work done by this call (0 when cached)
    boot_seconds: float | None = None      # QEMU start -> instances ready
    command_seconds: float | None = None   # instances ready -> command finished

    @property
    def splat(self) -> bool:
        return bool(self.splats)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.splats and not self.timed_out


def _log(msg: str) -> None:
    print(f"[rig] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


# ---------------------------------------------------------------------------- prepare


def _ensure_host_packages(packages: list[str] = HOST_PACKAGES) -> None:
    def installed(pkg: str) -> bool:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        return r.returncode == 0 and r.stdout.endswith(" installed")

    missing = [p for p in packages if not installed(p)]
    if not missing:
        return
    _log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(cmd, env=env).returncode != 0:
        _run(["apt-get", "update", "-q"], env=env)
        _run(cmd, env=env)


def _newest_kernel() -> tuple[str, str]:
    """(kernel version, package version) of the newest 6.12 deb12 image that has headers."""
    def versions(kind: str) -> set[str]:
        out = subprocess.run(["apt-cache", "search", "--names-only", rf"^linux-{kind}-6\.12\.[0-9]+\+deb12-amd64$"],
                             capture_output=True, text=True, check=True).stdout
        return {line.split()[0].removeprefix(f"linux-{kind}-") for line in out.splitlines()}

    both = versions("image") & versions("headers")
    if not both:
        _run(["apt-get", "update", "-q"])
        both = versions("image") & versions("headers")
    if not both:
        raise RuntimeError("no linux-image-6.12.*+deb12-amd64 with matching headers in apt")
    kver = max(both, key=lambda v: int(v.split(".")[2].split("+")[0]))
    show = subprocess.run(["apt-cache", "show", "--no-all-versions", f"linux-headers-{kver}"],
                          capture_output=True, text=True, check=True).stdout
    pkg_version = re.search(r"^Version: (\S+)", show, re.M).group(1)
    return kver, pkg_version


def _download(packages: list[str], debs: Path) -> list[Path]:
    debs.mkdir(parents=True, exist_ok=True)
    wanted = [p for p in packages if not list(debs.glob(f"{p.split('=')[0]}_*.deb"))]
    if wanted:
        _log(f"apt-get download {' '.join(wanted)}")
        # Run as root into a root-owned dir: apt's _apt sandbox user could not write there.
        _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *wanted], cwd=debs)
    return [next(debs.glob(f"{p.split('=')[0]}_*.deb")) for p in packages]


def _extract_mtty_source(pkg_version: str, work: Path, dest: Path) -> None:
    """Stream linux-source-6.12's tarball and keep only mtty.c; the 150 MB .deb is deleted after."""
    debs = work / "source"
    try:
        deb = _download([f"linux-source-6.12={pkg_version}"], debs)[0]
    except subprocess.CalledProcessError:
        _log(f"linux-source-6.12 {pkg_version} not downloadable; using the candidate version")
        deb = _download(["linux-source-6.12"], debs)[0]
    _log(f"extracting {MTTY_SOURCE} from {deb.name}")
    script = ("set -o pipefail; dpkg-deb --fsys-tarfile \"$1\" | tar -xO --wildcards './usr/src/linux-source-*.tar.xz'"
              " | tar -xJO \"linux-source-6.12/$2\" > \"$3\"")
    _run(["bash", "-c", script, "extract", str(deb), MTTY_SOURCE, str(dest)])
    shutil.rmtree(debs)


def _build_mtty(headers: Path, build: Path) -> Path:
    (build / "Kbuild").write_text("obj-m := mtty.o\n")
    _log("building mtty.ko")
    # Debian's headers ship vmlinux's BTF, so kbuild would want pahole to add
    # BTF to the module; a module without BTF loads just as well.
    _run(["make", "-s", "-C", str(headers), f"M={build}", "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"],
         stdout=subprocess.DEVNULL)
    return build / "mtty.ko"


def _module_closure(root: Path, kver: str, names: list[str]) -> list[str]:
    """Paths (relative to the modules dir) of `names` and their dependencies, dependencies first."""
    moddir = root / "lib/modules" / kver
    deps = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.split(".ko")[0].replace("-", "_"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for dep in deps[path]:
            visit(dep)
        if path not in order:
            order.append(path)

    for name in names:
        visit(by_name[name])
    return order


def _newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio "newc" archive of (name, mode, data) entries, as the kernel unpacks initramfs."""
    out = bytearray()

    def add(name: str, mode: int, data: bytes, ino: int) -> None:
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out.extend(b"070701" + b"".join(b"%08x" % f for f in fields) + encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        add(name, mode, data, ino)
    add("TRAILER!!!", 0, b"", 0)
    return bytes(out)


def _build_initramfs(root: Path, kver: str, cache: Path, ninep_modules: list[str] = NINEP_MODULES) -> Path:
    """The initramfs for kernel `kver`: busybox, stage 1 and the 9p modules (none when 9p is built in)."""
    modules = _module_closure(root, kver, ninep_modules) if ninep_modules else []
    stage1 = STAGE1.read_bytes()
    key = hashlib.sha256(stage1 + kver.encode() + "\n".join(modules).encode()).hexdigest()[:12]
    target = cache / f"initramfs-{key}.cpio.gz"
    if target.exists():
        return target
    _log("building initramfs")
    dirs, files = 0o040755, 0o100755
    entries = [(d, dirs, b"") for d in ("bin", "dev", "proc", "newroot", "modules")]
    entries.append(("bin/busybox", files, Path("/bin/busybox").read_bytes()))
    entries.append(("init", files, stage1))
    names = []
    for rel in modules:
        data = (root / "lib/modules" / kver / rel).read_bytes()
        if rel.endswith(".xz"):
            data = subprocess.run(["xz", "-dc"], input=data, capture_output=True, check=True).stdout
        name = Path(rel).name.removesuffix(".xz")
        names.append(name)
        entries.append((f"modules/{name}", 0o100644, data))
    entries.append(("modules/order", 0o100644, ("\n".join(names) + "\n").encode()))
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(_newc(entries), compresslevel=6))
    tmp.rename(target)
    return target


def load() -> Rig | None:
    """The prepared rig, or None if the cache holds none (or an incomplete one)."""
    meta = cache_dir() / "rig.json"
    if not meta.exists():
        return None
    rig = Rig(**json.loads(meta.read_text()))
    needed = [rig.vmlinuz, rig.initramfs, rig.mtty_ko]
    return rig if all(Path(p).exists() for p in needed) else None


def prepare() -> tuple[Rig, float]:
    """Fill the cache if needed. Returns (rig, seconds of work this call did).

    Serialised by a lock file, so parallel runners share one preparation."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _prepare_locked()


def _prepare_locked() -> tuple[Rig, float]:
    start = time.monotonic()
    rig = load()
    if rig is not None:
        # The initramfs key covers stage1.sh, so an edited stage 1 gets rebuilt here.
        initramfs = _build_initramfs(Path(rig.root), rig.kernel_version, cache_dir())
        if str(initramfs) != rig.initramfs:
            rig.initramfs = str(initramfs)
            (cache_dir() / "rig.json").write_text(json.dumps(rig.__dict__, indent=1))
        return rig, time.monotonic() - start
    cache = cache_dir()
    _ensure_host_packages()
    kver, pkg_version = _newest_kernel()
    base = kver.removesuffix("-amd64")
    _log(f"kernel {kver} ({pkg_version})")
    root = cache / "root"
    marker = root / f".extracted-{kver}"
    if not marker.exists():
        debs = _download([f"linux-image-{kver}", f"linux-headers-{kver}",
                          f"linux-headers-{base}-common", f"linux-kbuild-{base}"], cache / "debs")
        for deb in debs:
            _log(f"dpkg -x {deb.name}")
            _run(["dpkg", "-x", str(deb), str(root)])
        # The headers' Makefile includes the common headers by absolute /usr/src path.
        makefile = root / "usr/src" / f"linux-headers-{kver}" / "Makefile"
        common = f"/usr/src/linux-headers-{base}-common/"
        makefile.write_text(makefile.read_text().replace(common, f"{root}{common}"))
        marker.touch()
        shutil.rmtree(cache / "debs")
    mtty_dir = cache / "mtty"
    mtty_dir.mkdir(exist_ok=True)
    mtty_c = mtty_dir / "mtty.c"
    if not mtty_c.exists():
        _extract_mtty_source(pkg_version, cache, mtty_c)
    mtty_ko = mtty_dir / "mtty.ko"
    if not mtty_ko.exists():
        mtty_ko = _build_mtty(root / "usr/src" / f"linux-headers-{kver}", mtty_dir)
    _run(["depmod", "-b", str(root), kver])
    initramfs = _build_initramfs(root, kver, cache)
    rig = Rig(kernel_version=kver, package_version=pkg_version, root=str(root),
              vmlinuz=str(root / "boot" / f"vmlinuz-{kver}"), initramfs=str(initramfs),
              mtty_ko=str(mtty_ko), setup_seconds=round(time.monotonic() - start, 1))
    (cache / "rig.json").write_text(json.dumps(rig.__dict__, indent=1))
    _log(f"rig prepared in {rig.setup_seconds:.1f} s")
    return rig, rig.setup_seconds


# ---------------------------------------------------------------------------- boot


def _kvm_usable() -> bool:
    """KVM is tried only with a real hardware-virtualisation module (the
    paravirtual /dev/kvm some machines expose cannot boot a stock kernel) and
    only until one boot with it failed on this machine."""
    hardware = Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()
    failed = (cache_dir() / "kvm-failed").exists()
    return hardware and os.access("/dev/kvm", os.R_OK | os.W_OK) and not failed


def _qemu_command(rig: Rig, accel: str, results: Path, timeout: float, extra_args: str = "") -> list[str]:
    accel_args = (["-accel", "kvm", "-cpu", "host"] if accel == "kvm"
                  else ["-accel", "tcg,thread=multi", "-cpu", os.environ.get("MIGFUZZ_QEMU_CPU", "max")])
    append = f"{KERNEL_ARGS} {extra_args + ' ' if extra_args else ''}MIGFUZZ_STAGE2={STAGE2}"
    return [
        "timeout", "--kill-after=5", str(int(timeout) + 1),
        "qemu-system-x86_64", *accel_args, "-smp", "1", "-m", "1G",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-net", "none",
        "-M", "q35", "-serial", "stdio",
        "-kernel", rig.vmlinuz, "-initrd", rig.initramfs, "-append", append,
        "-fsdev", "local,id=hostroot,path=/,readonly=on,security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=results,path={results},security_model=none",
        "-device", "virtio-9p-pci,fsdev=results,mount_tag=results",
        # The flight recorder (flight.py): guest memory backed by a host file a panic cannot erase.
        "-object", f"memory-backend-file,id=flight,share=on,mem-path={results / flight.FILE_NAME},size={flight.SIZE}",
        "-device", f"ivshmem-plain,memdev=flight,addr={FLIGHT_SLOT:#x}",
    ]


def _guest_env(rig: Rig, instances: int) -> str:
    values = {
        "MIGFUZZ_MODROOT": rig.root,
        "MIGFUZZ_MTTY_KO": rig.mtty_ko,
        "MIGFUZZ_INSTANCES": str(instances),
        "MIGFUZZ_CWD": str(PROJECT_ROOT),
        "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(Path.home()),
        "PYTHONPATH": str(PROJECT_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",   # the root share is read-only
        "MIGFUZZ_PYTHON": sys.executable,
        flight.ENV: f"/sys/bus/pci/devices/0000:00:{FLIGHT_SLOT:02x}.0/resource2",
    }
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())


def compile_project(root: Path = PROJECT_ROOT) -> bool:
    """Write the bytecode of the packages the guest imports, on the host, beside their sources
    (``__pycache__``, as any Python run does). The guest mounts the tree read-only and runs with
    PYTHONDONTWRITEBYTECODE: without this it compiled every module again at each start, under TCG
    (the campaign's imports took 4.1-5.2 s a boot; 2.0-2.8 s with the bytecode, 2026-12-03).
    Up-to-date files are only stat'ed; a tree the host cannot write is left as it is (False)."""
    ok = True
    for package in GUEST_PACKAGES:
        if (root / package).is_dir():
            ok = compileall.compile_dir(root / package, quiet=2) and ok
    return bool(ok)


def _boot(rig: Rig, accel: str, command: str, timeout: float, instances: int,
          results: Path, extra_args: str = "") -> GuestResult:
    compile_project()
    (results / "guest.env").write_text(_guest_env(rig, instances))
    (results / "command.sh").write_text(command + "\n")
    for stale in ("exit_status", "output.log", "mtty.txt"):
        (results / stale).unlink(missing_ok=True)
    with open(results / flight.FILE_NAME, "wb") as f:  # zeroed: no program recorded yet
        f.truncate(flight.SIZE)

    marks: dict[str, float] = {}
    console: list[str] = []
    start = time.monotonic()
    proc = subprocess.Popen(_qemu_command(rig, accel, results, timeout, extra_args), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def pump() -> None:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            console.append(line)
            for mark in (MARK_READY, MARK_DONE, MARK_FAILED):
                if line.startswith(mark):
                    marks.setdefault(mark, time.monotonic())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(5)
    # `timeout` exits 124 (or 137 after --kill-after) when it had to stop QEMU.
    timed_out = proc.returncode in (124, 137, -9)

    log = "\n".join(console)
    status_file = results / "exit_status"
    exit_status = int(status_file.read_text()) if status_file.exists() else None
    output_file = results / "output.log"
    failure = next((line for line in console if line.startswith(MARK_FAILED)), None)
    mtty_file = results / "mtty.txt"
    mtty = []
    if mtty_file.exists() and mtty_file.read_text().strip():
        for entry in mtty_file.read_text().strip().split(","):
            uuid, group = entry.split(":")
            mtty.append((uuid, int(group)))
    ready, done = marks.get(MARK_READY), marks.get(MARK_DONE)
    return GuestResult(
        exit_status=exit_status, console=log,
        output=output_file.read_text(errors="replace") if output_file.exists() else "",
        splats=find_splats(log), results_dir=results, accel=accel, timed_out=timed_out,
        setup_failure=failure, mtty=mtty,
        boot_seconds=round(ready - start, 2) if ready else None,
        command_seconds=round(done - ready, 2) if ready and done else None,
    )


def _new_results_dir() -> Path:
    """A fresh directory under <cache>/results; only the newest KEEP_RESULTS are kept."""
    parent = cache_dir() / "results"
    parent.mkdir(parents=True, exist_ok=True)
    for old in sorted(parent.iterdir(), key=lambda p: p.stat().st_mtime)[:-KEEP_RESULTS]:
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix="guest-", dir=parent))


def run_guest(command: str, timeout: float = 120, instances: int = 2,
              results_dir: Path | None = None, prepared: tuple[Rig, float] | None = None,
              extra_args: str = "") -> GuestResult:
    """Boot the guest, run `command` in it (see module doc), power off.

    `timeout` bounds the whole boot + command; on expiry QEMU is killed and the
    result has timed_out set. A kernel WARN/oops panics the guest, which ends
    QEMU early; its lines are in `splats`. `prepared` is another kernel's
    (rig, setup seconds), e.g. ``debugkernel.prepare()``; by default the stock rig.
    `extra_args` follow KERNEL_ARGS on the kernel command line (a later value wins).
    """
    for hidden in GUEST_MOUNTS:
        for what, path in (("cache", cache_dir()), ("project", PROJECT_ROOT), ("python", Path(sys.executable))):
            if path.resolve().is_relative_to(hidden) or path.is_relative_to(hidden):
                raise ValueError(f"{what} {path} is under {hidden}, which the guest mounts over")
    rig, setup_seconds = prepared or prepare()
    if results_dir is None:
        results_dir = _new_results_dir()
    results_dir.mkdir(parents=True, exist_ok=True)
    accel = "kvm" if _kvm_usable() else "tcg"
    result = _boot(rig, accel, command, timeout, instances, results_dir, extra_args)
    if accel == "kvm" and result.boot_seconds is None and not result.splats:
        _log("KVM boot did not reach stage 2; falling back to TCG from now on")
        (cache_dir() / "kvm-failed").touch()
        result = _boot(rig, "tcg", command, timeout, instances, results_dir, extra_args)
    result.setup_seconds = round(setup_seconds, 1)
    return result
