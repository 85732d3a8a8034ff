#!/usr/bin/env bash
# Build Verso and boot it on QEMU virt.
#
#   ./qemu-run.sh              build the release images and boot the demo host kernel under Verso
#   ./qemu-run.sh test         cargo test of the core, then every QEMU suite (table below); ends with
#                              one line "N passed, N failed" over everything; non-zero on any failure
#   ./qemu-run.sh bench        instruction counts (-icount shift=0) of hypercalls, vCPU round trips,
#                              in-place conversion vs a bounce-buffer copy; prints a table, writes CSV
#   ./qemu-run.sh --gdb [K]    boot payload K (default: demo) with QEMU halted, waiting for gdb on :1234
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
  "dma         dma-suite    2   suite=dma    120  guest-worker -device edu,dma_mask=0xffffffffffffffff -device pcie-root-port,id=rp1,bus=pcie.0,chassis=1 -device edu,bus=rp1,dma_mask=0xffffffffffffffff"
)
# Payloads built besides the suites'.
EXTRA_PAYLOADS=(demo vm-bench guest-worker)
# The benchmark: host payload, guest image, and where its CSV goes.
BENCH_PAYLOAD=vm-bench
BENCH_GUEST=guest-worker
BENCH_CSV=$OUT/bench.csv

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
  say "== suite $name: timeout $limit $(shown_cmd)"
  local log rc=0
  log=$(mktemp)
  timeout "$limit" "${QEMU_CMD[@]}" </dev/null >"$log" 2>&1 || rc=$?
  tr -d '\r' <"$log" >"$log.clean"
  # Every line, except that the suite's own summary is relabelled so the only bare
  # "N passed, N failed" line is the grand total at the end.
  sed -E "s/^([0-9]+ passed, [0-9]+ failed)\$/suite $name: \\1/" "$log.clean"
  local p f summary
  p=$(grep -c '^PASS: ' "$log.clean" || true)
  f=$(grep -c '^FAIL: ' "$log.clean" || true)
  summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log.clean" | tail -n1 || true)
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
  --gdb)
    setup
    build
    run_gdb "${2:-}"
    ;;
  -h | --help)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    die "unknown mode '$1' (try --help)"
    ;;
esac
