#!/usr/bin/env bash
# Builds the chv guest kit from Debian 12 packages only:
#   vmlinux        stripped ELF kernel with a PVH entry note (boot this one)
#   bzImage        the same kernel as a bzImage (LZ4 payload)
#   kernel.config  the kernel's full .config
#   initramfs.cpio busybox initramfs (uncompressed), /init = ./init
#   rootfs.ext4    32 MiB sparse ext4 root, /sbin/init = ./init
#
# Usage: scripts/guest-kit/build.sh [OUTDIR]
#   OUTDIR             default: $CHV_GUEST_DIR, else <repo>/target/guest-kit
#   CHV_GUEST_BUILD_DIR kernel source/build tree (default <repo>/target/guest-kit-build)
#   CHV_GUEST_PARTS    what to build, default "kernel initramfs rootfs"
#   JOBS               make -j value (default: nproc)
#
# Idempotent: each step is skipped while its outputs are newer than its
# inputs. A fresh kernel build takes 12-20 min on 2 cores.
# Needs root (or sudo) only to install missing Debian packages.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-${CHV_GUEST_DIR:-$REPO/target/guest-kit}}
WORK=${CHV_GUEST_BUILD_DIR:-$REPO/target/guest-kit-build}
PARTS=${CHV_GUEST_PARTS:-kernel initramfs rootfs}
JOBS=${JOBS:-$(nproc)}

KTAR=/usr/src/linux-source-6.1.tar.xz
KSRC=$WORK/linux
FRAGMENT=$HERE/config-fragment
INIT=$HERE/init
BUSYBOX=/bin/busybox
ROOTFS_MB=32
# Applet links shipped in the images. Debian's busybox runs any applet from
# `sh` anyway (FEATURE_SH_STANDALONE); links only help other programs, and
# every extra file costs unpack time in the guest.
APPLETS="sh ash cat cp mv rm ln ls mkdir mknod chmod echo test true false
env sleep sync date uname head tail wc cut tr sed awk grep df du free ps
dmesg mount umount mountpoint mdev ip ifconfig poweroff reboot halt
cttyhack setsid"

log() { printf '[guest-kit] %s\n' "$*"; }
die() { printf '[guest-kit] ERROR: %s\n' "$*" >&2; exit 1; }
want() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# True if file $1 is missing or older than any of the remaining files.
stale() {
	local out=$1 f
	shift
	[ -e "$out" ] || return 0
	for f in "$@"; do
		[ "$f" -nt "$out" ] && return 0
	done
	return 1
}

install_packages() {
	local pkgs=(cpio)
	want kernel && pkgs+=(linux-source-6.1 build-essential bc bison flex
		libelf-dev libssl-dev xz-utils lz4)
	want initramfs && pkgs+=(busybox-static)
	want rootfs && pkgs+=(busybox-static e2fsprogs)
	local missing=() p
	for p in "${pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	local sudo=()
	[ "$(id -u)" -eq 0 ] || sudo=(sudo)
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; then
		"${sudo[@]}" apt-get update
		"${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
	fi
}

# Checks that every line of the fragment holds in the .config $1.
verify_config() {
	local cfg=$1 line opt bad=0
	while IFS= read -r line; do
		case "$line" in
		CONFIG_*=*)
			grep -qxF -- "$line" "$cfg" || {
				opt=${line%%=*}
				log "config: wanted $line, got: $(grep -E "^$opt=|^# $opt is not set" "$cfg" || echo absent)"
				bad=1
			}
			;;
		"# CONFIG_"*" is not set")
			opt=${line#\# }
			opt=${opt%% *}
			if grep -q "^$opt=" "$cfg"; then
				log "config: wanted $opt off, got: $(grep "^$opt=" "$cfg")"
				bad=1
			fi
			;;
		esac
	done <"$FRAGMENT"
	[ "$bad" -eq 0 ] || die "kernel config does not match $FRAGMENT"
}

# --- kernel ---------------------------------------------------------------

