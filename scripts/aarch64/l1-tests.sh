#!/bin/sh
# l1-tests.sh - runs inside the aarch64 L1 guest (busybox sh), with the 9p
# share at /mnt/host holding chv, l2-Image and l2-initramfs.cpio. Boots the
# L2 guest with chv on L1's KVM, once per case, and checks what the guest and
# chv did. Prints "ARM-CASE <name> PASS|FAIL <why>" per case and
# "ARM-TESTS PASS|FAIL" at the end. Usage: l1-tests.sh [CASE...]
H=/mnt/host
W=/tmp/chv-arm
mkdir -p $W
fails=0
KERNEL="--kernel $H/l2-Image --initramfs $H/l2-initramfs.cpio"
BASE="console=ttyAMA0 quiet panic=-1 guest_name=L2"

pass() { echo "ARM-CASE $1 PASS"; }
fail() { echo "ARM-CASE $1 FAIL $2"; fails=$((fails + 1)); }
# has FILE TEXT: the file contains TEXT
has() { grep -q -- "$2" "$1"; }

# Boots with the virtio devices as the x86_64 Linux tests do: 2 vCPUs
# (secondary started with PSCI CPU_ON), virtio-blk written by the guest and
# read back here, virtio-net to a tap in L1, virtio-rng, virtio-console,
# PL031 RTC; then PSCI SYSTEM_OFF ends chv with status 0.
case_devices() {
    dd if=/dev/zero of=$W/disk.raw bs=1M count=4 2>/dev/null
    cmd='echo NPROC=$(nproc); echo chv-arm-disk-ok | dd of=/dev/vda conv=fsync 2>/dev/null;'
    cmd="$cmd head -c 64 /dev/hwrng | wc -c | sed s/^/RNG-BYTES=/;"
    cmd="$cmd echo chv-arm-hvc0 > /dev/hvc0;"
    cmd="$cmd dmesg | grep -q rtc-pl031.*registered && echo RTC-PL031-OK;"
    cmd="$cmd ip addr add 192.168.249.2/24 dev eth0; ip link set eth0 up;"
    cmd="$cmd ping -c 1 -W 5 192.168.249.1 >/dev/null && echo NET-PING-OK"
    $H/chv $KERNEL --cmdline "$BASE guest_cmd=\"$cmd\"" --cpus boot=2 --memory size=256M \
        --serial tty --console file=$W/hvc0.out --disk path=$W/disk.raw --rng src=/dev/urandom \
        --net tap=chvtap0,ip=192.168.249.1,mask=255.255.255.0 > $W/devices.out 2>&1
    rc=$?
    cat $W/devices.out
    o=$W/devices.out
    [ $rc = 0 ] || { fail devices "chv exit $rc"; return; }
    has $o "GUEST-CMD-EXIT L2=0" || { fail devices "guest command"; return; }
    has $o "NPROC=2" || { fail devices "nproc is not 2"; return; }
    has $o "RNG-BYTES=64" || { fail devices rng; return; }
    has $o "NET-PING-OK" || { fail devices net; return; }
    has $W/hvc0.out chv-arm-hvc0 || { fail devices console; return; }
    head -c 15 $W/disk.raw | grep -q chv-arm-disk-ok || { fail devices "disk content"; return; }
    has $o "RTC-PL031-OK" || { fail devices "no PL031 rtc0"; return; }
    pass devices
}

