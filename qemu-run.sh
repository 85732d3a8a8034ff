#!/usr/bin/env bash
# Build Verso and boot it on QEMU virt.
#
#   ./qemu-run.sh              build the release images and boot the demo host kernel under Verso
#   ./qemu-run.sh test         cargo test of the core, then every QEMU suite (table below); ends with
#                              one line "N passed, N failed" over everything; non-zero on any failure
#   ./qemu-run.sh bench        instruction counts (-icount shift=0) of hypercalls, vCPU round trips,
#                              in-place conversion vs a bounce-buffer copy; prints a table, writes CSV
#   ./qemu-run.sh --gdb [K]    boot payload K (default: demo) with QEMU halted, waiting for gdb on :1234
#   ./qemu-run.sh linux [ARGS] boot an unmodified Debian arm64 kernel under Verso with the `linux`
#                              suite's initramfs (tests/linux/); ARGS are added to its bootargs
#
# Both modes set themselves up first: the Rust targets and llvm-tools for the pinned toolchain, and
# QEMU >= 8.2 (on Debian bookworm from bookworm-backports; installed when run as root, otherwise
# the exact commands are printed).
set -euo pipefail

# Every path below is relative to the repository root.
cd "$(dirname "${BASH_SOURCE[0]}")"

TOOLCHAIN=1.95.0
HYP_TARGET=aarch64-unknown-none-softfloat
KERNEL_TARGET=aarch64-unknown-none
TARGET_DIR=${CARGO_TARGET_DIR:-target}
HYP_ELF=$TARGET_DIR/$HYP_TARGET/release/verso
KERNEL_DIR=$TARGET_DIR/$KERNEL_TARGET/release
OUT=out
QEMU=${QEMU:-qemu-system-aarch64}
QEMU_MIN=8.2
# Where every host payload goes; Verso finds it there (docs/boot.md, `verso.payload=`).
PAYLOAD_ADDR=0x44000000
# Bootargs Verso itself consumes (it strips every verso.* word before the host sees them).
HYP_ARGS=${VERSO_ARGS:-verso.log=info}

# Where a host-role kernel that runs VMs finds the guest-role image (tests/kernels/src/vmm.rs):
# QEMU loads it into host RAM and the host donates those very pages to the VM.
GUEST_ADDR=0x50000000

# The QEMU suites, one per line: name, payload (a tests/kernels binary), CPUs, the payload's own
# bootargs, timeout in seconds, the guest image QEMU loads at GUEST_ADDR ("-" for none), and
# (optional, the rest of the line) extra QEMU arguments. Adding a suite is adding a line.
SUITES=(
  "host        host-suite   4   suite=host   60   -"
  "vm          vm-suite     4   suite=vm     120  guest-worker"
  "smp         smp-suite    4   suite=smp    240  guest-worker"
  "dma         dma-suite    2   suite=dma    120  guest-worker -device edu,dma_mask=0xffffffffffffffff -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1 -device edu,bus=rp1,dma_mask=0xffffffffffffffff"
)
# Payloads built besides the suites'.
EXTRA_PAYLOADS=(demo vm-bench guest-worker)
# The benchmark: host payload, guest image, and where its CSV goes.
BENCH_PAYLOAD=vm-bench
BENCH_GUEST=guest-worker
BENCH_CSV=$OUT/bench.csv

# The `linux` suite (tests/linux/, docs/boot.md "Booting Linux"): an unmodified Debian arm64 cloud
# kernel boots under Verso with an initramfs whose /init checks, from Linux user space, what Verso
# handed the kernel. The kernel is downloaded once into LINUX_OUT (tests/linux/fetch-kernel.sh).
# QEMU hands `-initrd` only to a kernel it loads itself (not to Verso's ELF), so the initramfs is
# loaded at LINUX_INITRD_ADDR and named by Linux's own `initrd=<addr>,<size>` bootarg.
LINUX_OUT=$OUT/linux
LINUX_INIT_ELF=$TARGET_DIR/$KERNEL_TARGET/release/verso-linux-init
LINUX_INITRD_ADDR=0x48000000
LINUX_CPUS=4
LINUX_TIMEOUT=180
# Device DMA of the unmodified kernel through Verso's SMMU (docs/boot.md, "DMA through the SMMU"):
# a virtio-blk-pci disk on PCI bus 0 (00:01.0, so StreamID 0x8, one of the host StreamIDs Verso
# points at the host's stage-2), regenerated with random bytes for every boot. `iommu_platform=on`
# is what makes QEMU send a virtio device's DMA through the SMMU at all (without it QEMU's virtio
# reads guest RAM directly, whatever the IOMMU says); modern-only, because a legacy virtio device
# cannot offer VIRTIO_F_ACCESS_PLATFORM. /init writes LINUX_DISK_WRITE_OFFSET's block.
LINUX_DISK=$LINUX_OUT/disk.img
LINUX_DISK_BYTES=2097152
LINUX_DISK_PCI=0000:00:01.0
LINUX_DISK_SID=0x8
LINUX_DISK_WRITE_OFFSET=1114112
# QEMU's own record of what its SMMU did (trace events, `-D`): which StreamIDs translated, at
# which stage, and every event record or error the SMMU raised. Verso keeps DMA faults for the
# DMA_FAULTS_READ hypercall, which Linux never makes, so the harness reads QEMU's side instead.
LINUX_SMMU_TRACE=$LINUX_OUT/smmu-trace.log
LINUX_SMMU_EVENTS=(smmuv3_translate_success smmuv3_translate_abort smmuv3_translate_bypass
  smmuv3_translate_disable smmuv3_record_event smmuv3_write_gerror smmuv3_cmdq_consume_error)

