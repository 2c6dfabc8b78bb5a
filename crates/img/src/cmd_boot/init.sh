#!/bin/sh
# imgcast boot media: PID 1 of the initrd that `img boot build` makes.
# Mounts, loads the drivers of the devices found, brings the network up, then
# hands over to `img boot run`, which reads the orders on the kernel command
# line (docs/BOOT.md). PID 1 must never exit: whatever img does, a shell on the
# console follows.
export PATH=/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
echo "imgcast: boot media, kernel $(uname -r)"
# Quiet the kernel on the console so our lines stay readable.
echo 1 >/proc/sys/kernel/printk

# Drivers: every device's modalias, again after each pass (a PCI bridge or
# virtio_pci reveals more devices).
n=0
while [ $n -lt 4 ]; do
    cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u >/tmp/aliases
    [ -s /tmp/aliases ] && xargs modprobe -q -a </tmp/aliases 2>/dev/null
    n=$((n + 1))
done
# Disks behind SCSI/ATA/USB controllers probe asynchronously; img waits for img.disk.

# Network: kernel-style ip=ADDR::GW:MASK:... if given, else DHCP on each NIC
# until one gets a lease.
ip link set lo up
ifaces=
for d in /sys/class/net/*; do
    i=${d##*/}
    [ "$i" = lo ] && continue
    ip link set "$i" up 2>/dev/null && ifaces="$ifaces $i"
done
static=
for w in $(cat /proc/cmdline); do
    case $w in ip=*:*) static=${w#ip=} ;; esac
done
if [ -z "$ifaces" ]; then
    echo "imgcast: no network interface found (no driver for the NIC?)"
elif [ -n "$static" ]; then
    addr=$(echo "$static" | cut -d: -f1)
    gw=$(echo "$static" | cut -d: -f3)
    mask=$(echo "$static" | cut -d: -f4)
    dev=$(echo "$static" | cut -d: -f6)
    [ -n "$dev" ] || dev=$(echo $ifaces | cut -d' ' -f1)
    ip addr add "$addr/${mask:-24}" dev "$dev"
    if [ -n "$gw" ]; then ip route add default via "$gw" dev "$dev"; else ip route add 224.0.0.0/4 dev "$dev"; fi
    echo "imgcast: $dev $addr (static)"
else
    got=
    for i in $ifaces; do
        echo "imgcast: DHCP on $i"
        if udhcpc -i "$i" -s /etc/udhcpc.script -t 8 -T 2 -A 2 -n -S >/dev/null 2>&1; then
            got=$i
            break
        fi
    done
    [ -n "$got" ] || echo "imgcast: no DHCP answer on:$ifaces"
fi

# The menu and a shell need a terminal size; a serial line has none.
case $(stty size 2>/dev/null) in
'' | '0 '* | *' 0')
    stty rows 24 cols 80
    export TERM=vt100
    ;;
*) export TERM=linux ;;
esac

setsid cttyhack img boot run
echo "imgcast: a shell. 'img boot run' carries out the orders again; 'poweroff -f' ends."
while :; do
    setsid cttyhack sh
done