# The unit-test binaries in $H/unit (arch, devices, vmm) that need a real
# aarch64 kernel: KVM (vCPU, GIC and ITS state), seccomp filters, memory
# advice and huge pages.
case_unit() {
    why=
    for t in $H/unit/*; do
        [ -x "$t" ] || continue
        name=$(basename "$t")
        (cd $W && "$t" --test-threads=2 > $W/unit-$name.out 2>&1)
        rc=$?
        grep -E "^test result|FAILED|panicked" $W/unit-$name.out
        [ $rc = 0 ] || why="$why $name:rc=$rc"
    done
    [ -z "$why" ] && pass unit || fail unit "$why"
}

# wait_for FILE TEXT SECONDS
wait_for() {
    i=0
    while ! grep -q -- "$2" "$1" 2>/dev/null; do
        i=$((i + 1)); [ $i -gt $(($3 * 5)) ] && return 1; sleep 0.2
    done
}

# The REST API lifecycle through chv-remote on the API socket: info,
# pause/resume, a disk hot-added while the guest runs (found by a PCI
# rescan: aarch64 has no ACPI hotplug) and written by the guest, counters,
# a refused removal, then shutdown of the VMM.
case_api() {
    s=$W/api.sock; o=$W/api.out; rm -f $s
    dd if=/dev/zero of=$W/hot.raw bs=1M count=2 2>/dev/null
    cmd='echo API-GUEST-UP; i=0; while [ ! -b /dev/vda ] && [ $i -lt 120 ]; do sleep 0.5; echo 1 > /sys/bus/pci/rescan; i=$((i+1)); done;'
    cmd="$cmd echo chv-arm-hot-ok | dd of=/dev/vda conv=fsync 2>/dev/null && echo HOTPLUG-WRITE-OK; sleep 600"
    $H/chv $KERNEL --cmdline "$BASE guest_cmd=\"$cmd\"" --memory size=256M --serial tty \
        --console off --api-socket $s > $o 2>&1 &
    pid=$!
    R="$H/chv-remote --api-socket $s"
    why=
    wait_for $o API-GUEST-UP 120 || why="guest did not start"
    [ -z "$why" ] && { $R info | grep -q Running || why="info: not Running"; }
    [ -z "$why" ] && { $R pause >/dev/null && $R info | grep -q Paused || why=pause; }
    [ -z "$why" ] && { $R resume >/dev/null && $R info | grep -q Running || why=resume; }
    [ -z "$why" ] && { $R add-disk path=$W/hot.raw,id=hot0 > $W/add.out 2>&1 || why="add-disk: $(cat $W/add.out)"; }
    [ -z "$why" ] && { wait_for $o HOTPLUG-WRITE-OK 120 || why="hot-added disk not written"; }
    [ -z "$why" ] && { head -c 14 $W/hot.raw | grep -q chv-arm-hot-ok || why="hot disk content"; }
    [ -z "$why" ] && { $R counters | grep -q hot0 || why=counters; }
    # Every chv thread (main, API, vCPU, device workers) runs under its
    # seccomp filter, as on x86_64.
    if [ -z "$why" ]; then
        n=0
        for st in /proc/$pid/task/*/status; do
            n=$((n + 1))
            grep -q "^Seccomp:[[:space:]]*2" $st || why="$why $(grep ^Name: $st | cut -f2):$(grep ^Seccomp: $st | cut -f2)"
        done
        [ -n "$why" ] && why="threads without a seccomp filter:$why"
        [ -z "$why" ] && [ $n -lt 4 ] && why="only $n chv threads"
        [ -z "$why" ] && echo "ARM-SECCOMP-THREADS=$n"
    fi
    [ -z "$why" ] && { $R remove-device hot0 > $W/rm.out 2>&1; grep -q "not supported on aarch64" $W/rm.out || why="remove-device: $(cat $W/rm.out)"; }
    $R shutdown-vmm >/dev/null 2>&1
    i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -0 $pid 2>/dev/null && { kill -9 $pid; why="${why:-chv did not exit on shutdown-vmm}"; }
    wait $pid; rc=$?
    cat $o
    [ -z "$why" ] && [ $rc != 0 ] && why="chv exit $rc"
    # vCPU hotplug (max above boot) is refused by name: no ACPI here.
    if [ -z "$why" ]; then
        $H/chv $KERNEL --cpus boot=1,max=2 --memory size=256M > $W/max.out 2>&1 && why="--cpus max=2 was accepted"
        [ -z "$why" ] && { grep -q "not supported on aarch64" $W/max.out || why="--cpus max=2: $(cat $W/max.out)"; }
    fi
    [ -z "$why" ] && pass api || fail api "$why"
}