say() { printf '%s\n' "$*"; }
die() { printf 'qemu-run.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Set-up

version_ge() { # version_ge A B: A >= B
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]
}

qemu_ok() {
  command -v "$QEMU" >/dev/null 2>&1 || return 1
  local v
  v=$("$QEMU" --version | sed -n '1s/.*version \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
  [ -n "$v" ] && version_ge "$v" "$QEMU_MIN"
}

# The commands that install a new enough QEMU on this machine, one per line.
qemu_install_commands() {
  local codename=""
  if [ -r /etc/os-release ]; then
    codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
  fi
  if [ "$codename" = bookworm ]; then
    # Debian 12 ships QEMU 7.2 (no SMMUv3 stage 2); bookworm-backports has 10.0.
    cat <<'EOF'
printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > /etc/apt/sources.list.d/bookworm-backports.sources
apt-get update
apt-get install -y -t bookworm-backports qemu-system-arm
EOF
  else
    cat <<'EOF'
apt-get update
apt-get install -y qemu-system-arm
EOF
  fi
}

ensure_qemu() {
  qemu_ok && return 0
  if command -v "$QEMU" >/dev/null 2>&1; then
    say "qemu-run.sh: $("$QEMU" --version | head -n1) is older than $QEMU_MIN"
  else
    say "qemu-run.sh: $QEMU not found"
  fi
  if [ "$(id -u)" -ne 0 ]; then
    say "Run these commands as root (e.g. in 'sudo -i'), then run this script again:"
    qemu_install_commands | sed 's/^/  /'
    exit 1
  fi
  command -v apt-get >/dev/null 2>&1 || die "no apt-get: install QEMU >= $QEMU_MIN by hand"
  say "Installing QEMU >= $QEMU_MIN:"
  local cmd
  while IFS= read -r cmd; do
    say "  # $cmd"
    DEBIAN_FRONTEND=noninteractive sh -c "$cmd"
  done < <(qemu_install_commands)
  qemu_ok || die "QEMU >= $QEMU_MIN still missing after installing it"
}

setup() {
  command -v rustup >/dev/null 2>&1 || die "rustup not found: install the Rust toolchain (https://rustup.rs)"
  local log
  log=$(mktemp)
  if ! rustup target add --toolchain "$TOOLCHAIN" "$KERNEL_TARGET" "$HYP_TARGET" >"$log" 2>&1 ||
    ! rustup component add --toolchain "$TOOLCHAIN" llvm-tools >>"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "rustup could not install the targets or llvm-tools for $TOOLCHAIN"
  fi
  rm -f "$log"
  command -v timeout >/dev/null 2>&1 || die "timeout (coreutils) not found"
  ensure_qemu
}

# ---------------------------------------------------------------------------------------------
# Build

objcopy_path() {
  local sysroot host
  sysroot=$(rustc +"$TOOLCHAIN" --print sysroot)
  host=$(rustc +"$TOOLCHAIN" -vV | sed -n 's/^host: //p')
  printf '%s/lib/rustlib/%s/bin/rust-objcopy' "$sysroot" "$host"
}

payloads() {
  local line payload guest
  for line in "${SUITES[@]}"; do
    read -r _ payload _ _ _ guest _ <<<"$line"
    printf '%s\n' "$payload"
    if [ -n "$guest" ] && [ "$guest" != - ]; then
      printf '%s\n' "$guest"
    fi
  done
  printf '%s\n' "${EXTRA_PAYLOADS[@]}"
}

# Returns non-zero on failure (explicitly: `test` calls it where `set -e` does not apply).
build() {
  say "== build: hyp ($HYP_TARGET) and test kernels ($KERNEL_TARGET), release"
  cargo build --release -p verso-arch --target "$HYP_TARGET" || return 1
  cargo build --release -p verso-test-kernels --target "$KERNEL_TARGET" || return 1
  local objcopy p
  objcopy=$(objcopy_path) || return 1
  if [ ! -x "$objcopy" ]; then
    say "qemu-run.sh: rust-objcopy not found at $objcopy (llvm-tools component)"
    return 1
  fi
  mkdir -p "$OUT"
  for p in $(payloads | sort -u); do
    "$objcopy" -O binary "$KERNEL_DIR/$p" "$OUT/$p.bin" || return 1
  done
}

# ---------------------------------------------------------------------------------------------
# Run

# qemu_cmd PAYLOAD CPUS "PAYLOAD BOOTARGS" [GUEST ["EXTRA QEMU ARGS"]]: prints nothing, fills the
# QEMU_CMD array.
# GUEST (a guest-role binary, or "-"/empty for none) is loaded at GUEST_ADDR.
qemu_cmd() {
  QEMU_CMD=(
    "$QEMU" -M virt,virtualization=on,gic-version=3,iommu=smmuv3 -cpu max -smp "$2" -m 1G
    -nographic -semihosting -nic none
    -kernel "$HYP_ELF"
    -device "loader,file=$OUT/$1.bin,addr=$PAYLOAD_ADDR,force-raw=on"
  )
  if [ -n "${4:-}" ] && [ "$4" != - ]; then
    QEMU_CMD+=(-device "loader,file=$OUT/$4.bin,addr=$GUEST_ADDR,force-raw=on")
  fi
  local extra=()
  read -r -a extra <<<"${5:-}"
  QEMU_CMD+=("${extra[@]}" -append "$HYP_ARGS $3")
}

# The QEMU command as one line a reader can paste (arguments with spaces quoted).
shown_cmd() {
  local a line=""
  for a in "${QEMU_CMD[@]}"; do
    case $a in
      *" "*) line+="\"$a\" " ;;
      *) line+="$a " ;;
    esac
  done
  printf '%s' "${line% }"
}