# Unpacks the Debian kernel source and applies our patches. Keyed on the
# tarball (size, mtime) and the patch contents; any change starts afresh.
prepare_source() {
	[ -r "$KTAR" ] || die "$KTAR missing (package linux-source-6.1)"
	local key
	key=$(
		stat -c '%n %s %Y' "$KTAR"
		sha256sum "$HERE"/patches/*.diff
	)
	if [ -f "$KSRC/.chv-source-key" ] && [ "$(cat "$KSRC/.chv-source-key")" = "$key" ]; then
		log "kernel source up to date: $KSRC"
		return 0
	fi
	log "unpacking $KTAR"
	rm -rf "$KSRC"
	mkdir -p "$KSRC"
	tar -xf "$KTAR" -C "$KSRC" --strip-components=1
	local p
	for p in "$HERE"/patches/*.diff; do
		log "applying $(basename "$p")"
		patch -d "$KSRC" -p1 --forward --batch --no-backup-if-mismatch -s <"$p" ||
			die "patch $(basename "$p") does not apply to $(make -s -C "$KSRC" kernelversion)"
	done
	# Guard: each change must really be in the tree.
	if ! grep -q 'chv guest kit' "$KSRC/arch/x86/kernel/alternative.c" ||
		! grep -q 'chv_clear_emulator_unsafe_caps();' "$KSRC/arch/x86/kernel/cpu/common.c" ||
		! grep -q 'chv_pvm_syscall_from_pf(regs, address)' "$KSRC/arch/x86/mm/fault.c" ||
		! grep -q 'chv_pvm_syscall_from_pf(struct' "$KSRC/arch/x86/entry/common.c" ||
		! grep -q 'chv guest kit' "$KSRC/arch/x86/kernel/fpu/core.c" ||
		grep -q 'fwait\\n' "$KSRC/arch/x86/kernel/fpu/core.c"; then
		die "patched source is missing one of our changes"
	fi
	printf '%s\n' "$key" >"$KSRC/.chv-source-key"
}

kmake() {
	make -C "$KSRC" ARCH=x86_64 KBUILD_BUILD_USER=chv KBUILD_BUILD_HOST=chv "$@"
}

configure_kernel() {
	if ! stale "$KSRC/.config" "$FRAGMENT" "$KSRC/.chv-source-key"; then
		verify_config "$KSRC/.config"
		log "kernel config up to date"
		return 0
	fi
	log "configuring: tinyconfig + $(basename "$FRAGMENT")"
	kmake -s tinyconfig >/dev/null 2>&1 || die "make tinyconfig failed"
	# Twice: options enabled in the first pass can make new ones visible.
	local pass
	for pass in 1 2; do
		cat "$FRAGMENT" >>"$KSRC/.config"
		kmake -s olddefconfig >/dev/null 2>&1 ||
			die "make olddefconfig failed (pass $pass)"
	done
	verify_config "$KSRC/.config"
}

build_kernel() {
	prepare_source
	configure_kernel
	if ! stale "$OUT/vmlinux" "$KSRC/.config" "$KSRC/.chv-source-key" &&
		! stale "$OUT/bzImage" "$KSRC/.config" "$KSRC/.chv-source-key" &&
		! stale "$OUT/kernel.config" "$KSRC/.config"; then
		log "kernel up to date"
		return 0
	fi
	local klog=$WORK/kernel-build.log
	log "building kernel with -j$JOBS (log: $klog)"
	if ! kmake -j"$JOBS" bzImage >"$klog" 2>&1; then
		grep -E 'error|Error' "$klog" | tail -20 >&2 || true
		tail -20 "$klog" >&2
		die "kernel build failed, see $klog"
	fi
	mkdir -p "$OUT"
	strip -o "$OUT/vmlinux.tmp" "$KSRC/vmlinux"
	# PVH boot needs the XEN_ELFNOTE_PHYS32_ENTRY note (owner "Xen").
	readelf -n "$OUT/vmlinux.tmp" | grep -q 'Xen' ||
		die "vmlinux has no PVH (Xen) ELF note"
	mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
	cp "$KSRC/arch/x86/boot/bzImage" "$OUT/bzImage"
	cp "$KSRC/.config" "$OUT/kernel.config"
	verify_config "$OUT/kernel.config"
}

# --- userspace ------------------------------------------------------------

# Fills directory $1 with busybox, its applet links and the init script at
# $2 (relative path); other standard top-level directories are left empty.
populate_root() {
	local root=$1 initpath=$2 a
	rm -rf "$root"
	mkdir -p "$root"
	(cd "$root" && mkdir -p bin sbin usr/bin usr/sbin etc dev proc sys tmp run mnt root)
	chmod 1777 "$root/tmp"
	chmod 700 "$root/root"
	cp "$BUSYBOX" "$root/bin/busybox"
	for a in $APPLETS; do
		ln -s busybox "$root/bin/$a"
	done
	install -m 755 "$INIT" "$root/$initpath"
}

check_busybox() {
	[ -x "$BUSYBOX" ] || die "$BUSYBOX missing (package busybox-static)"
	if readelf -l "$BUSYBOX" | grep -q 'interpreter'; then
		die "$BUSYBOX is dynamically linked; install busybox-static"
	fi
}

build_initramfs() {
	local out=$OUT/initramfs.cpio
	if ! stale "$out" "$INIT" "$BUSYBOX" "$HERE/build.sh"; then
		log "initramfs up to date"
		return 0
	fi
	check_busybox
	local root=$WORK/initramfs-root
	populate_root "$root" init
	ln -s ../init "$root/sbin/init"
	mkdir -p "$OUT"
	# newc is the only format the kernel unpacks; owner root for every file.
	(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
		cpio --quiet -o -H newc -R 0:0 --reproducible) >"$out.tmp"
	mv "$out.tmp" "$out"
	log "initramfs: $(cpio -t <"$out" 2>/dev/null | wc -l) entries, $(stat -c %s "$out") bytes"
}

build_rootfs() {
	local out=$OUT/rootfs.ext4
	if ! stale "$out" "$INIT" "$BUSYBOX" "$HERE/build.sh"; then
		log "rootfs up to date"
		return 0
	fi
	check_busybox
	local root=$WORK/rootfs-root
	populate_root "$root" sbin/init
	mkdir -p "$OUT"
	rm -f "$out.tmp"
	truncate -s "${ROOTFS_MB}M" "$out.tmp"
	# -d copies the tree in without mounting. lazy_itable_init=0 marks the
	# inode tables zeroed, so the guest's ext4lazyinit thread has nothing to
	# do; the journal needs no zeroing in a freshly truncated (all-zero) file.
	mkfs.ext4 -q -F -L chv-root -d "$root" \
		-E root_owner=0:0,lazy_itable_init=0,lazy_journal_init=1 "$out.tmp"
	e2fsck -fn "$out.tmp" >/dev/null 2>&1 || die "fresh rootfs fails e2fsck"
	mv "$out.tmp" "$out"
	log "rootfs: $(du -k "$out" | cut -f1) KiB used of ${ROOTFS_MB} MiB (sparse)"
}

main() {
	install_packages
	mkdir -p "$WORK" "$OUT"
	want kernel && build_kernel
	want initramfs && build_initramfs
	want rootfs && build_rootfs
	log "outputs in $OUT:"
	local f
	for f in vmlinux bzImage kernel.config initramfs.cpio rootfs.ext4; do
		[ -e "$OUT/$f" ] && log "  $OUT/$f"
	done
	return 0
}

main
