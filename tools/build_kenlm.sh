#!/usr/bin/env bash
# Build KenLM's lmplz, build_binary and query from the kenlm source package (the PyPI sdist, whose
# wheel ships only the Python query module). Usage: bash tools/build_kenlm.sh [PREFIX]
# Binaries go to PREFIX/bin, by default $SEQKIT_CACHE_DIR/kenlm/bin (else ~/.cache/seqkit/kenlm/bin,
# honouring $XDG_CACHE_HOME), where seqkit.ngram.find_lmplz() looks. Safe to run again: skips the
# build when the binaries are there and run. Installs missing Debian build dependencies when root.
set -euo pipefail

KENLM_VERSION=0.3.0
KENLM_SHA256=c4628bb9fb63c8a6f9240035b8b037385cfc404cb72e933cf48878291edac1e8
APT_PACKAGES=(cmake g++ libboost-program-options-dev libboost-system-dev libboost-thread-dev
  libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev)
JOBS=${JOBS:-2}

REPO=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${1:-${SEQKIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/seqkit}/kenlm}
BIN=$PREFIX/bin
PROGRAMS=(lmplz build_binary query)

binaries_run() {
  local prog dir ok=0
  for prog in "${PROGRAMS[@]}"; do
    [ -x "$BIN/$prog" ] || return 1
  done
  # Estimate, binarise and query a tiny model: proves the shared boost libraries are present.
  dir=$(mktemp -d "${TMPDIR:-/tmp}/kenlm-check.XXXXXX")
  if printf 'a b c\na b\n' | "$BIN/lmplz" -o 2 --discount_fallback -S 1M --vocab_estimate 16 \
      -T "$dir/" --arpa "$dir/check.arpa" >/dev/null 2>&1 \
    && "$BIN/build_binary" "$dir/check.arpa" "$dir/check.bin" >/dev/null 2>&1 \
    && echo 'a b' | "$BIN/query" -v sentence "$dir/check.bin" >"$dir/query.out" 2>/dev/null \
    && grep -q '^Total: ' "$dir/query.out"; then
    ok=1
  fi
  rm -rf "$dir"
  [ "$ok" = 1 ]
}

if binaries_run; then
  echo "KenLM $KENLM_VERSION already built: $BIN/{lmplz,build_binary,query}"
  exit 0
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "Installing build dependencies: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "KenLM needs these Debian packages; run as root:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

PYTHON=python3
[ -x "$REPO/.venv/bin/python" ] && PYTHON=$REPO/.venv/bin/python
"$PYTHON" -m pip --version >/dev/null 2>&1 \
  || { echo "$PYTHON has no pip to fetch the kenlm source with: run bash install.sh first" >&2; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kenlm-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --no-binary only for kenlm: ":all:" would also build its build requirements (cmake) from source.
# --no-build-isolation: pip reads the sdist's metadata with the local setuptools instead of
# installing setuptools and a cmake wheel first; fall back to isolation where setuptools is absent.
download=("$PYTHON" -m pip download --quiet --no-deps --no-binary kenlm -d "$WORK"
  "kenlm==$KENLM_VERSION")
"${download[@]}" --no-build-isolation 2>/dev/null || "${download[@]}"
SDIST=$WORK/kenlm-$KENLM_VERSION.tar.gz
echo "$KENLM_SHA256  $SDIST" | sha256sum --check --quiet
tar -xzf "$SDIST" -C "$WORK"
SRC=$WORK/kenlm-$KENLM_VERSION
[ -f "$SRC/lm/builder/lmplz_main.cc" ] || { echo "kenlm sdist has no lm/builder/lmplz_main.cc" >&2; exit 1; }

echo "Building KenLM $KENLM_VERSION (${PROGRAMS[*]}) with $JOBS jobs..."
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=6 >"$WORK/cmake.log" 2>&1 \
  || { tail -n 20 "$WORK/cmake.log" >&2; exit 1; }
cmake --build "$WORK/build" --target "${PROGRAMS[@]}" -j "$JOBS" >"$WORK/build.log" 2>&1 \
  || { tail -n 20 "$WORK/build.log" >&2; exit 1; }

mkdir -p "$BIN"
for prog in "${PROGRAMS[@]}"; do
  install -m 755 "$WORK/build/bin/$prog" "$BIN/$prog"
done
binaries_run || { echo "KenLM built but $BIN/lmplz does not run" >&2; exit 1; }
echo "KenLM $KENLM_VERSION built: $BIN/{lmplz,build_binary,query}"
if [ $# -gt 0 ]; then
  echo "seqkit looks there when SEQKIT_KENLM_BIN=$BIN is set or $BIN is on PATH"
fi