run_demo() {
  # An edu on bus 0: the demo's DMA into a guest page, refused while private, then accepted.
  qemu_cmd demo 4 "" guest-worker "-device edu,dma_mask=0xffffffffffffffff"
  say "== boot: timeout 60 $(shown_cmd)"
  local rc=0
  timeout 60 "${QEMU_CMD[@]}" </dev/null || rc=$?
  case $rc in
    0) say "== demo finished: QEMU exited with status 0" ;;
    124) die "demo timed out after 60 s" ;;
    *) die "demo failed: QEMU exited with status $rc" ;;
  esac
}

run_gdb() {
  local payload=${1:-demo}
  [ -f "$OUT/$payload.bin" ] || die "no payload out/$payload.bin (one of: $(payloads | sort -u | tr '\n' ' '))"
  qemu_cmd "$payload" 4 ""
  say "== QEMU is halted at reset and waits for gdb on localhost:1234. In another terminal:"
  say "  gdb-multiarch $HYP_ELF \\"
  say "    -ex 'target remote localhost:1234' \\"
  say "    -ex 'add-symbol-file $KERNEL_DIR/$payload' \\"
  say "    -ex 'break *$PAYLOAD_ADDR' -ex continue      # stops where the host payload starts"
  say "  (gdb-multiarch: apt-get install gdb-multiarch; quit QEMU with Ctrl-a x)"
  "${QEMU_CMD[@]}" -s -S
}

# Totals over everything `test` runs.
PASSED=0
FAILED=0

run_cargo_test() {
  say "== cargo test (the portable core)"
  local log rc=0 p f line
  log=$(mktemp)
  cargo test 2>&1 | tee "$log" || rc=$?
  local counted_failed=0
  while IFS= read -r line; do
    p=$(sed -n 's/.* \([0-9][0-9]*\) passed;.*/\1/p' <<<"$line")
    f=$(sed -n 's/.* \([0-9][0-9]*\) failed;.*/\1/p' <<<"$line")
    PASSED=$((PASSED + ${p:-0}))
    FAILED=$((FAILED + ${f:-0}))
    counted_failed=$((counted_failed + ${f:-0}))
  done < <(grep '^test result: ' "$log" || true)
  rm -f "$log"
  if [ "$rc" -ne 0 ] && [ "$counted_failed" -eq 0 ]; then
    # A build error or a crashed test binary: no per-test line says so.
    say "FAIL: cargo test (exit status $rc)"
    FAILED=$((FAILED + 1))
  fi
}

