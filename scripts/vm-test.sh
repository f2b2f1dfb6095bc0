#!/usr/bin/env bash
# The VM test: boot a real QEMU guest (software emulation, TCG: CI machines have no usable KVM)
# with QEMU's stock ivshmem-doorbell device served by `vgpu serve --ivshmem`, and run inside it
# the transport's ivshmem self-test and the C conformance programs on our libcudart over VFIO.
#
#   bash scripts/vm-test.sh            (scripts/test.sh runs it; VGPU_SKIP_VM=1 skips it there)
#
# It installs what it needs (qemu-system-x86 busybox-static cpio kmod, with apt-get) and a Debian
# cloud kernel (apt-get download + dpkg -x, no root needed for that part), caching downloads and
# builds under target/vm/ so reruns are fast. The guest's own marker line decides the result:
# QEMU's exit status only says that the guest powered off (docs/deploy-vm.md, notes on pitfalls).
#
# Environment: VGPU_VM_TIMEOUT (whole boot, seconds, default 420), VGPU_VM_KEEP=1 (keep the
# work folder), VGPU_CUDA_HEADERS (as scripts/test.sh sets it; else setup-cuda-headers.sh runs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VM=$ROOT/target/vm
START=$(date +%s)
mkdir -p "$VM/dl"

say() { printf '[vm-test %3ss] %s\n' "$(($(date +%s) - START))" "$*"; }
die() { say "FAIL: $*"; exit 1; }

# Static binaries only in the guest's /bin (it has no C library of its own outside /vgpu's).
is_static() {
  local out
  out=$(LC_ALL=C ldd "$1" 2>&1 || true)
  grep -q 'statically linked\|not a dynamic executable' <<<"$out"
}

# --- tools -----------------------------------------------------------------------------------
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
{ [[ -x /bin/busybox ]] && is_static /bin/busybox; } || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
command -v depmod >/dev/null || [[ -x /sbin/depmod ]] || missing+=(kmod)
# Exit status 77: this machine cannot run the VM test (no apt, no root); scripts/test.sh
# treats it as a skip outside CI.
cannot() { say "cannot run the VM test here: $*"; exit 77; }
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  SUDO=()
  [[ $(id -u) == 0 ]] || SUDO=(sudo -n)
  command -v apt-get >/dev/null || cannot "no apt-get to install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq || cannot "apt-get update failed"
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends qemu-system-x86 busybox-static cpio kmod >/dev/null ||
    cannot "apt-get install ${missing[*]} failed"
fi
DEPMOD=$(command -v depmod || echo /sbin/depmod)
is_static /bin/busybox || die "/bin/busybox is dynamically linked; install busybox-static"

