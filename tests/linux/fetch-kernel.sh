#!/usr/bin/env bash
# fetch-kernel.sh DIR
#
# Makes sure DIR/Image is an unmodified Debian arm64 cloud kernel (a raw arm64 `Image`, which is
# what Debian ships as /boot/vmlinuz-*-cloud-arm64) and prints one line saying which. Exit 0:
# DIR/Image is there; exit 2: it could not be had (no network, no downloader, mirror down), with
# the reason on the last line of stderr. Nothing needs root.
#
# Which kernel: the version pinned below, verified by its SHA-256, from the Debian security
# archive (where bookworm's kernel updates live). Debian drops superseded kernels from the pool,
# so if the pinned .deb is gone the newest linux-image-6.1.0-*-cloud-arm64 in the bookworm-security
# (then bookworm) package index is taken, checked against the SHA-256 the index gives.
# The download is cached: DIR/Image, DIR/Image.source (the package it came from) and DIR/modules/
# (the same package's virtio modules, below, plus `order`: their names in load order).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 1; }
dir=$1
mkdir -p "$dir"

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}
# The kernel the `linux` suite was verified with (6.1.192, Debian 12 "bookworm").
PIN_PACKAGE=linux-image-6.1.0-56-cloud-arm64
PIN_FILE=pool/updates/main/l/linux-signed-arm64/linux-image-6.1.0-56-cloud-arm64_6.1.192-2_arm64.deb
PIN_ARCHIVE=debian-security
PIN_SHA256=481ab54a27246579aadeb372315c56de02f2fe0cba4e09b387946269fff2f415
# Package indexes searched for the fallback, newest archive first.
INDEXES=(
  debian-security/dists/bookworm-security/main/binary-arm64
  debian/dists/bookworm/main/binary-arm64
)
TRIES=3
# The modules the `linux` suite loads to drive a virtio-blk-pci disk (the cloud kernel builds
# CONFIG_VIRTIO, _PCI, _BLK as modules), in load order: each one's `depends=` (its .modinfo) names
# only modules before it, which is checked below. The package has no modules.dep (depmod makes it
# at install time) and its modules are not compressed (CONFIG_MODULE_COMPRESS_NONE=y), so /init
# can hand the raw files to finit_module(2).
MODULES=(
  drivers/virtio/virtio_ring
  drivers/virtio/virtio
  drivers/virtio/virtio_pci_modern_dev
  drivers/virtio/virtio_pci_legacy_dev
  drivers/virtio/virtio_pci
  drivers/block/virtio_blk
)

log() { printf 'fetch-kernel: %s\n' "$*" >&2; }
unavailable() { log "$*"; exit 2; }
broken() { log "$*"; exit 1; }

if [ -s "$dir/Image" ] && [ -s "$dir/Image.source" ] && [ -s "$dir/modules/order" ]; then
  printf 'cached %s\n' "$(cat "$dir/Image.source")"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# get URL FILE: one download with whatever this machine has (curl and wget are not on every
# fresh Debian; apt's own helper and python3 usually are).
get() {
  local url=$1 file=$2
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --connect-timeout 20 --max-time 600 -o "$file" "$url"
  elif command -v wget >/dev/null 2>&1; then
    wget -q --timeout=20 -O "$file" "$url"
  elif [ -x /usr/lib/apt/apt-helper ]; then
    /usr/lib/apt/apt-helper -qq download-file "$url" "$file" >/dev/null
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f)' "$url" "$file"
  else
    unavailable "no downloader (curl, wget, apt-helper or python3)"
  fi
}

# fetch URL FILE [SHA256]: `get` with retries (and the digest checked on each try), so that one
# mirror hiccup or truncated transfer does not fail CI.
fetch() {
  local i
  for i in $(seq 1 "$TRIES"); do
    rm -f "$2"
    if get "$1" "$2" 2>"$work/err" && [ -s "$2" ]; then
      if [ -z "${3:-}" ] || sha256_ok "$2" "$3"; then
        return 0
      fi
      log "try $i/$TRIES of $1: SHA-256 is not $3"
      BAD_DIGEST=yes
    else
      log "try $i/$TRIES of $1 failed: $(tail -n1 "$work/err" 2>/dev/null)"
    fi
    if [ "$i" -lt "$TRIES" ]; then sleep $((i * 3)); fi
  done
  return 1
}

sha256_ok() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# unxz FILE: its decompressed bytes on stdout (xz-utils, else python3's lzma module).
unxz_to_stdout() {
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$1"
  else
    python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$1"
  fi
}

