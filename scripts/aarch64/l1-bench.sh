#!/bin/sh
# l1-bench.sh - runs inside the aarch64 L1 guest started with the kit's QEMU
# (run-l1.sh --qemu): boots the L2 kernel to power-off with chv and with
# QEMU (-accel kvm, the kit's anchor VMM), alternately, N times each, the same
# guest (1 vCPU, 256 MiB, serial console, no other device). Prints each run's
# time from exec to exit (L1 /proc/uptime, 10 ms resolution) as
# "BENCH <vmm> <seconds>"; scripts/bench/aarch64_boot.sh (on the host) starts
# it and prints the medians and the ratio.
H=/mnt/host
N=${1:-5}
APPEND="console=ttyAMA0 quiet panic=-1 guest_name=L2"
now() { cut -d' ' -f1 /proc/uptime; }
run_chv() {
    $H/chv --kernel $H/l2-Image --initramfs $H/l2-initramfs.cpio --cmdline "$APPEND" \
        --cpus boot=1 --memory size=256M --serial tty --console off > /tmp/bench.out 2>&1
}
run_qemu() {
    qemu-system-aarch64 -M virt,gic-version=3 -accel kvm -cpu host -smp 1 -m 256M \
        -nographic -nodefaults -no-user-config -no-reboot -serial stdio \
        -kernel $H/l2-Image -initrd $H/l2-initramfs.cpio -append "$APPEND" > /tmp/bench.out 2>&1
}
i=0
while [ $i -lt $N ]; do
    for vmm in chv qemu; do
        t0=$(now); run_$vmm; t1=$(now)
        grep -q "GUEST-POWEROFF L2" /tmp/bench.out || echo "BENCH $vmm run $i: no GUEST-POWEROFF"
        echo "BENCH $vmm $(echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}')"
    done
    i=$((i + 1))
done
