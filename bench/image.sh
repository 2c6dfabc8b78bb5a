#!/usr/bin/env bash
# bench/image.sh — benchmark of the image engine against the obvious
# baselines. Run by hand, not in CI.
#
#   bench/image.sh [--size-mib 1024] [--reps 3] [--keep]
#
# Builds a disk file of SIZE MiB (default 1 GiB): the first half random
# (AES-CTR keystream from openssl: incompressible and fast), then a quarter
# zeros (written out, not a hole, as on a real disk), then a quarter
# compressible text (generated log lines from a word list). Then it times
#   img make OUT.img -disk=DISK -comp=1     vs  zstd -1 -T0 -f DISK -o OUT.zst
#   img restore OUT.img -disk=TARGET        vs  cp --sparse=always DISK TARGET2
# and checks that TARGET equals DISK (cmp).
#
# Page cache: we can't drop it reliably (no root in CI containers, and
# dropping it would also measure the disk). Instead every command runs once to
# warm up and is then timed REPS times (the median is reported), so both
# sides read from a warm cache.
# Outputs are deleted before each run, so every run writes fresh files.
# Wall, user+sys CPU and peak RSS come from /usr/bin/time -f '%e %U %S %M'
# (Debian package `time`; the script installs it with apt-get if missing).
#
# $IMG is the binary (default target/release/img, built with
# `cargo build --release -p img` if missing). Work files go to $WORK (default
# /work/benchwork/image, not /tmp, which may be small) and are deleted at the
# end unless --keep (the disk is kept with --keep and reused next time).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
SIZE_MIB=1024
KEEP=0
REPS=3
while [ $# -gt 0 ]; do
    case $1 in
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --reps) REPS=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ $((SIZE_MIB % 4)) = 0 ] || { echo "--size-mib must be a multiple of 4" >&2; exit 2; }

WORK=${WORK:-/work/benchwork/image}
IMG=${IMG:-$repo/target/release/img}
TIME=/usr/bin/time
DISK=$WORK/disk-${SIZE_MIB}m.raw
OUT=$WORK/out.img
ZST=$WORK/out.zst
TARGET=$WORK/target.raw
TARGET2=$WORK/target2.raw
SIZE=$((SIZE_MIB << 20))

if [ ! -x $TIME ]; then
    echo "installing the 'time' package for /usr/bin/time" >&2
    apt-get install -y time >/dev/null
fi
for t in zstd openssl awk cmp; do
    command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }
done
if [ ! -x "$IMG" ]; then
    echo "building img (cargo build --release -p img)" >&2
    (cd "$repo" && cargo build --release -p img)
    IMG=$repo/target/release/img
fi

