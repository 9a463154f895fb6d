#!/bin/busybox sh
# Stage 1 (the initramfs /init): mount the host's root read-only over 9p and
# hand over to stage 2, a script on that tree whose path arrives on the kernel
# command line as MIGFUZZ_STAGE2.
bb=/bin/busybox
fail() {
    echo "MIGFUZZ-SETUP-FAILED: stage1: $*"
    echo o > /proc/sysrq-trigger
    $bb sleep 10
}
$bb mkdir -p /proc /dev /newroot
$bb mount -t proc proc /proc
$bb mount -t devtmpfs devtmpfs /dev
# /modules/order lists the 9p modules (decompressed) in dependency order.
for module in $($bb cat /modules/order); do
    $bb insmod "/modules/$module" || fail "insmod $module"
done
$bb mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /newroot \
    || fail "mount hostroot"
[ -n "$MIGFUZZ_STAGE2" ] && [ -f "/newroot$MIGFUZZ_STAGE2" ] || fail "no stage 2 at '$MIGFUZZ_STAGE2'"
$bb umount /dev
$bb umount /proc
exec $bb switch_root /newroot /bin/sh "$MIGFUZZ_STAGE2"
