#!/bin/sh
# Stage 2: runs from the host's tree (read-only root over 9p). Loads the VFIO
# stack and mtty, creates the mdev instances, runs the command from the results
# share, records its exit status there, then powers the guest off.
#
# Console markers the host times and parses: MIGFUZZ-READY, MIGFUZZ-DONE,
# MIGFUZZ-SETUP-FAILED.

# Only /run gets a tmpfs: anything mounted over /tmp would hide a host cache
# or project living there. TMPDIR points the command at writable space.
results=/run/migfuzz-results

# The sysrq power-off runs asynchronously and unplugs the 9p root on its way,
# so after triggering it this shell must not exec anything (that would fail,
# init would exit and the kernel would panic): it blocks reading a FIFO no one
# ever writes, using builtins only.
halt_fifo=/run/migfuzz-halt
power_off() {
    sync
    echo o > /proc/sysrq-trigger
    read -r _ < "$halt_fifo"
}
fail() {
    echo "MIGFUZZ-SETUP-FAILED: stage2: $*"
    power_off
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
# KCOV (harness/kernel/kcov.py) is a debugfs file; without debugfs there is just no KCOV.
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkfifo "$halt_fifo"
mkdir -p "$results" /run/tmp
export TMPDIR=/run/tmp
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results "$results" || fail "mount results"

# Written by the host: MIGFUZZ_MODROOT, MIGFUZZ_MTTY_KO, MIGFUZZ_INSTANCES,
# MIGFUZZ_CWD, PATH, HOME and the Python settings.
. "$results/guest.env" || fail "no guest.env"
export MIGFUZZ_RESULTS="$results"

modprobe -a -d "$MIGFUZZ_MODROOT" vfio vfio_iommu_type1 mdev || fail "modprobe vfio stack"
insmod "$MIGFUZZ_MTTY_KO" || fail "insmod mtty"

# One "uuid:group" entry per mtty-2 instance.
MIGFUZZ_MTTY=""
i=0
while [ "$i" -lt "$MIGFUZZ_INSTANCES" ]; do
    uuid=$(cat /proc/sys/kernel/random/uuid)
    echo "$uuid" > /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create || fail "create mdev $i"
    group=$(basename "$(readlink "/sys/bus/mdev/devices/$uuid/iommu_group")")
    MIGFUZZ_MTTY="${MIGFUZZ_MTTY:+$MIGFUZZ_MTTY,}$uuid:$group"
    i=$((i + 1))
done
export MIGFUZZ_MTTY
echo "$MIGFUZZ_MTTY" > "$results/mtty.txt"

echo "MIGFUZZ-READY"
cd "$MIGFUZZ_CWD" || fail "cd $MIGFUZZ_CWD"
sh "$results/command.sh" > "$results/output.log" 2>&1 < /dev/null
echo "$?" > "$results/exit_status"
echo "MIGFUZZ-DONE"
power_off
