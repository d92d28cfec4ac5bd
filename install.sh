#!/usr/bin/env bash
# Set up pi-guard in ./.venv: Debian packages it needs, a virtualenv, pinned
# Python dependencies, and a check of the bundled wake-word models.
# Safe to run again: when nothing changed it says so and touches nothing.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
    cat <<'USAGE'
usage: ./install.sh [--dev]
       sudo ./install.sh --system [--with-broker] [--dry-run]
       sudo ./install.sh --uninstall [--purge] [--dry-run]

  (no option)  install guard into ./.venv (needs portaudio19-dev, espeak-ng, gcc, python3-dev, and swig on a 64-bit
               Pi with Python 3.13: installed via apt when root or sudo)
  --dev        also install the test tools: mosquitto, sox, alsa-utils, openssl, bubblewrap, systemd, g++ (apt) and pytest,
               ruff, hypothesis, openwakeword (the reference the wake scores are tested against)
  --system     install the hardened systemd service into /opt/guard (see script/install-system --help)

Then: .venv/bin/guard --help
USAGE
}

case "${1:-}" in
    --system|--uninstall) exec script/install-system "$@" ;;
esac

dev=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$arg'; see ./install.sh --help" >&2; exit 2 ;;
    esac
done

say() { echo "install.sh: $*"; }
fail() { echo "install.sh: error: $*" >&2; exit 1; }

machine=$(uname -m)
case "$machine" in
    armv6l|armv7l) fail "32-bit ARM ($machine): onnxruntime has no build for it, so guard cannot run here; \
install the 64-bit Raspberry Pi OS (Bookworm arm64) and run ./install.sh again" ;;
esac

python=${PYTHON:-python3}
command -v "$python" >/dev/null || fail "no $python; install Python 3.11 (sudo apt-get install python3 python3-venv)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "$("$python" -V 2>&1) is too old; guard needs Python 3.11 or newer (Raspberry Pi OS Bookworm has it)"
packages=(portaudio19-dev espeak-ng)  # espeak-ng: guard enroll synthesizes confusables
"$python" -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
packages+=(gcc python3-dev)  # PyAudio has no Linux wheel at all: it is built here, against portaudio19-dev
build_env=()
if [ "$machine" = aarch64 ] && "$python" -c 'import sys; sys.exit(sys.version_info < (3, 13))'; then
    # lgpio (gpiozero's pins on a 64-bit Pi) has wheels up to Python 3.12; on 3.13 (Trixie) pip builds it with
    # SWIG, and PYPI=1 (its setup.py's own switch) links in the C library its source carries
    packages+=(swig)
    build_env=(PYPI=1)
fi
[ "$dev" = 1 ] && packages+=(mosquitto sox alsa-utils openssl bubblewrap systemd g++)  # bubblewrap: the unit emulation;
# systemd: systemd-analyze; g++: Home Assistant 2025 (the tests' client on Python 3.13) builds pymicro-vad, pyspeex-noise

missing=()
if command -v dpkg-query >/dev/null; then
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
else
    say "no dpkg here; make sure these are installed yourself: ${packages[*]}"
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo); else
        fail "missing Debian packages: ${missing[*]}; run as root: apt-get install ${missing[*]}"
    fi
    say "installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq || fail "apt-get update failed; check the network and /etc/apt/sources.list"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null \
        || fail "apt-get install ${missing[*]} failed"
fi

wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) dev=$dev"
stamp=.venv/.guard-install-stamp
have=$(cat "$stamp" 2>/dev/null || true)
if [ -x .venv/bin/guard ] && { [ "$have" = "$wanted" ] || [ "$have" = "${wanted% dev=0} dev=1" ]; }; then
    say "Python environment already up to date; nothing changed there"
    exit 0
fi

[ -x .venv/bin/python ] || { say "creating .venv"; "$python" -m venv .venv; }
extras=""; [ "$dev" = 1 ] && extras="[dev]"
say "installing pinned Python packages into .venv${extras:+ (with test tools)}"
env "${build_env[@]}" .venv/bin/python -m pip install --disable-pip-version-check -q -e ".$extras" \
    || fail "pip install failed; see the messages above"
.venv/bin/python -c 'from guard import models
for name in models.wake_model_names() + list(models.FEATURE_MODELS):
    models.open_session(models.resolve(name))' || fail "the bundled models did not verify"
if [ "$machine" = aarch64 ]; then  # a Pi: gpiozero drives its pins through lgpio
    .venv/bin/python -c 'import lgpio' || fail "lgpio (gpiozero's pins on a Pi) does not load; see the messages above"
fi
echo "$wanted" > "$stamp"
say "ready: .venv/bin/guard --help"