mkdir -p "$WORK"
cleanup() {
    rm -f "$OUT" "$ZST" "$TARGET" "$TARGET2" "$WORK"/*.time "$WORK"/*.time.1 "$WORK"/*.log
    [ $KEEP = 1 ] || rm -f "$DISK"
    rmdir "$WORK" 2>/dev/null || true
}
trap cleanup EXIT

if [ ! -s "$DISK" ] || [ "$(stat -c %s "$DISK")" != $SIZE ]; then
    echo "building $DISK: $((SIZE_MIB / 2)) MiB random, $((SIZE_MIB / 4)) MiB zeros, $((SIZE_MIB / 4)) MiB text" >&2
    {
        # producers end on SIGPIPE when head has enough: hence the `|| true`
        { openssl enc -aes-128-ctr -pass pass:imgcast-image-bench -nosalt -pbkdf2 </dev/zero 2>/dev/null || true; } |
            head -c $((SIZE / 2))
        head -c $((SIZE / 4)) /dev/zero
        { awk -v seed=11 -v total=$((SIZE / 4)) '
        BEGIN {
            srand(seed)
            n = split("accepted rejected session opened closed for user root admin backup daemon from port kernel eth0 link up down " \
                      "timeout retry connection reset peer disk sda nvme0n1 partition mounted unmounted filesystem ext4 clean " \
                      "journal recovery complete started stopped service network manager dhcp lease renewed address assigned " \
                      "warning error info debug request response latency bytes sent received cache hit miss flush write read " \
                      "block sector checksum verified failed ok pending queued worker thread pool scheduler cpu memory swap", w, " ")
            np = split("sshd cron kernel systemd NetworkManager dhclient smartd rsyslogd dockerd nginx postgres", prog, " ")
            while (bytes < total) {
                line = sprintf("2024-%02d-%02dT%02d:%02d:%02d.%03dZ host-%d %s[%d]:", int(rand()*12)+1, int(rand()*28)+1,
                               int(rand()*24), int(rand()*60), int(rand()*60), int(rand()*1000), int(rand()*64),
                               prog[int(rand()*np)+1], int(rand()*32768))
                k = int(rand()*10) + 4
                for (j = 0; j < k; j++) line = line " " w[int(rand()*n)+1]
                if (rand() < 0.3) line = line sprintf(" 10.%d.%d.%d:%d", int(rand()*256), int(rand()*256), int(rand()*256), int(rand()*65536))
                print line
                bytes += length(line) + 1
            }
        }' || true; } | head -c $((SIZE / 4))
    } >"$DISK.tmp"
    mv "$DISK.tmp" "$DISK"
fi
[ "$(stat -c %s "$DISK")" = $SIZE ] || { echo "disk has the wrong size" >&2; exit 1; }

# timed NAME PREP CMD... : run PREP then CMD once to warm up, then REPS
# measured times; leaves "wall user sys maxrss_kib" lines in $WORK/NAME.time
timed() {
    local name=$1 prep=$2 run
    shift 2
    : >"$WORK/$name.time"
    for ((run = 0; run <= REPS; run++)); do
        eval "$prep"
        if ! $TIME -o "$WORK/$name.time.1" -f '%e %U %S %M' "$@" >"$WORK/$name.log" 2>&1; then
            echo "FAILED (run $run): $*" >&2
            tail -n 20 "$WORK/$name.log" >&2
            exit 1
        fi
        [ $run = 0 ] || grep -E '^[0-9.]+ [0-9.]+ [0-9.]+ [0-9]+$' "$WORK/$name.time.1" >>"$WORK/$name.time"
    done
    rm -f "$WORK/$name.time.1"
}
# field NAME 1 = median wall; field NAME 4 = largest peak RSS (KiB)
field() {
    if [ "$2" = 4 ]; then
        awk 'm < $4 { m = $4 } END { print m }' "$WORK/$1.time"
    else
        sort -g -k "$2" "$WORK/$1.time" | awk -v f="$2" '{ v[NR] = $f } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
    fi
}
# median user+sys seconds
cpu() { awk '{ print $2 + $3 }' "$WORK/$1.time" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo "image bench: $SIZE_MIB MiB disk, $(nproc) CPUs, img = $IMG" >&2
timed img_make "rm -f '$OUT'" "$IMG" make "$OUT" -disk="$DISK" -comp=1
timed zstd "rm -f '$ZST'" zstd -q -1 -T0 -f "$DISK" -o "$ZST"
timed img_restore "rm -f '$TARGET'" "$IMG" restore "$OUT" -disk="$TARGET"
timed cp "rm -f '$TARGET2'" cp --sparse=always "$DISK" "$TARGET2"
# img restore fsyncs the target before it writes the first chunk over the
# incomplete marker (so an interrupted restore never looks complete); the
# durable copy is the fair reference for that: cp, then fsync of the file.
timed cp_sync "rm -f '$TARGET2'" sh -c 'cp --sparse=always "$1" "$2" && sync "$2"' cp_sync "$DISK" "$TARGET2"

status=0
if cmp -s "$DISK" "$TARGET"; then same=yes; else same=NO; status=1; fi
cmp -s "$DISK" "$TARGET2" || { echo "cp's copy differs?!" >&2; status=1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
alloc() { du -k "$1" | awk '{ printf "%.1f", $1 / 1024 }'; }

printf '\n%-12s %8s %8s %10s %12s\n' command wall_s cpu_s peak_MiB out_MiB
printf '%-12s %8s %8s %10s %12s\n' "img make" "$(field img_make 1)" "$(cpu img_make)" "$(mib $(($(field img_make 4) * 1024)))" "$(mib "$(stat -c %s "$OUT")")"
printf '%-12s %8s %8s %10s %12s\n' "zstd -1 -T0" "$(field zstd 1)" "$(cpu zstd)" "$(mib $(($(field zstd 4) * 1024)))" "$(mib "$(stat -c %s "$ZST")")"
printf '%-12s %8s %8s %10s %12s\n' "img restore" "$(field img_restore 1)" "$(cpu img_restore)" "$(mib $(($(field img_restore 4) * 1024)))" "$(alloc "$TARGET") alloc"
printf '%-12s %8s %8s %10s %12s\n' "cp --sparse" "$(field cp 1)" "$(cpu cp)" "$(mib $(($(field cp 4) * 1024)))" "$(alloc "$TARGET2") alloc"
printf '%-12s %8s %8s %10s %12s\n' "cp + sync" "$(field cp_sync 1)" "$(cpu cp_sync)" "$(mib $(($(field cp_sync 4) * 1024)))" "$(alloc "$TARGET2") alloc"
echo
echo "zstd_time / img_make_time:   $(ratio "$(field zstd 1)" "$(field img_make 1)")   (above 1: img make is faster)"
echo "copy_time / img_restore_time: $(ratio "$(field cp 1)" "$(field img_restore 1)")   (above 1: img restore is faster)"
echo "durable_copy_time / img_restore_time: $(ratio "$(field cp_sync 1)" "$(field img_restore 1)")   (cp + sync: both end with the data on disk)"
echo "restored target equals source: $same"
echo "(medians of $REPS warm-cache runs after one warm-up; peak = largest; out_MiB of restore/cp = allocated space)"
exit $status
