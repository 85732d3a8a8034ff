#!/usr/bin/env bash
# mkinitramfs.sh OUT.cpio < LIST
#
# Writes an uncompressed cpio archive in the "newc" format Linux unpacks as an initramfs
# (Documentation/driver-api/early-userspace/buffer-format.rst), from a list on stdin in the
# format of the kernel's own usr/gen_init_cpio, one entry a line:
#
#   dir  <name> <mode>
#   nod  <name> <mode> c|b <major> <minor>
#   file <name> <mode> <source file>
#
# (uid and gid are always 0). Plain bash + coreutils, because `cpio` is not on a fresh Debian.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 OUT.cpio < LIST" >&2; exit 2; }
out=$1
ino=0x300000 # arbitrary, unique per entry; the kernel only uses it to find hard links
: >"$out"

# pad: zero bytes up to the next multiple of 4 of the archive's length.
pad() {
  local size
  size=$(stat -c %s "$out")
  head -c $(((4 - size % 4) % 4)) /dev/zero >>"$out"
}

# entry NAME MODE(octal, with the file type bits) SIZE RDEVMAJOR RDEVMINOR: the header and name.
entry() {
  local name=$1 mode=$2 size=$3 major=$4 minor=$5
  ino=$((ino + 1))
  # magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
  # rdevminor, namesize (with the NUL), check: 13 fields of 8 hex digits.
  printf '070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x' \
    "$ino" "$((8#$mode))" 0 0 1 0 "$size" 0 0 "$major" "$minor" $((${#name} + 1)) 0 >>"$out"
  printf '%s\0' "$name" >>"$out"
  pad
}

while read -r kind name mode a b c; do
  case $kind in
    "" | "#"*) continue ;;
    dir) entry "$name" "04$(printf '%04o' "$((8#$mode))")" 0 0 0 ;;
    nod)
      case $a in
        c) entry "$name" "02$(printf '%04o' "$((8#$mode))")" 0 "$b" "$c" ;;
        b) entry "$name" "06$(printf '%04o' "$((8#$mode))")" 0 "$b" "$c" ;;
        *) echo "$0: $name: device type '$a' is not c or b" >&2; exit 1 ;;
      esac
      ;;
    file)
      [ -f "$a" ] || { echo "$0: $name: no such file $a" >&2; exit 1; }
      entry "$name" "10$(printf '%04o' "$((8#$mode))")" "$(stat -c %s "$a")" 0 0
      cat "$a" >>"$out"
      pad
      ;;
    *) echo "$0: unknown entry '$kind'" >&2; exit 1 ;;
  esac
done
entry TRAILER!!! 0 0 0 0
