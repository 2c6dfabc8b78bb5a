#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need from Debian's
# packages: nftables (loss injection in the namespace lab), iproute2, util-linux
# (unshare, losetup, mkswap, partx), the filesystems the real-disk tests build
# and check with their own tools (e2fsprogs, dosfstools, mtools, ntfs-3g,
# xfsprogs, btrfs-progs), gdisk and fdisk (partition tables), partclone (the
# used-block maps of filesystems imgcast does not parse itself, and a reference
# in the tests and benchmarks), zstd and udpcast (benchmark references), tmux,
# curl and chromium + chromium-driver (the server's API and dashboard tests);
# for the boot media (`img boot build`) and their tests in virtual machines:
# linux-image-amd64, busybox-static, binutils (strip), grub-common,
# grub-pc-bin, grub-efi-amd64-bin, xorriso, qemu-system-x86 and ovmf; for the
# network boot from the imaging server: ipxe-qemu (the iPXE ROMs of qemu's NICs)
# and dnsmasq-base (the proxy-DHCP configuration of docs/BOOT.md, tested);
# ethtool (the lab's NICs that join datagrams, GRO: a session test, the bench).
# Does nothing when all are present.
set -euo pipefail
need=()
for pair in nft:nftables ip:iproute2 unshare:util-linux losetup:mount mkfs.ext4:e2fsprogs \
            zstd:zstd udp-sender:udpcast tmux:tmux sfdisk:fdisk sgdisk:gdisk \
            mkfs.vfat:dosfstools mcopy:mtools mkntfs:ntfs-3g partclone.ext4:partclone \
            mkfs.xfs:xfsprogs mkfs.btrfs:btrfs-progs \
            curl:curl chromium:chromium chromedriver:chromium-driver python3:python3 \
            strip:binutils grub-mkrescue:grub-common xorriso:xorriso qemu-system-x86_64:qemu-system-x86 \
            dnsmasq:dnsmasq-base ethtool:ethtool; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
# Packages known by a file rather than a command.
for pair in /usr/lib/grub/i386-pc/boot.img:grub-pc-bin /usr/lib/grub/x86_64-efi/kernel.img:grub-efi-amd64-bin \
            /usr/share/OVMF/OVMF_CODE_4M.fd:ovmf /usr/share/doc/busybox-static:busybox-static \
            /usr/lib/ipxe/qemu/pxe-e1000.rom:ipxe-qemu; do
  file=${pair%%:*}; pkg=${pair#*:}
  [ -e "$file" ] || need+=("$pkg")
done
# A kernel with its modules, for the boot media.
compgen -G "/boot/vmlinuz-*" >/dev/null && compgen -G "/lib/modules/*/modules.dep" >/dev/null || need+=(linux-image-amd64)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing packages: ${need[*]}; run as root: apt-get install ${need[*]}" >&2
  exit 1
fi
echo "setup: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