# run_suite NAME PAYLOAD CPUS BOOTARGS TIMEOUT GUEST [EXTRA QEMU ARGS]
run_suite() {
  local name=$1 payload=$2 cpus=$3 args=$4 limit=$5 guest=${6:--} extra=${7:-}
  qemu_cmd "$payload" "$cpus" "$args" "$guest" "$extra"
  run_qemu_suite "$name" "$limit"
}

# run_qemu_suite NAME TIMEOUT [LOG]: boots QEMU_CMD under the timeout, prints its lines and adds its
# PASS/FAIL lines to the totals (one more failure for a timeout, a crash or a missing or wrong
# summary). Leaves QEMU's exit status in SUITE_RC and, if LOG is given, the console output there.
SUITE_RC=0
run_qemu_suite() {
  local name=$1 limit=$2 keep=${3:-}
  say "== suite $name: timeout $limit $(shown_cmd)"
  local log rc=0
  log=$(mktemp)
  timeout "$limit" "${QEMU_CMD[@]}" </dev/null >"$log" 2>&1 || rc=$?
  SUITE_RC=$rc
  tr -d '\r' <"$log" >"$log.clean"
  # Every line, except that the suite's own summary is relabelled so the only bare
  # "N passed, N failed" line is the grand total at the end.
  sed -E "s/^([0-9]+ passed, [0-9]+ failed)\$/suite $name: \\1/" "$log.clean"
  local p f summary
  p=$(grep -c '^PASS: ' "$log.clean" || true)
  f=$(grep -c '^FAIL: ' "$log.clean" || true)
  summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log.clean" | tail -n1 || true)
  if [ -n "$keep" ]; then
    cp "$log.clean" "$keep"
  fi
  rm -f "$log" "$log.clean"
  PASSED=$((PASSED + p))
  FAILED=$((FAILED + f))
  local why=""
  if [ "$rc" -eq 124 ]; then
    why="timed out after $limit s"
  elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    why="QEMU exited with status $rc and no FAIL line"
  elif [ -z "$summary" ]; then
    why="no summary line"
  elif [ "$summary" != "$p passed, $f failed" ]; then
    why="summary '$summary' disagrees with the $p PASS and $f FAIL lines"
  fi
  if [ -n "$why" ]; then
    say "FAIL: suite $name ($why)"
    FAILED=$((FAILED + 1))
  fi
}

# ---------------------------------------------------------------------------------------------
# The `linux` suite

# Downloads (once) the Debian kernel into LINUX_OUT. Returns 0 when LINUX_OUT/Image is there;
# 2 when it cannot be had for want of a network or mirror (LINUX_UNAVAILABLE says why); 1 on any
# other failure.
LINUX_UNAVAILABLE=""
linux_kernel() {
  local err rc=0
  err=$(mktemp)
  tests/linux/fetch-kernel.sh "$LINUX_OUT" 2>"$err" || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$err" >&2
    LINUX_UNAVAILABLE=$(tail -n1 "$err" | sed 's/^fetch-kernel: //')
  fi
  rm -f "$err"
  return "$rc"
}

