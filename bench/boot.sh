#!/usr/bin/env bash
# bench/boot.sh — the boot media's figures: initrd and ISO size, and the time
# from a VM's power-on to its registration with a session master. Run by
# hand, not in CI.
#
#   bench/boot.sh [--reps 3] [--size-mib 16]      # IMG=path/to/img (default target/release/img)
#
# Builds the media with `$IMG boot build` into $WORK (default
# /work/benchwork/boot), then, inside a private namespace LAN (lab/lab.sh):
# a DHCP server (busybox udhcpd) and `img -session bootbench -master
# -clients=1` in host h0, and one qemu VM (TCG, 1 vCPU, 512 MiB, virtio disk
# and NIC on a tap on the lab's bridge) booting vmlinuz + initrd.img with
# `img.role=client img.after=poweroff`. Per run, seconds from qemu's start to:
# the init's first line on the serial console, the DHCP lease, the master's
# "registered" line, and the VM's exit (after receiving SIZE MiB and powering
# off). Each step is polled every 0.1 s and bounded (120 s per run).
#
# Nothing leaves the machine: the whole run happens inside `unshare -Urnm`
# (lab_enter re-executes this script there).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=lab/lab.sh
. "$repo/lab/lab.sh"

REPS=3
SIZE_MIB=16
ARGS=("$@")
while [ $# -gt 0 ]; do
    case $1 in
        --reps) REPS=$2; shift 2 ;;
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        *) echo "usage: bench/boot.sh [--reps N] [--size-mib MIB]" >&2; exit 2 ;;
    esac
done
IMG=${IMG:-$repo/target/release/img}
WORK=${WORK:-/work/benchwork/boot}
export PATH="$PATH:/usr/sbin:/sbin"

if [ -z "${LAB_INSIDE:-}" ]; then
    [ -x "$IMG" ] || { echo "bench/boot.sh: no $IMG (cargo build --release -p img, or set IMG)" >&2; exit 1; }
    rm -rf "$WORK/media"
    mkdir -p "$WORK"
    t0=$(date +%s.%N)
    "$IMG" boot build --out "$WORK/media" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
    t1=$(date +%s.%N)
    printf 'img boot build: %.1f s\n' "$(echo "$t1 - $t0" | bc)"
    for f in vmlinuz initrd.img imgcast.iso; do
        printf '%-12s %6.1f MiB\n' "$f" "$(echo "$(stat -c %s "$WORK/media/$f") / 1048576" | bc -l)"
    done
    # The initrd's unpacked size: what it takes of the VM's memory.
    printf '%-12s %6.1f MiB unpacked\n' initrd "$(echo "$(zstd -dc "$WORK/media/initrd.img" | wc -c) / 1048576" | bc -l)"
    export IMG WORK SIZE_MIB REPS
fi
LAB_SCRIPT="$here/boot.sh" lab_enter "${ARGS[@]}"

dir=$(mktemp -d)
trap 'lab_down; rm -rf "$dir"' EXIT
lab_up 1
cat >"$dir/udhcpd.conf" <<EOF
start 10.77.0.100
end 10.77.0.150
interface eth0
lease_file $dir/udhcpd.leases
pidfile $dir/udhcpd.pid
option subnet 255.255.255.0
EOF
: >"$dir/udhcpd.leases"
lab_spawn h0 "$dir/udhcpd.log" busybox udhcpd -f "$dir/udhcpd.conf" >/dev/null
head -c $((SIZE_MIB << 20)) /dev/urandom >"$dir/src.raw"
lab_tap vm

# seconds since $1 (date +%s.%N) when file $2 first contains $3, or "-" after 120 s
when() {
    local start=$1 file=$2 text=$3 i
    for ((i = 0; i < 1200; i++)); do
        if grep -q -- "$text" "$file" 2>/dev/null; then
            echo "$(date +%s.%N) - $start" | bc
            return
        fi
        sleep 0.1
    done
    echo -
}

printf '%-4s %8s %8s %10s %8s\n' run init dhcp registered exit
for ((r = 1; r <= REPS; r++)); do
    head -c $((SIZE_MIB << 20)) /dev/zero >"$dir/vm.raw"
    rm -f "$dir/vm.serial" "$dir/master.log"
    lab_spawn h0 "$dir/master.log" "$IMG" -session bootbench -master -clients=1 -disk="$dir/src.raw" >/dev/null
    m=$LAB_LAST_PID
    start=$(date +%s.%N)
    timeout -k 5 180 qemu-system-x86_64 -nodefaults -display none -no-reboot -m 512 -smp 1 \
        -kernel "$WORK/media/vmlinuz" -initrd "$WORK/media/initrd.img" \
        -append "console=ttyS0 quiet img.session=bootbench img.role=client img.disk=/dev/vda img.after=poweroff" \
        -drive file="$dir/vm.raw",format=raw,if=virtio \
        -netdev tap,id=n0,ifname=lab-vm,script=no,downscript=no -device virtio-net-pci,netdev=n0 \
        -serial file:"$dir/vm.serial" >"$dir/qemu.log" 2>&1 &
    v=$!
    lab_track $v
    t_init=$(when "$start" "$dir/vm.serial" "imgcast: boot media")
    t_dhcp=$(when "$start" "$dir/vm.serial" "(DHCP)")
    t_reg=$(when "$start" "$dir/master.log" "registered")
    lab_wait 120 $v || true
    t_exit=$(echo "$(date +%s.%N) - $start" | bc)
    lab_wait 30 $m || true
    cmp -s "$dir/src.raw" "$dir/vm.raw" && ok=same || ok=DIFFERS
    printf '%-4s %8.1f %8.1f %10.1f %8.1f  disk %s\n' "$r" "$t_init" "$t_dhcp" "$t_reg" "$t_exit" "$ok"
done