# Snapshot and restore: a guest writing its disk once a second (virtio-blk
# completions are MSI-X through the ITS) is paused, snapshotted (vCPU
# registers, GIC, ITS, devices, RAM) and its chv stopped; a second chv
# restores it, resumes, and the guest goes on counting and writing.
case_snapshot() {
    case_name=${1:-snapshot}
    a=$W/snap-a.sock; b=$W/snap-b.sock; snap=$W/snap; rm -rf $a $b $snap
    dd if=/dev/zero of=$W/snap.raw bs=1M count=2 2>/dev/null
    cmd='n=0; while true; do n=$((n+1)); echo tick-$n | dd of=/dev/vda conv=fsync 2>/dev/null; echo TICK-$n; sleep 0.3; done'
    $H/chv $KERNEL --cmdline "$BASE guest_cmd=\"$cmd\"" --cpus boot=2 --memory size=256M --serial tty \
        --console off --disk path=$W/snap.raw --api-socket $a > $W/snap-a.out 2>&1 &
    pa=$!
    R="$H/chv-remote --api-socket"
    why=
    wait_for $W/snap-a.out TICK-3 120 || why="guest did not tick"
    [ -z "$why" ] && { $R $a pause >/dev/null || why=pause; }
    [ -z "$why" ] && { $R $a snapshot file://$snap > $W/snap.err 2>&1 || why="snapshot: $(cat $W/snap.err)"; }
    $R $a shutdown-vmm >/dev/null 2>&1; sleep 0.5; kill -9 $pa 2>/dev/null; wait $pa
    last=$(tr -d '\r' < $W/snap-a.out | sed -n 's/^TICK-//p' | tail -1)
    if [ -z "$why" ]; then
        $H/chv --api-socket $b --restore source_url=file://$snap > $W/snap-b.out 2>&1 &
        pb=$!
        i=0; while [ ! -S $b ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        $R $b info | grep -q Paused || why="restored VM not paused: $(cat $W/snap-b.out)"
        [ -z "$why" ] && { $R $b resume >/dev/null || why=resume; }
        next=$((last + 2))
        [ -z "$why" ] && { wait_for $W/snap-b.out "TICK-$next" 120 || why="restored guest did not go on (last tick $last)"; }
        [ -z "$why" ] && { head -c 12 $W/snap.raw | grep -q "tick-" || why="disk"; }
        first=$(tr -d '\r' < $W/snap-b.out | sed -n 's/^TICK-//p' | head -1)
        [ -z "$why" ] && [ "${first:-0}" -le "$last" ] && why="restored guest restarted counting at $first"
        $R $b shutdown-vmm >/dev/null 2>&1; sleep 0.5; kill -9 $pb 2>/dev/null; wait $pb
        tail -n 3 $W/snap-b.out
    fi
    echo "$case_name: last tick before $last, ticks after: $(tr -d '\r' < $W/snap-b.out 2>/dev/null | grep -c '^TICK-')"
    [ -z "$why" ] && pass $case_name || fail $case_name "$why"
}

# virtio-vsock with CH's hybrid vsock on a Unix socket, both ways: the
# guest connects to host port 5000 (chv connects to <socket>_5000, where
# L1 answers) and L1 connects to the guest's port 1234 (CONNECT 1234 on the
# socket) and gets its bytes echoed. The guest's AF_VSOCK tool comes in a
# second initramfs archive (vsock.cpio), the host side is the same tool.
case_vsock() {
    v=$W/vsock.sock; o=$W/vsock.out; rm -f $v ${v}_5000
    cat $H/l2-initramfs.cpio $H/vsock.cpio > $W/l2-vsock.cpio
    $H/vsock unix-reply ${v}_5000 > $W/vsock-reply.out 2>&1 &
    pr=$!
    cmd='/vsock listen 1234 1 & echo guest-to-host | /vsock connect 2 5000; wait'
    $H/chv --kernel $H/l2-Image --initramfs $W/l2-vsock.cpio --cmdline "$BASE guest_cmd=\"$cmd\"" \
        --memory size=256M --serial tty --console off --vsock cid=3,socket=$v > $o 2>&1 &
    pid=$!
    why=
    wait_for $o "VSOCK-LISTEN-READY 1234" 120 || why="guest vsock listener not up"
    [ -z "$why" ] && { echo host-to-guest | $H/vsock unix-connect $v 1234 > $W/vsock-h2g.out 2>&1 || why="host to guest: $(cat $W/vsock-h2g.out)"; }
    [ -z "$why" ] && { has $W/vsock-h2g.out host-to-guest || why="host to guest: no echo"; }
    i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
    kill -0 $pid 2>/dev/null && { kill -9 $pid; why="${why:-chv did not exit}"; }
    wait $pid; rc=$?
    kill $pr 2>/dev/null; wait $pr
    grep -E "VSOCK|REPLY" $o
    [ -z "$why" ] && { has $o "REPLY:guest-to-host" || why="guest to host: no reply"; }
    [ -z "$why" ] && { has $o "VSOCK-LISTEN-DONE conns=1 bytes=14 errors=0" || why="guest listener"; }
    [ -z "$why" ] && [ $rc != 0 ] && why="chv exit $rc"
    [ -z "$why" ] && pass vsock || fail vsock "$why"
}

# PSCI SYSTEM_RESET: the guest reboots once (a mark on its disk says it
# did), chv builds the VM again from the same configuration, the second boot
# powers off with PSCI SYSTEM_OFF and chv exits 0.
case_reset() {
    o=$W/reset.out
    dd if=/dev/zero of=$W/reset.raw bs=1M count=1 2>/dev/null
    cmd='if head -c 8 /dev/vda | grep -q rebooted; then echo AFTER-RESET; else echo rebooted | dd of=/dev/vda conv=fsync 2>/dev/null; echo RESETTING; reboot -f; fi'
    $H/chv $KERNEL --cmdline "$BASE guest_cmd=\"$cmd\"" --memory size=256M --serial tty \
        --console off --disk path=$W/reset.raw > $o 2>&1
    rc=$?
    grep -E "RESETTING|AFTER-RESET|GUEST-READY" $o
    why=
    has $o RESETTING || why="guest did not reset"
    [ -z "$why" ] && { has $o AFTER-RESET || why="no second boot after the reset"; }
    [ -z "$why" ] && [ $rc != 0 ] && why="chv exit $rc"
    [ -z "$why" ] && pass reset || fail reset "$why"
}

# Live migration between two chv processes in L1 over a Unix socket: the
# guest goes on counting and writing its disk on the receiver.
case_migration() {
    a=$W/mig-a.sock; b=$W/mig-b.sock; m=$W/mig.sock; rm -f $a $b $m
    dd if=/dev/zero of=$W/mig.raw bs=1M count=2 2>/dev/null
    cmd='n=0; while true; do n=$((n+1)); echo tick-$n | dd of=/dev/vda conv=fsync 2>/dev/null; echo TICK-$n; sleep 0.3; done'
    $H/chv --api-socket $b > $W/mig-b.out 2>&1 &
    pb=$!
    $H/chv $KERNEL --cmdline "$BASE guest_cmd=\"$cmd\"" --memory size=256M --serial tty \
        --console off --disk path=$W/mig.raw --api-socket $a > $W/mig-a.out 2>&1 &
    pa=$!
    R="$H/chv-remote --api-socket"
    why=
    wait_for $W/mig-a.out TICK-3 120 || why="guest did not tick"
    i=0; while [ ! -S $b ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    [ -z "$why" ] && { $R $b receive-migration unix:$m > $W/mig-r.err 2>&1 & }
    i=0; while [ ! -S $m ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    [ -z "$why" ] && { $R $a send-migration unix:$m > $W/mig.err 2>&1 || why="send-migration: $(cat $W/mig.err)"; }
    i=0; while kill -0 $pa 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    kill -0 $pa 2>/dev/null && { kill -9 $pa; why="${why:-the sender did not exit}"; }
    wait $pa
    last=$(tr -d '\r' < $W/mig-a.out | sed -n 's/^TICK-//p' | tail -1)
    [ -z "$why" ] && { $R $b info | grep -q Running || why="receiver not running: $($R $b info 2>&1)"; }
    [ -z "$why" ] && { wait_for $W/mig-b.out "TICK-$((last + 2))" 60 || why="migrated guest did not go on (last tick $last)"; }
    first=$(tr -d '\r' < $W/mig-b.out | sed -n 's/^TICK-//p' | head -1)
    [ -z "$why" ] && [ "${first:-0}" -le "$last" ] && why="migrated guest restarted counting at $first"
    [ -z "$why" ] && { head -c 12 $W/mig.raw | grep -q "tick-" || why="disk"; }
    $R $b shutdown-vmm >/dev/null 2>&1; sleep 0.5; kill -9 $pb 2>/dev/null; wait $pb
    echo "migration: last tick on the sender $last, ticks on the receiver: $(tr -d '\r' < $W/mig-b.out | grep -c '^TICK-')"
    [ -z "$why" ] && pass migration || fail migration "$why"
}

# Snapshot and restore as above, with the GIC built without ITS: the GIC
# state has no ITS part and the restored disk's MSI-X vectors go back onto
# the MSI frame's SPIs.
case_no_its_snapshot() {
    export CHV_AARCH64_NO_ITS=1
    case_snapshot no_its_snapshot
    unset CHV_AARCH64_NO_ITS
}

# The MSI path of a host whose vGICv3 has no ITS (CHV_AARCH64_NO_ITS
# builds the GIC without one): chv says so, the guest's GICv3 driver probes
# the GICv2m-style MSI frame under the GIC node, and virtio-blk and
# virtio-net interrupt through the frame's SPIs (irqchip routes), with 2
# vCPUs; then the same checks as the devices case.
case_no_its() {
    o=$W/no-its.out
    dd if=/dev/zero of=$W/no-its.raw bs=1M count=4 2>/dev/null
    cmd='dmesg | grep -q GICv2m.*SPI.64:127 && echo V2M-PROBED;'
    cmd="$cmd echo chv-arm-v2m-ok | dd of=/dev/vda conv=fsync 2>/dev/null;"
    cmd="$cmd ip addr add 192.168.250.2/24 dev eth0; ip link set eth0 up;"
    cmd="$cmd ping -c 1 -W 5 192.168.250.1 >/dev/null && echo NET-PING-OK;"
    cmd="$cmd grep virtio /proc/interrupts | sed s/^/IRQ-LINE/; grep -q ITS-MSI /proc/interrupts && echo ITS-IRQS; true"
    CHV_AARCH64_NO_ITS=1 $H/chv $KERNEL --cmdline "$BASE guest_cmd=\"$cmd\"" --cpus boot=2 \
        --memory size=256M --serial tty --console off --disk path=$W/no-its.raw \
        --net tap=chvtap1,ip=192.168.250.1,mask=255.255.255.0 > $o 2>&1
    rc=$?
    grep -E "ITS|V2M|NET-PING|GUEST-CMD|IRQ-LINE" $o
    why=
    [ $rc = 0 ] || why="chv exit $rc"
    [ -z "$why" ] && { has $o "GICv3 without ITS (CHV_AARCH64_NO_ITS is set)" || why="chv did not say it left out the ITS"; }
    [ -z "$why" ] && { has $o "GUEST-CMD-EXIT L2=0" || why="guest command"; }
    [ -z "$why" ] && { has $o V2M-PROBED || why="guest did not probe the GICv2m frame"; }
    [ -z "$why" ] && { has $o ITS-IRQS && why="interrupts through an ITS"; }
    [ -z "$why" ] && { has $o "IRQ-LINE.*GICv2m-PCI-MSIX.*virtio0-req" || why="virtio-blk not on the frame"; }
    [ -z "$why" ] && { has $o "IRQ-LINE.*GICv2m-PCI-MSIX.*virtio1-input" || why="virtio-net not on the frame"; }
    [ -z "$why" ] && { has $o NET-PING-OK || why=net; }
    [ -z "$why" ] && { head -c 14 $W/no-its.raw | grep -q chv-arm-v2m-ok || why="disk content"; }
    [ -z "$why" ] && pass no_its || fail no_its "$why"
}

cases=${*:-unit devices no_its api vsock snapshot no_its_snapshot reset migration}
for c in $cases; do
    t0=$(cut -d' ' -f1 /proc/uptime)
    case_$c
    echo "ARM-CASE-TIME $c $t0 $(cut -d' ' -f1 /proc/uptime)"
done
[ $fails = 0 ] && echo "ARM-TESTS PASS" || echo "ARM-TESTS FAIL ($fails)"
