#!/usr/bin/env bash
# bench/realdisk.sh — imgcast on a used disk against Clonezilla's pipeline
# (partclone | zstd, and over multicast partclone | zstd | udp-sender), all in one run.
# Run by hand as root (loop devices, mount), not in CI.
#
#   bench/realdisk.sh [--size-mib 2048] [--fill 70] [--clients 4] [--rate 1gbit]
#                     [--skip-multicast | --multicast-only]
#
# The disk: SIZE MiB, GPT, one ext4 partition from 1 MiB to the end, filled to FILL%
# with real files copied from /usr, then every third file deleted, so its free space
# holds old bytes, as a disk after a year of use does. Built once under $WORK
# (default /work/benchwork/realdisk) and kept for later runs.
#
# Measured, each against the reference in the same run:
#   make:      img make -comp=1        vs  partclone.ext4 -c | zstd -1 -T0 (size and time)
#              img make -raw -comp=1   (byte-exact whole disk: what free-space blocks cost)
#   restore:   img restore (file)      vs  zstd -d | partclone.ext4 -r (file), both + sync
#   multicast: 4 clients, links RATE   vs  partclone | zstd -1 -T0 | udp-sender  ->
#              udp-receiver | zstd -d | partclone -r    (in a private namespace LAN; the
#              clients write to a tmpfs, as each would to its own disk on a real LAN)
# and each result is checked: e2fsck -fn on every restored partition, and the files
# of the source tree compared with the restored tree (debugfs rdump) for the local restores.
#
# Nothing leaves the machine: the multicast part runs inside `unshare -Urnm`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=lab/lab.sh
. "$repo/lab/lab.sh"

SIZE_MIB=2048
FILL=70
CLIENTS=4
RATE=1gbit
SKIP_MCAST=
MCAST_ONLY=
ARGS=("$@")
while [ $# -gt 0 ]; do
    case $1 in
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        --fill) FILL=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --skip-multicast) SKIP_MCAST=1; shift ;;
        --multicast-only) MCAST_ONLY=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

