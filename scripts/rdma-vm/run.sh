#!/usr/bin/env bash
# Nacre's Soft-RoCE test machine: runs one command inside a throw-away QEMU virtual machine
# whose kernel has the rdma_rxe driver, with an RDMA device rxe0 on a veth pair (198.18.0.1).
# The guest mounts this machine's root file system read-only over 9p (so binaries built here
# run there unchanged), gets a fresh tmpfs on /tmp and /run, and has no outside network.
#
#   scripts/rdma-vm/run.sh [--timeout SECONDS] [--mem MiB] -- COMMAND [ARGS...]
#
# Prints COMMAND's output (stdout and stderr together) and exits with its status; 124 when
# the VM did not finish within the timeout. Inside: NACRE_RDMA_ADDR=198.18.0.1,
# NACRE_RDMA_DEV=rxe0, the same working directory and HOME. See README.md beside this file.
set -euo pipefail

timeout_s=600
mem_mib=2048
while [[ $# -gt 0 ]]; do
    case $1 in
        --timeout) timeout_s=${2:?--timeout needs seconds}; shift 2 ;;
        --mem) mem_mib=${2:?--mem needs MiB}; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
if [[ $# -eq 0 ]]; then
    echo "usage: $0 [--timeout S] [--mem MiB] -- COMMAND [ARGS...]" >&2
    exit 2
fi

readonly RXE_ADDR=198.18.0.1
readonly RXE_DEV=rxe0
cache=${NACRE_RDMA_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nacre/rdma-vm}

# --- host packages -----------------------------------------------------------------------
missing=()
for pkg in qemu-system-x86 busybox-static kmod cpio rdma-core ibverbs-providers ibverbs-utils iproute2; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    [[ $(id -u) -eq 0 ]] || { echo "rdma-vm: missing ${missing[*]}; install them or run as root" >&2; exit 1; }
    echo "rdma-vm: installing ${missing[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- kernel and initramfs, built once into the cache -------------------------------------
# Debian's stock kernel ships rdma_rxe, ib_uverbs and rdma_ucm as modules. The initramfs only
# needs enough to mount the host root over 9p; every other module is loaded from the cache
# directory (read through that same 9p root) once the guest runs on the host's userland.
build_cache() {
    local work=$cache.partial
    rm -rf "$work"
    mkdir -p "$work/deb" "$work/root" "$work/initramfs"/{bin,modules,proc,sys,dev,newroot}
    local kpkg
    kpkg=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    [[ -n $kpkg ]] || { echo "rdma-vm: cannot find the Debian kernel package" >&2; return 1; }
    echo "rdma-vm: fetching $kpkg (once; cached in $cache)" >&2
    (cd "$work/deb" && apt-get download "$kpkg" >/dev/null)
    dpkg-deb -x "$work"/deb/*.deb "$work/root"
    local kver
    kver=$(ls "$work/root/lib/modules")
    depmod -b "$work/root" "$kver"
    # modprobe prints the insmod lines of a module and its dependencies in load order
    local order=$work/initramfs/modules/order mod line path
    : >"$order"
    for mod in virtio_pci 9pnet_virtio 9p; do
        while read -r line; do
            [[ $line == insmod* ]] || continue
            path=${line#insmod }
            path=${path%% *}
            grep -qx "${path##*/}" "$order" && continue
            cp "$path" "$work/initramfs/modules/"
            echo "${path##*/}" >>"$order"
        done < <(modprobe -d "$work/root" -S "$kver" --show-depends "$mod")
    done
    cp "$(command -v busybox)" "$work/initramfs/bin/busybox"
    cat >"$work/initramfs/init" <<'INIT'
#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
while read -r ko; do $bb insmod "/modules/$ko" || $bb echo "rdma-vm: insmod $ko failed"; done </modules/order
$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro hostroot /newroot
for fs in proc sys dev; do $bb mount --move /$fs /newroot/$fs; done
$bb mount -t tmpfs tmpfs /newroot/tmp
$bb mount -t tmpfs tmpfs /newroot/run
$bb mkdir -p /newroot/tmp/job
$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 job /newroot/tmp/job
$bb chroot /newroot /bin/bash /tmp/job/guest.sh
$bb sync
$bb echo o >/proc/sysrq-trigger
INIT
    chmod +x "$work/initramfs/init"
    (cd "$work/initramfs" && find . -print | cpio -o -H newc --quiet | gzip -1 >"$work/initramfs.gz")
    rm -rf "$work/deb"
    echo "$kver" >"$work/kernel-version"
    rm -rf "$cache"
    mv "$work" "$cache"
}
[[ -f $cache/kernel-version ]] || build_cache
kver=$(cat "$cache/kernel-version")

# --- the job: RDMA device set-up, then the command ---------------------------------------
job=$(mktemp -d /tmp/nacre-rdma-vm.XXXXXX)
trap 'rm -rf "$job"' EXIT
printf '%q ' "$@" >"$job/command"
cat >"$job/guest.sh" <<GUEST
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=$(printf '%q' "$HOME")
# rdma_rxe computes its ICRC with the kernel crypto API's "crc32", which needs crc32_generic
for mod in crc32_generic veth ib_core ib_uverbs rdma_ucm rdma_rxe; do
    modprobe -d "$cache/root" -S "$kver" \$mod || echo "rdma-vm: modprobe \$mod failed"
done
ip link set lo up
ip link add nacre0 type veth peer name nacre1
ip addr add $RXE_ADDR/24 dev nacre0
ip link set nacre0 up
ip link set nacre1 up
rdma link add $RXE_DEV type rxe netdev nacre0 || echo "rdma-vm: could not create $RXE_DEV"
export NACRE_RDMA_ADDR=$RXE_ADDR NACRE_RDMA_DEV=$RXE_DEV
# Loads more of the guest kernel's modules (e.g. brd and ext4 for a scratch file system).
export NACRE_VM_MODPROBE="modprobe -d $cache/root -S $kver"
# A working directory under /tmp is not visible in here (the guest's /tmp is its own).
cd $(printf '%q' "$PWD") 2>/dev/null || cd /
bash -c "\$(cat /tmp/job/command)" >/tmp/job/output 2>&1
echo \$? >/tmp/job/status
GUEST

set +e
timeout "$timeout_s" qemu-system-x86_64 -machine q35 -m "$mem_mib" -smp "$(nproc)" \
    -nographic -no-reboot -nic none \
    -kernel "$cache/root/boot/vmlinuz-$kver" -initrd "$cache/initramfs.gz" \
    -append "console=ttyS0 quiet panic=-1" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on \
    -virtfs local,path="$job",mount_tag=job,security_model=none \
    >"$job/console" 2>&1
qemu_status=$?
set -e
[[ -f $job/output ]] && cat "$job/output"
if [[ -f $job/status ]]; then
    exit "$(cat "$job/status")"
fi
if [[ $qemu_status -eq 124 ]]; then
    echo "rdma-vm: timed out after ${timeout_s}s; last console lines:" >&2
else
    echo "rdma-vm: the VM stopped before the command finished (qemu status $qemu_status); last console lines:" >&2
fi
tail -n 30 "$job/console" >&2
exit 124