# newest_in_index INDEX: "PACKAGE FILENAME SHA256" of the newest 6.1 cloud kernel it lists.
newest_in_index() {
  fetch "$MIRROR/$1/Packages.xz" "$work/Packages.xz" || return 1
  unxz_to_stdout "$work/Packages.xz" | awk '
    /^Package: / { pkg = $2; file = ""; sum = "" }
    /^Filename: / { file = $2 }
    /^SHA256: / { sum = $2 }
    /^$/ && pkg ~ /^linux-image-6\.1\.0-[0-9]+-cloud-arm64$/ && file != "" { print pkg, file, sum; pkg = "" }
  ' | sort -V | tail -n1
}

deb=$work/kernel.deb
source=""
BAD_DIGEST=no
if fetch "$MIRROR/$PIN_ARCHIVE/$PIN_FILE" "$deb" "$PIN_SHA256"; then
  source="$PIN_PACKAGE ($PIN_FILE, sha256 $PIN_SHA256, pinned)"
else
  log "pinned $PIN_PACKAGE is not on $MIRROR; looking for the newest 6.1 cloud kernel"
  for index in "${INDEXES[@]}"; do
    line=$(newest_in_index "$index" || true)
    [ -n "$line" ] || continue
    read -r pkg file sum <<<"$line"
    archive=${index%%/*}
    fetch "$MIRROR/$archive/$file" "$deb" "$sum" || continue
    source="$pkg ($file, sha256 $sum, newest in $archive; NOT the pinned version)"
    break
  done
  if [ -z "$source" ]; then
    # Served, but never with the right bytes: not a network outage, something to look at.
    [ "$BAD_DIGEST" = no ] || broken "downloads kept arriving with the wrong SHA-256"
    unavailable "no Debian cloud kernel could be downloaded from $MIRROR"
  fi
fi

# The .deb's data.tar holds ./boot/vmlinuz-<version>-cloud-arm64. dpkg-deb is on every Debian;
# `ar` (binutils) is the fallback elsewhere.
if command -v dpkg-deb >/dev/null 2>&1; then
  dpkg-deb --fsys-tarfile "$deb" >"$work/data.tar"
elif command -v ar >/dev/null 2>&1; then
  (cd "$work" && ar x kernel.deb)
  member=$(cd "$work" && ls data.tar* | head -n1)
  case $member in
    data.tar.xz) unxz_to_stdout "$work/$member" >"$work/data.tar" ;;
    data.tar.zst) zstd -dc "$work/$member" >"$work/data.tar" ;;
    data.tar.gz) gzip -dc "$work/$member" >"$work/data.tar" ;;
    *) broken "unexpected member '$member' in the .deb" ;;
  esac
else
  broken "neither dpkg-deb nor ar to unpack the .deb"
fi
vmlinuz=$(tar -tf "$work/data.tar" | grep -E '^\./boot/vmlinuz-' | head -n1)
[ -n "$vmlinuz" ] || broken "no boot/vmlinuz-* in the package"
tar -xOf "$work/data.tar" "$vmlinuz" >"$work/Image"
# A raw arm64 Image has "ARM\x64" at offset 0x38 (Documentation/arch/arm64/booting.rst).
[ "$(od -An -tx1 -j56 -N4 "$work/Image" | tr -d ' \n')" = 41524d64 ] ||
  broken "$vmlinuz is not a raw arm64 Image"

# The modules, as ./lib/modules/<version>/kernel/<path>.ko.
rm -rf "$work/modules" && mkdir -p "$work/modules"
loaded=" "
for m in "${MODULES[@]}"; do
  name=${m##*/}
  member=$(tar -tf "$work/data.tar" | grep -E "^\./lib/modules/[^/]+/kernel/$m\.ko$" | head -n1)
  [ -n "$member" ] || broken "no $m.ko in the package (compressed or renamed?)"
  tar -xOf "$work/data.tar" "$member" >"$work/modules/$name.ko"
  # An uncompressed module is an ELF file.
  [ "$(od -An -tx1 -N4 "$work/modules/$name.ko" | tr -d ' \n')" = 7f454c46 ] ||
    broken "$member is not an uncompressed ELF module"
  deps=$(tr '\0' '\n' <"$work/modules/$name.ko" | sed -n 's/^depends=//p' | head -n1)
  for d in ${deps//,/ }; do
    case $loaded in
      *" $d "*) ;;
      *) broken "$name depends on $d, which is not loaded before it" ;;
    esac
  done
  loaded+="$name "
  printf '%s\n' "$name" >>"$work/modules/order"
done
mv "$work/Image" "$dir/Image"
rm -rf "$dir/modules" && mv "$work/modules" "$dir/modules"
printf '%s\n' "$source" >"$dir/Image.source"
printf 'downloaded %s\n' "$source"