WORK=${WORK:-/work/benchwork/realdisk}
IMG=${IMG:-$repo/target/release/img}
DISK=$WORK/disk-${SIZE_MIB}m-${FILL}.raw
PSTART=$((1 << 20))                          # the partition: 1 MiB to the end, less the backup GPT
PSIZE=$(((SIZE_MIB << 20) - PSTART - (1 << 20)))
TIME=/usr/bin/time

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
now() { date +%s.%N; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# A loop device over the partition of a disk file (losetup -P makes no nodes here).
part_loop() { losetup -f --show ${2:-} -o $PSTART --sizelimit $PSIZE "$1"; }

if [ -z "${LAB_INSIDE:-}" ]; then
    [ "$(id -u)" = 0 ] || { echo "run as root: loop devices and mount" >&2; exit 1; }
    for t in partclone.ext4 zstd udp-sender sgdisk mkfs.ext4 e2fsck debugfs; do
        command -v $t >/dev/null || { echo "missing $t (apt-get install partclone zstd udpcast gdisk e2fsprogs)" >&2; exit 1; }
    done
    [ -x $TIME ] || apt-get install -y time >/dev/null
    [ -x "$IMG" ] || { echo "build img first: cargo build --release -p img" >&2; exit 1; }
    mkdir -p "$WORK"
    loops=()
    cleanup() { for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done; }
    trap cleanup EXIT

    if [ ! -s "$DISK" ]; then
        echo "building $DISK: GPT, ext4 filled to $FILL% from /usr, a third of the files deleted" >&2
        rm -f "$DISK.tmp"
        truncate -s $((SIZE_MIB << 20)) "$DISK.tmp"
        # Two calls: `sgdisk -q -o -n ...` in one call writes nothing here.
        sgdisk -o "$DISK.tmp" >/dev/null
        sgdisk -n 1:2048:$(((PSTART + PSIZE) / 512 - 1)) -t 1:8300 -c 1:bench "$DISK.tmp" >/dev/null
        l=$(part_loop "$DISK.tmp"); loops+=("$l")
        mkfs.ext4 -q -F -L bench "$l"
        mnt=$(mktemp -d)
        mount "$l" "$mnt"
        want=$((PSIZE / 100 * FILL))
        round=0
        while [ "$(df -B1 --output=used "$mnt" | tail -n1)" -lt "$want" ] && [ $round -lt 20 ]; do
            left=$((want - $(df -B1 --output=used "$mnt" | tail -n1)))
            mkdir -p "$mnt/copy$round"
            # A cut-off tar stream: real files until the byte budget is spent.
            { tar -C /usr -cf - lib share bin 2>/dev/null || true; } | head -c "$left" |
                { tar -C "$mnt/copy$round" -xf - 2>/dev/null || true; }
            round=$((round + 1))
        done
        find "$mnt" -type f | awk 'NR % 3 == 0' | tr '\n' '\0' | xargs -0 rm -f
        sync
        df -h "$mnt" >&2
        umount "$mnt"; rmdir "$mnt"
        e2fsck -fy "$l" >/dev/null 2>&1 || true
        losetup -d "$l"; loops=()
        mv "$DISK.tmp" "$DISK"
    fi
    ploop=$(part_loop "$DISK" -r); loops+=("$ploop")
    echo "disk $DISK ($SIZE_MIB MiB), partition on $ploop; $(nproc) CPUs"
    df_used=$(debugfs -R stats "$ploop" 2>/dev/null | awk -F: '/^Free blocks/ {f=$2} /^Block count/ {b=$2} /^Block size/ {s=$2} END {printf "%d", (b - f) * s}')
    echo "ext4 used blocks: $(mib "$df_used") MiB of $(mib $PSIZE) MiB"

    out=$WORK/out; rm -rf "$out"; mkdir -p "$out"
    if [ -z "$MCAST_ONLY" ]; then
    echo
    echo "== make"
    t0=$(now); "$IMG" make "$out/disk.img" -disk="$DISK" -comp=1 2>"$out/make.log"; t1=$(now)
    img_s=$(secs "$t0" "$t1"); img_b=$(stat -c %s "$out/disk.img")
    t0=$(now); partclone.ext4 -c -q -s "$ploop" -o - 2>"$out/pc.log" | zstd -1 -T0 -q >"$out/disk.pc.zst"; t1=$(now)
    pc_s=$(secs "$t0" "$t1"); pc_b=$(stat -c %s "$out/disk.pc.zst")
    t0=$(now); "$IMG" make "$out/raw.img" -disk="$DISK" -comp=1 -raw 2>"$out/make-raw.log"; t1=$(now)
    raw_s=$(secs "$t0" "$t1"); raw_b=$(stat -c %s "$out/raw.img")
    printf '  %-34s %10s MiB %8s s\n' "img make -comp=1" "$(mib "$img_b")" "$img_s" \
        "partclone.ext4 -c | zstd -1 -T0" "$(mib "$pc_b")" "$pc_s" \
        "img make -raw -comp=1" "$(mib "$raw_b")" "$raw_s"
    echo "  img/partclone+zstd: size $(ratio "$img_b" "$pc_b"), time $(ratio "$img_s" "$pc_s")"
    echo "  img/img -raw:       size $(ratio "$img_b" "$raw_b"), time $(ratio "$img_s" "$raw_s")"

    echo
    echo "== restore (onto files in $out, then sync)"
    rm -f "$out/target.raw" "$out/target.part"
    t0=$(now); "$IMG" restore "$out/disk.img" -disk="$out/target.raw" -yes 2>"$out/restore.log"; sync; t1=$(now)
    ir_s=$(secs "$t0" "$t1")
    truncate -s $PSIZE "$out/target.part" # partclone restores onto a partition of the size it had
    t0=$(now); zstd -dc -q "$out/disk.pc.zst" | partclone.ext4 -r -q -s - -O "$out/target.part" 2>"$out/pcr.log"; sync; t1=$(now)
    pr_s=$(secs "$t0" "$t1")
    printf '  %-34s %8s s\n' "img restore" "$ir_s" "zstd -d | partclone.ext4 -r" "$pr_s"
    echo "  img/partclone: time $(ratio "$ir_s" "$pr_s")"
    tl=$(part_loop "$out/target.raw" -r); loops+=("$tl")
    e2fsck -fn "$tl" >"$out/fsck-img.log" 2>&1 && echo "  img restore: e2fsck -fn clean" || echo "  img restore: e2fsck -fn FAILED (see $out/fsck-img.log)"
    e2fsck -fn "$out/target.part" >"$out/fsck-pc.log" 2>&1 && echo "  partclone restore: e2fsck -fn clean" || echo "  partclone restore: e2fsck -fn FAILED"
    for side in src dst; do
        d="$out/tree-$side"; rm -rf "$d"; mkdir -p "$d"
        dev=$ploop; [ $side = dst ] && dev=$tl
        debugfs -R "rdump / $d" "$dev" >/dev/null 2>&1
    done
    if diff -r -q --no-dereference "$out/tree-src" "$out/tree-dst" >"$out/diff.log" 2>&1; then
        echo "  img restore: every file equal to the source ($(find "$out/tree-src" -type f | wc -l) files)"
    else
        echo "  img restore: FILES DIFFER"
    fi
    rm -rf "$out/tree-src" "$out/tree-dst"
    losetup -d "$tl"
    fi

    if [ -z "$SKIP_MCAST" ]; then
        echo
        PLOOP=$ploop OUT=$out lab_unshare bash "$0" "${ARGS[@]}"
    fi
    exit 0
fi

# ---- inside the lab: multicast, CLIENTS clients, links RATE ----
lab_init
n=$CLIENTS
# The clients' disks: a tmpfs inside the lab (as in bench/multicast.sh). Here four clients
# share one host disk; on a real LAN each writes its own, so the host disk's speed is left out.
MOUT=/run/realdisk-out
mkdir -p "$MOUT"
mount -t tmpfs -o size=$(((CLIENTS + 1) * SIZE_MIB))m realdisk-out "$MOUT"
run_mcast() { # run_mcast TOOL -> seconds, and checks
    local tool=$1 i pids=() t0 t1 ok=0
    lab_up $((n + 1))
    for ((i = 0; i <= n; i++)); do lab_rate h$i "$RATE"; done
    for ((i = 1; i <= n; i++)); do
        rm -f "$MOUT/m$i"
        [ "$tool" = img ] || truncate -s $PSIZE "$MOUT/m$i"
        if [ "$tool" = img ]; then
            lab_spawn h$i "$OUT/mc-$tool-$i.log" "$IMG" -session realdisk -client -disk="$MOUT/m$i" -interface=eth0 -yes >/dev/null
        else
            lab_spawn h$i "$OUT/mc-$tool-$i.log" bash -c "udp-receiver --nokbd --interface eth0 --mcast-rdv-address 231.77.0.1 --start-timeout 60 | zstd -dc -q | partclone.ext4 -r -q -s - -O '$MOUT/m$i'" >/dev/null
        fi
        pids+=("$LAB_LAST_PID")
    done
    sleep 0.5
    t0=$(now)
    if [ "$tool" = img ]; then
        lab_exec h0 "$IMG" -session realdisk -master -clients=$n -disk="$DISK" -interface=eth0 >"$OUT/mm-$tool.out" 2>"$OUT/mm-$tool.log" || true
    else
        lab_exec h0 bash -c "partclone.ext4 -c -q -s '$PLOOP' -o - 2>/dev/null | zstd -1 -T0 -q | udp-sender --nokbd --interface eth0 --min-receivers $n --mcast-rdv-address 231.77.0.1 --rexmit-hello-interval 200" >"$OUT/mm-$tool.out" 2>"$OUT/mm-$tool.log" || true
    fi
    lab_wait 600 "${pids[@]}" >/dev/null 2>&1 || true
    t1=$(now)
    for ((i = 1; i <= n; i++)); do
        if [ "$tool" = img ]; then
            # The partition of the restored disk, without a loop device: e2fsck on a copy of it.
            dd if="$MOUT/m$i" of="$MOUT/m$i.p" bs=1M skip=$((PSTART >> 20)) count=$((PSIZE >> 20)) status=none 2>/dev/null || true
            e2fsck -fn "$MOUT/m$i.p" >/dev/null 2>&1 && ok=$((ok + 1))
            rm -f "$MOUT/m$i.p"
        else
            e2fsck -fn "$MOUT/m$i" >/dev/null 2>&1 && ok=$((ok + 1))
        fi
        rm -f "$MOUT/m$i"
    done
    lab_down
    echo "$(secs "$t0" "$t1") $ok"
}
echo "== multicast: $n clients, links $RATE"
# The last line of run_mcast is its result (the lab's own chatter may come before it).
read -r ms mok < <(run_mcast img 2>/dev/null | tail -n 1)
read -r ps pok < <(run_mcast partclone 2>/dev/null | tail -n 1)
printf '  %-50s %8s s  %s/%s clean\n' "img -session (master reads the disk)" "$ms" "$mok" "$n" \
    "partclone | zstd | udp-sender -> udp-receiver | zstd -d | partclone -r" "$ps" "$pok" "$n"
echo "  img/partclone pipeline: wall $(ratio "$ms" "$ps")"
