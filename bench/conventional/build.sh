#!/bin/bash
# The conventional Debian 12 image the benchmark compares Berth with:
# mmdebstrap minbase + linux-image-amd64 + systemd-sysv + udev +
# initramfs-tools + crun, on Berth's disk layout (GPT, FAT32 ESP with
# systemd-boot and a Boot Loader Specification entry, ext4 root), booted
# with systemd as PID 1. No loop device and no mount: the partitions are
# written as files (mkfs.vfat + mtools, mke2fs -d) and copied into the disk
# image at their offsets.
#
# Usage: build.sh OUTDIR [DEB_CACHE]
#   OUTDIR/debian.raw   the disk image
#   OUTDIR/rootfs/      the OS tree (kept for size measurements)
#   OUTDIR/initrd.img   the initramfs
# DEB_CACHE (optional) keeps the downloaded .debs between builds, as a
# user with apt-cacher or a local mirror would have: a warm build skips
# the downloads, not the installation.
#
# Environment: MIRROR (default http://deb.debian.org/debian), DISK_SIZE
# (default 2G), ESP_MIB (default 128, as Berth's esp-size).
set -euo pipefail

out=$(realpath -m "$1")
cache=${2:+$(realpath -m "$2")}
mirror=${MIRROR:-http://deb.debian.org/debian}
disk_size=${DISK_SIZE:-2G}
esp_mib=${ESP_MIB:-128}
packages=linux-image-amd64,systemd-sysv,udev,initramfs-tools,crun,systemd-boot-efi

rm -rf "$out"
mkdir -p "$out"
root=$out/rootfs

# 1. The root file system.
hooks=()
if [ -n "$cache" ]; then
    mkdir -p "$cache"
    hooks+=(--skip=essential/unlink
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives/'
        --setup-hook="sync-in $cache /var/cache/apt/archives/"
        --customize-hook="sync-out /var/cache/apt/archives $cache")
fi
mmdebstrap --quiet --variant=minbase --include="$packages" \
    "${hooks[@]}" \
    --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
    bookworm "$root" "$mirror"

# 2. Configuration a user of such an image would write: hostname, fstab,
#    a root login on the serial console (the benchmark reads the guest's
#    memory through it), an empty machine-id (first boot generates it).
echo debian-bench > "$root/etc/hostname"
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
esp_uuid=$(cat /proc/sys/kernel/random/uuid)
root_uuid=$(cat /proc/sys/kernel/random/uuid)
cat > "$root/etc/fstab" <<EOF
PARTUUID=$root_uuid / ext4 rw,relatime 0 1
EOF
mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
cat > "$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty -o '-p -f -- \\u' --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
EOF

kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n1)
kver=${kernel##*/vmlinuz-}
initrd=$root/boot/initrd.img-$kver
cp "$initrd" "$out/initrd.img"

# 3. The ESP: systemd-boot, one BLS entry, the kernel and the initramfs.
esp=$out/esp.img
rm -f "$esp"
mkfs.vfat -F 32 -n ESP -C "$esp" $((esp_mib * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/debian
mcopy -i "$esp" "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
printf 'default debian.conf\ntimeout 0\n' > "$out/loader.conf"
cat > "$out/debian.conf" <<EOF
title Debian GNU/Linux 12 (bookworm)
linux /debian/vmlinuz
initrd /debian/initrd.img
options root=PARTUUID=$root_uuid rw console=tty0 console=ttyS0,115200 systemd.show_status=1
EOF
mcopy -i "$esp" "$out/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$out/debian.conf" ::/loader/entries/debian.conf
mcopy -i "$esp" "$kernel" ::/debian/vmlinuz
mcopy -i "$esp" "$initrd" ::/debian/initrd.img
rm -f "$out/loader.conf" "$out/debian.conf"

# 4. The disk: GPT with the ESP at 1 MiB and the root after it.
img=$out/debian.raw
rm -f "$img"
truncate -s "$disk_size" "$img"
sfdisk --quiet "$img" <<EOF
label: gpt
start=2048, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$esp_uuid, name=esp
start=$((2048 + esp_mib * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$root_uuid, name=root
EOF
read -r root_start root_sectors < <(sfdisk --dump "$img" | awk -v u="$root_uuid" \
    'toupper($0) ~ toupper(u) { gsub(/[=,]/, " "); for (i = 1; i < NF; i++) { if ($i == "start") s = $(i+1); if ($i == "size") n = $(i+1) } print s, n }')
dd if="$esp" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$esp"
rootimg=$out/root.img
rm -f "$rootimg"
mke2fs -q -t ext4 -L root -d "$root" "$rootimg" $((root_sectors / 2))k
dd if="$rootimg" of="$img" bs=1M seek=$((root_start / 2048)) conv=notrunc,sparse status=none
rm -f "$rootimg"
echo "conventional image: $img (kernel $kver)"