# linux_initramfs EXTRA_BOOTARGS: builds /init (tests/linux, a workspace of its own so the root
# `cargo test` stays host-only) and packs LINUX_OUT/initramfs.cpio with what /init is to expect;
# sets LINUX_BOOTARGS (the payload's bootargs, without Verso's words).
linux_initramfs() {
  cargo build --release --manifest-path tests/linux/Cargo.toml --target "$KERNEL_TARGET" \
    --target-dir "$TARGET_DIR" || return 1
  local dir=$LINUX_OUT/initramfs.d cpio=$LINUX_OUT/initramfs.cpio marker size placeholder pass
  mkdir -p "$dir"
  marker=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  printf '%s\n' "$marker" >"$dir/marker"
  printf '%s\n' "$LINUX_CPUS" >"$dir/cpus"
  # Random bytes, packed last: /init checks their SHA-256, so a truncated or altered initramfs fails.
  head -c 1048576 /dev/urandom >"$dir/blob"
  sha256sum "$dir/blob" | cut -d' ' -f1 >"$dir/blob.sha256"
  # The virtio-blk disk, random for every boot, and the block /init writes into it: /init checks
  # the disk's SHA-256 before and after, the harness finds the block in the file afterwards.
  head -c "$LINUX_DISK_BYTES" /dev/urandom >"$LINUX_DISK"
  printf '%s\n' "$LINUX_DISK_BYTES" >"$dir/disk.size"
  printf '%s\n' "$LINUX_DISK_PCI" >"$dir/disk.pci"
  sha256sum "$LINUX_DISK" | cut -d' ' -f1 >"$dir/disk.sha256"
  head -c 4096 /dev/urandom >"$dir/write.bin"
  printf '%s\n' "$LINUX_DISK_WRITE_OFFSET" >"$dir/write.offset"
  cp "$LINUX_DISK" "$dir/disk.after"
  dd if="$dir/write.bin" of="$dir/disk.after" bs=4096 seek=$((LINUX_DISK_WRITE_OFFSET / 4096)) \
    conv=notrunc status=none
  sha256sum "$dir/disk.after" | cut -d' ' -f1 >"$dir/disk.after.sha256"
  rm -f "$dir/disk.after"
  local modules=$LINUX_OUT/modules m module_lines=""
  cp "$modules/order" "$dir/modules"
  while IFS= read -r m; do
    module_lines+="file modules/$m.ko 644 $modules/$m.ko"$'\n'
  done <"$modules/order"
  # The initrd size goes into the bootargs, which are packed too: a fixed-width size lets the
  # second pass produce an archive exactly as long as the first.
  placeholder=0x00000000
  size=$placeholder
  for pass in 1 2; do
    LINUX_BOOTARGS="console=ttyAMA0 rdinit=/init panic=-1 initrd=$LINUX_INITRD_ADDR,$size marker=$marker${1:+ $1}"
    # What Linux must see: the whole -append string minus every verso.* word (docs/boot.md).
    printf '%s\n' "$HYP_ARGS $LINUX_BOOTARGS" | tr ' ' '\n' | grep -v -e '^verso\.' -e '^$' |
      paste -sd' ' >"$dir/cmdline"
    tests/linux/mkinitramfs.sh "$cpio" <<LIST || return 1
dir dev 755
nod dev/console 600 c 5 1
dir proc 755
dir sys 755
file init 755 $LINUX_INIT_ELF
dir expect 755
file expect/marker 644 $dir/marker
file expect/cpus 644 $dir/cpus
file expect/cmdline 644 $dir/cmdline
file expect/modules 644 $dir/modules
file expect/disk.size 644 $dir/disk.size
file expect/disk.pci 644 $dir/disk.pci
file expect/disk.sha256 644 $dir/disk.sha256
file expect/disk.after.sha256 644 $dir/disk.after.sha256
file expect/write.offset 644 $dir/write.offset
file expect/write.bin 644 $dir/write.bin
dir modules 755
$module_lines
file expect/blob.sha256 644 $dir/blob.sha256
file expect/blob 644 $dir/blob
LIST
    size=$(printf '0x%08x' "$(stat -c %s "$cpio")")
    [ "$pass" = 1 ] || [ "${#size}" -eq "${#placeholder}" ] || return 1
  done
}