# --- kernel (Debian's cloud flavour boots in ~2 s under TCG) -----------------------------------
deb=$(ls "$VM"/dl/linux-image-*-cloud-amd64_*.deb 2>/dev/null | head -n 1 || true)
if [[ -z $deb ]]; then
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
  if [[ -z $pkg ]]; then
    if [[ $(id -u) == 0 ]]; then apt-get update -qq; else sudo -n apt-get update -qq; fi || cannot "apt-get update failed"
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
  fi
  [[ -n $pkg ]] || cannot "no linux-image-*-cloud-amd64 package known to apt"
  say "downloading $pkg"
  (cd "$VM/dl" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  deb=$(ls "$VM"/dl/linux-image-*-cloud-amd64_*.deb 2>/dev/null | head -n 1 || true)
  [[ -n $deb ]] || cannot "apt-get download $pkg failed"
fi
KDIR=$VM/kernel
if [[ ! -f $KDIR/.from || $(cat "$KDIR/.from") != "$deb" ]]; then
  rm -rf "$KDIR" && mkdir -p "$KDIR"
  dpkg -x "$deb" "$KDIR"
  echo "$deb" >"$KDIR/.from"
fi
KVER=$(ls "$KDIR/lib/modules" | head -n 1)
VMLINUZ=$KDIR/boot/vmlinuz-$KVER
[[ -f $VMLINUZ ]] || die "no kernel image in $deb"

# --- builds ----------------------------------------------------------------------------------
say "building the mediator and libcudart (debug, shared with cargo test)"
# Two invocations: `--bin` would filter the cdylib packages' targets away.
cargo build --quiet -p vgpu-cli --bin vgpu
cargo build --quiet -p vgpu-cudart12 -p vgpu-cudart13 -p vgpu-runtime
VGPU=$ROOT/target/debug/vgpu
say "building the static guest test binary (target/vm/cargo)"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release --target x86_64-unknown-linux-gnu \
  -p vgpu-tests --bin vgpu-test-guest --target-dir "$VM/cargo"
# `vgpu doctor` in the guest, from the same static build (it shares every dependency).
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release --target x86_64-unknown-linux-gnu \
  -p vgpu-cli --bin vgpu --target-dir "$VM/cargo"
GUEST_BIN=$VM/cargo/x86_64-unknown-linux-gnu/release/vgpu-test-guest
GUEST_VGPU=$VM/cargo/x86_64-unknown-linux-gnu/release/vgpu
is_static "$GUEST_BIN" || die "$GUEST_BIN is not statically linked"
is_static "$GUEST_VGPU" || die "$GUEST_VGPU is not statically linked"

# The C conformance programs (tests/cudart.rs runs the same ones on the host). Left out: the
# ones that need a mediator they can kill (sticky) or none at all (no_mediator).
C_PROGRAMS=(invalid_args default_stream event_order async_d2h host_func pinned meminfo stream_props threads device_mgmt)
C_SKIPPED=(sticky no_mediator)
HEADERS=${VGPU_CUDA_HEADERS:-}
if [[ -z $HEADERS ]]; then
  HEADERS=$(bash scripts/setup-cuda-headers.sh 2>/dev/null) || HEADERS=""
fi
if [[ -z $HEADERS || ! -d $HEADERS/12/include ]]; then
  [[ -z ${CI:-} ]] || die "no CUDA headers (scripts/setup-cuda-headers.sh): CI must run the C programs in the VM"
  say "warning: no CUDA headers; the VM runs the self-test only"
  C_PROGRAMS=()
fi

# --- initramfs -------------------------------------------------------------------------------
STAGE=$VM/initramfs
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,sbin,dev,proc,sys,tmp,vgpu/c,vgpu/lib,lib/modules/"$KVER"}
cp /bin/busybox "$STAGE/bin/busybox"
ln -s busybox "$STAGE/bin/sh"
install -m 755 scripts/vm-guest-init "$STAGE/init"
for m in vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci irqbypass; do
  ko=$(find "$KDIR/lib/modules/$KVER" -name "$m.ko*" | head -n 1)
  [[ -n $ko ]] || die "module $m not in $deb"
  rel=${ko#"$KDIR/lib/modules/$KVER/"}
  mkdir -p "$STAGE/lib/modules/$KVER/$(dirname "$rel")"
  cp "$ko" "$STAGE/lib/modules/$KVER/$rel"
done
cp "$KDIR/lib/modules/$KVER"/modules.{order,builtin} "$STAGE/lib/modules/$KVER/" 2>/dev/null || true
"$DEPMOD" -b "$STAGE" "$KVER"
install -m 755 "$GUEST_BIN" "$STAGE/vgpu/vgpu-test-guest"
install -m 755 "$GUEST_VGPU" "$STAGE/vgpu/vgpu"
strip "$STAGE/vgpu/vgpu-test-guest" "$STAGE/vgpu/vgpu" 2>/dev/null || true

if ((${#C_PROGRAMS[@]})); then
  CBUILD=$VM/c
  rm -rf "$CBUILD" && mkdir -p "$CBUILD/lib"
  # The runtime both libraries load (one per process), beside them on LD_LIBRARY_PATH.
  strip --strip-debug -o "$STAGE/vgpu/lib/libvgpu.so" "$ROOT/target/debug/libvgpu.so"
  for v in 12 13; do
    [[ -d $HEADERS/$v/include ]] || continue
    # Our library under its SONAME: link-time name here, run-time name in the guest.
    strip --strip-debug -o "$STAGE/vgpu/lib/libcudart.so.$v" "$ROOT/target/debug/libvgpu_cudart$v.so"
    ln -sf "$ROOT/target/debug/libvgpu_cudart$v.so" "$CBUILD/lib/libcudart.so.$v"
    for p in "${C_PROGRAMS[@]}"; do
      gcc -O1 -Wall -Werror -std=gnu11 -o "$STAGE/vgpu/c/$p.$v" -I "$HEADERS/$v/include" "tests/c/$p.c" \
        "$CBUILD/lib/libcudart.so.$v" -lpthread
    done
  done
  # The C library and loader the programs and our libraries need, at their own paths.
  for f in "$STAGE"/vgpu/c/* "$STAGE"/vgpu/lib/*; do
    ldd "$f" | grep -o '/[^ ]*' | grep -v '/vgpu/\|target/' || true
  done | sort -u | while read -r lib; do
    [[ -e $lib ]] || continue
    mkdir -p "$STAGE$(dirname "$lib")"
    cp -L "$lib" "$STAGE$lib"
  done
  [[ -e $STAGE/lib64 ]] || ln -s lib "$STAGE/lib64" 2>/dev/null || true
fi
INITRD=$VM/initramfs.cpio.gz
(cd "$STAGE" && find . | cpio -o -H newc --quiet | gzip -1) >"$INITRD"
say "initramfs $(du -h "$INITRD" | cut -f1) (kernel $KVER; C programs: $(find "$STAGE/vgpu/c" -type f | wc -l) = ${#C_PROGRAMS[@]} × CUDA 12/13; left out: ${C_SKIPPED[*]}, which need a mediator they can kill or none at all)"

# --- run -------------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/vgpu-vm.XXXXXX)
MEDIATOR_PID=""
cleanup() {
  [[ -z $MEDIATOR_PID ]] || kill "$MEDIATOR_PID" 2>/dev/null || true
  [[ -n ${VGPU_VM_KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
SOCK=$WORK/ivshmem.sock
CTRL=$WORK/vgpu.sock
# The ivshmem server must listen before QEMU starts (QEMU connects when it creates the device).
VGPU_LOG=${VGPU_LOG:-info} "$VGPU" serve --executor emu --socket "$CTRL" --ivshmem "$SOCK" --size 64M \
  >"$WORK/mediator.log" 2>&1 &
MEDIATOR_PID=$!
for _ in $(seq 100); do
  "$VGPU" stat --socket "$CTRL" >/dev/null 2>&1 && break
  kill -0 "$MEDIATOR_PID" 2>/dev/null || { cat "$WORK/mediator.log"; die "the mediator exited"; }
  sleep 0.1
done
[[ -S $SOCK ]] || { cat "$WORK/mediator.log"; die "the mediator does not listen on $SOCK"; }

say "booting the guest (TCG)"
BOOT=$(date +%s)
set +e
timeout --kill-after=10 "${VGPU_VM_TIMEOUT:-420}" qemu-system-x86_64 \
  -accel tcg -machine q35 -device intel-iommu -cpu max -m 512M -nographic -no-reboot \
  -kernel "$VMLINUZ" -initrd "$INITRD" \
  -append "console=ttyS0 intel_iommu=on panic=-1 quiet vgpu.timeout=150" \
  -chardev socket,path="$SOCK",id=ivs -device ivshmem-doorbell,chardev=ivs,vectors=2 \
  </dev/null >"$WORK/serial.log" 2>&1
qemu_rc=$?
set -e
tr -d '\r' <"$WORK/serial.log" >"$WORK/guest.log"
say "guest ran $(($(date +%s) - BOOT)) s (qemu exit $qemu_rc)"

verdict=$(grep -a '^VGPU-VM-RESULT:' "$WORK/guest.log" | tail -n 1 || true)
grep -a '^VGPU-VM-TEST:' "$WORK/guest.log" || true
# The self-test's figures (round trips through MSI-X and the BAR0 doorbell, under TCG).
sed -n '/^link: /,/^VGPU-GUEST-RESULT/p' "$WORK/guest.log" | sed 's/^/  guest: /' || true

# The VM is gone: the mediator must have reclaimed its session.
stat_ok=1
for _ in $(seq 50); do
  st=$("$VGPU" stat --socket "$CTRL" --json 2>/dev/null || true)
  if grep -q '"live_sessions": 0' <<<"$st"; then stat_ok=0; break; fi
  sleep 0.1
done
if [[ $stat_ok != 0 ]]; then
  say "the mediator still shows a live session after the VM left:"
  echo "$st"
fi
# Every guest process (the self-test, each C program) was its own session (epoch) on the one VM.
sessions=$(grep -o '"guest_sessions": [0-9]*' <<<"$st" | grep -o '[0-9]*$' | head -n 1 || true)
protocol_errors=$(grep -o '"protocol_errors": [0-9]*' <<<"$st" | grep -o '[0-9]*$' | head -n 1 || true)
say "mediator: ${sessions:-?} guest sessions served on the VM, ${protocol_errors:-?} protocol errors, live sessions after the VM left: $([[ $stat_ok == 0 ]] && echo 0 || echo '>0')"
want_sessions=$((1 + $(find "$STAGE/vgpu/c" -type f | wc -l)))
if [[ -n $sessions && $sessions -lt $want_sessions && $verdict == "VGPU-VM-RESULT: PASS"* ]]; then
  say "expected at least $want_sessions guest sessions (one per guest process)"
  stat_ok=1
fi
if [[ $protocol_errors != 0 ]]; then
  say "the mediator counted protocol errors"
  stat_ok=1
fi
grep -a 'WARN\|ERROR' "$WORK/mediator.log" | sed 's/^/  mediator: /' || true

if [[ $verdict == "VGPU-VM-RESULT: PASS"* && $stat_ok == 0 ]]; then
  say "$verdict (wall time $(($(date +%s) - START)) s)"
  exit 0
fi
echo "---- guest serial output ----"
cat "$WORK/guest.log"
echo "---- mediator log ----"
cat "$WORK/mediator.log"
die "${verdict:-no VGPU-VM-RESULT line from the guest (qemu exit $qemu_rc)}"