# Fills QEMU_CMD: the machine of qemu_cmd, the Debian Image as the payload, the initramfs at
# LINUX_INITRD_ADDR, the virtio-blk disk on bus 0 and QEMU's SMMU trace; -no-reboot so a kernel
# panic (panic=-1) ends QEMU instead of looping.
linux_qemu_cmd() {
  local slot=${LINUX_DISK_PCI##*:} event
  QEMU_CMD=(
    "$QEMU" -M virt,virtualization=on,gic-version=3,iommu=smmuv3 -cpu max -smp "$LINUX_CPUS" -m 1G
    -nographic -semihosting -nic none -no-reboot
    -kernel "$HYP_ELF"
    -device "loader,file=$LINUX_OUT/Image,addr=$PAYLOAD_ADDR,force-raw=on"
    -device "loader,file=$LINUX_OUT/initramfs.cpio,addr=$LINUX_INITRD_ADDR,force-raw=on"
    -drive "if=none,id=disk,file=$LINUX_DISK,format=raw"
    -device "virtio-blk-pci,drive=disk,bus=pcie.0,addr=$slot,disable-legacy=on,iommu_platform=on"
    -D "$LINUX_SMMU_TRACE"
  )
  for event in "${LINUX_SMMU_EVENTS[@]}"; do
    QEMU_CMD+=(-trace "enable=$event")
  done
  QEMU_CMD+=(-append "$HYP_ARGS $LINUX_BOOTARGS")
}

# linux_check NAME CONDITION-STATUS WHY: one PASS/FAIL line judged from the console log.
linux_check() {
  if [ "$2" -eq 0 ]; then
    say "PASS: $1"
    PASSED=$((PASSED + 1))
  else
    say "FAIL: $1 ($3)"
    FAILED=$((FAILED + 1))
  fi
}

# The suite: /init's checks (counted like any suite's), then what only the console shows.
run_linux_suite() {
  local rc=0
  linux_kernel || rc=$?
  if [ "$rc" -eq 2 ]; then
    # No network is not a failure of Verso, but it is not a pass either: nothing is counted.
    say "SKIP: linux_boots_unchanged_on_verso ($LINUX_UNAVAILABLE)"
    return 0
  elif [ "$rc" -ne 0 ]; then
    say "FAIL: suite linux (the Debian kernel: $LINUX_UNAVAILABLE)"
    FAILED=$((FAILED + 1))
    return 0
  fi
  say "== suite linux: kernel $(cat "$LINUX_OUT/Image.source")"
  if ! linux_initramfs ""; then
    say "FAIL: suite linux (building /init or the initramfs failed)"
    FAILED=$((FAILED + 1))
    return 0
  fi
  linux_qemu_cmd
  local log
  log=$(mktemp)
  run_qemu_suite linux "$LINUX_TIMEOUT" "$log"
  local status=0 secondaries
  grep -q "payload: arm64 Image at $PAYLOAD_ADDR" "$log" && grep -q "entering host at $PAYLOAD_ADDR" "$log" || status=1
  linux_check linux_console_shows_verso_entering_the_kernel "$status" \
    "no 'payload: arm64 Image' / 'entering host at $PAYLOAD_ADDR' line from Verso"
  secondaries=$(grep -cE '^\[verso cpu[0-9]+ INFO *\] cpu[0-9]+ \(mpidr [0-9a-fx]+\) up, entering host' "$log" || true)
  status=0
  [ "$secondaries" -eq $((LINUX_CPUS - 1)) ] || status=1
  linux_check linux_secondaries_enter_through_verso_psci_relay "$status" \
    "$secondaries of $((LINUX_CPUS - 1)) secondary CPUs passed through Verso's EL2 entry"
  status=0
  ! grep -qE 'VERSO PANIC|Kernel panic' "$log" || status=1
  linux_check linux_boot_has_no_verso_panic_and_no_kernel_panic "$status" \
    "$(grep -m1 -E 'VERSO PANIC|Kernel panic' "$log" || true)"
  status=0
  [ "$SUITE_RC" -eq 0 ] && grep -q 'reboot: Power down' "$log" || status=1
  linux_check linux_powers_off_through_psci_system_off "$status" \
    "QEMU exit status $SUITE_RC, 'reboot: Power down' $(grep -c 'reboot: Power down' "$log" || true) times"
  linux_dma_checks
  rm -f "$log"
}

# What only QEMU's side shows of the disk's DMA: its SMMU translated the disk's StreamID at stage 2
# (Verso's stage-2-only STE, walking the host's stage-2), never let it bypass, recorded no fault
# and raised no error; and the block /init wrote is in the image file, with nothing else changed.
linux_dma_checks() {
  local trace=$LINUX_SMMU_TRACE sid=$LINUX_DISK_SID status translated other bad
  local dir=$LINUX_OUT/initramfs.d
  # Only translations of RAM addresses count: the device's MSI writes (to the ITS doorbell,
  # 0x0809_0040) go through the SMMU even when its data DMA does not (virtio without
  # iommu_platform=on). QEMU maps each descriptor of a request (header, data, status) with its
  # own translation, and Verso's RAM blocks are 2 MiB (one translation may cover a whole buffer),
  # so the floor is 3 per request /init makes: two whole-disk reads in 64 KiB requests, one
  # 4 KiB write and its read-back.
  local requests=$((2 * LINUX_DISK_BYTES / 65536 + 2)) msi
  # (RAM starts at 0x4000_0000 on virt: an IOVA of 8 hex digits from 4, or of more digits.)
  translated=$(grep -cE "^smmuv3_translate_success .*sid=$sid iova=0x([4-9a-f][0-9a-f]{7}|[0-9a-f]{9,}) .*stage=2$" \
    "$trace" 2>/dev/null || true)
  translated=${translated:-0}
  msi=$(grep -cE "^smmuv3_translate_success .*sid=$sid iova=0x8090040 " "$trace" 2>/dev/null || true)
  other=$(grep -E "^smmuv3_translate_(success|bypass|disable) .*sid=$sid " "$trace" 2>/dev/null |
    grep -vcE 'stage=2$' || true)
  status=0
  [ "$translated" -ge $((3 * requests)) ] && [ "${other:-0}" -eq 0 ] || status=1
  linux_check linux_virtio_blk_dma_is_translated_by_the_smmu_at_stage_2 "$status" \
    "$trace: $translated stage-2 translations of RAM addresses for StreamID $sid (want >= $((3 * requests)): 3 per request of $requests), ${msi:-0} of the MSI doorbell, ${other:-0} bypassed or at another stage"
  bad=$(grep -E '^smmuv3_(record_event|translate_abort|write_gerror|cmdq_consume_error) ' "$trace" 2>/dev/null || true)
  status=0
  if [ ! -s "$trace" ]; then
    status=1
    bad="QEMU wrote no SMMU trace to $trace"
  elif [ -n "$bad" ]; then
    status=1
    bad="$(printf '%s\n' "$bad" | wc -l) fault/error lines in $trace, first: $(printf '%s\n' "$bad" | head -n1)"
  fi
  linux_check linux_smmu_records_no_dma_fault_and_no_error "$status" "$bad"
  status=0
  cmp -s -n 4096 -i "$LINUX_DISK_WRITE_OFFSET:0" "$LINUX_DISK" "$dir/write.bin" &&
    [ "$(sha256sum "$LINUX_DISK" | cut -d' ' -f1)" = "$(cat "$dir/disk.after.sha256")" ] || status=1
  linux_check linux_virtio_blk_write_reached_the_disk_image "$status" \
    "$LINUX_DISK at $LINUX_DISK_WRITE_OFFSET does not hold /init's block, or other bytes changed"
}

# `./qemu-run.sh linux [ARGS]`: the same boot in the foreground (Ctrl-a x leaves QEMU).
run_linux() {
  local rc=0
  linux_kernel || rc=$?
  [ "$rc" -eq 0 ] || die "no Debian kernel: $LINUX_UNAVAILABLE"
  say "== kernel: $(cat "$LINUX_OUT/Image.source")"
  linux_initramfs "$*" || die "building /init or the initramfs failed"
  linux_qemu_cmd
  say "== boot: $(shown_cmd)"
  "${QEMU_CMD[@]}"
}

# The hyp's refusals and fatal path, booted without a test kernel: each must end QEMU quickly with
# the documented status and message (docs/boot.md), never hang. One PASS/FAIL line per check.
fatal_check() { # fatal_check NAME EXPECTED_STATUS EXPECTED_ERE QEMU-ARGS...
  local name=$1 want=$2 text=$3 log status
  shift 3
  log=$OUT/fatal-$name.log
  set +e
  timeout 30 "$QEMU" -cpu max -m 1G -nographic -semihosting -nic none -kernel "$HYP_ELF" "$@" \
    >"$log" 2>&1
  status=$?
  set -e
  if [ "$status" -eq "$want" ] && grep -qE -- "$text" "$log"; then
    say "PASS: $name"
    PASSED=$((PASSED + 1))
  else
    say "FAIL: $name (exit $status, want $want and \"$text\"; see $log)"
    FAILED=$((FAILED + 1))
  fi
}

run_fatal_suite() {
  say "== suite fatal: the hyp's refusals end QEMU with a status and a reason"
  local virt=virt,virtualization=on,gic-version=3,iommu=smmuv3
  fatal_check hyp_refuses_to_run_below_el2 1 "not entered at EL2" \
    -M virt,gic-version=3 -append "verso.log=info"
  fatal_check hyp_without_payload_panics_with_its_reason 101 "VERSO PANIC: no arm64 Image" \
    -M "$virt" -append "verso.log=info"
  fatal_check hyp_refuses_a_payload_outside_ram 101 "VERSO PANIC: payload address 0x1000 is not in host RAM" \
    -M "$virt" -append "verso.log=info verso.payload=0x1000"
  fatal_check hyp_panic_names_esr_far_elr_and_cpu 101 \
    "esr_el2=0x[0-9a-f]+ far_el2=0x[0-9a-f]+ elr_el2=0x[0-9a-f]+ cpu=[0-9]+" \
    -M "$virt" -append "verso.log=info"
}

run_tests() {
  run_cargo_test
  local line name payload cpus args limit guest extra built=yes
  if ! build; then
    say "FAIL: build of the release images"
    FAILED=$((FAILED + 1))
    built=no
  fi
  for line in "${SUITES[@]}"; do
    read -r name payload cpus args limit guest extra <<<"$line"
    if [ "$built" = yes ]; then
      run_suite "$name" "$payload" "$cpus" "$args" "$limit" "$guest" "$extra"
    else
      say "FAIL: suite $name (not run: the build failed)"
      FAILED=$((FAILED + 1))
    fi
  done
  if [ "$built" = yes ]; then
    run_fatal_suite
    run_linux_suite
  else
    say "FAIL: suite linux (not run: the build failed)"
    FAILED=$((FAILED + 1))
  fi
  say "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# The benchmark: one CPU (so the instruction count is one CPU's), -icount shift=0 (the virtual
# counter advances 1 ns per instruction, deterministically), hyp logging off (its UART lines would
# be counted). The kernel prints a table and "CSV: " rows; the rows also go to BENCH_CSV.
run_bench() {
  qemu_cmd "$BENCH_PAYLOAD" 1 "bench" "$BENCH_GUEST"
  local i
  for i in "${!QEMU_CMD[@]}"; do
    case ${QEMU_CMD[$i]} in
      "$HYP_ARGS "*) QEMU_CMD[$i]="verso.log=off bench" ;;
    esac
  done
  QEMU_CMD+=(-icount shift=0)
  say "== bench: timeout 300 $(shown_cmd)"
  local log rc=0
  log=$(mktemp)
  timeout 300 "${QEMU_CMD[@]}" </dev/null >"$log" 2>&1 || rc=$?
  tr -d '\r' <"$log" >"$log.clean"
  grep -v '^CSV: ' "$log.clean" || true
  {
    printf 'operation,pages,instructions_per_op,instructions_per_page\n'
    sed -n 's/^CSV: //p' "$log.clean"
  } >"$BENCH_CSV"
  local rows
  rows=$(grep -c '^CSV: ' "$log.clean" || true)
  rm -f "$log" "$log.clean"
  [ "$rc" -eq 0 ] || die "bench failed: QEMU exited with status $rc"
  [ "$rows" -gt 0 ] || die "bench printed no rows"
  say "== bench: $rows rows written to $BENCH_CSV"
  run_bench_smmu_cost
}

# The SMMU's share (docs/smmu.md): the same benchmark with `verso.smmu=off` (translation off, no
# SMMU command ever issued), the guest conversion rows of both runs side by side, and the
# difference per call. Rows "<operation>_cpu_only" are appended to the CSV.
run_bench_smmu_cost() {
  qemu_cmd "$BENCH_PAYLOAD" 1 "bench" "$BENCH_GUEST"
  local i
  for i in "${!QEMU_CMD[@]}"; do
    case ${QEMU_CMD[$i]} in
      "$HYP_ARGS "*) QEMU_CMD[$i]="verso.log=off verso.smmu=off bench" ;;
    esac
  done
  QEMU_CMD+=(-icount shift=0)
  say "== bench (SMMU off): timeout 300 $(shown_cmd)"
  local log rc=0
  log=$(mktemp)
  timeout 300 "${QEMU_CMD[@]}" </dev/null >"$log" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || die "bench with verso.smmu=off failed: QEMU exited with status $rc"
  tr -d '\r' <"$log" | sed -n 's/^CSV: //p' | awk -F, -v OFS=, '{ $1 = $1 "_cpu_only"; print }' >>"$BENCH_CSV"
  rm -f "$log"
  say "== SMMU cost per call (instructions): with the SMMU kept in step vs CPU-only"
  awk -F, '
    NR == 1 { next }
    $1 ~ /^guest_mem_/ && $1 !~ /_cpu_only$/ { on[$1 "," $2] = $3; order[++n] = $1 "," $2 }
    $1 ~ /_cpu_only$/ { k = $1; sub(/_cpu_only$/, "", k); off[k "," $2] = $3 }
    END {
      printf "%-30s %6s %12s %12s %10s\n", "operation", "pages", "smmu", "cpu_only", "smmu_cost"
      for (i = 1; i <= n; i++) {
        split(order[i], f, ",")
        printf "%-30s %6s %12s %12s %10d\n", f[1], f[2], on[order[i]], off[order[i]], on[order[i]] - off[order[i]]
      }
    }' "$BENCH_CSV"
}

case "${1:-}" in
  "")
    setup
    build
    run_demo
    ;;
  test)
    setup
    run_tests
    ;;
  bench)
    setup
    build
    run_bench
    ;;
  linux)
    setup
    build
    shift
    run_linux "$@"
    ;;
  --gdb)
    setup
    build
    run_gdb "${2:-}"
    ;;
  -h | --help)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    die "unknown mode '$1' (try --help)"
    ;;
esac
