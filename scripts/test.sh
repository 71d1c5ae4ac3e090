#!/usr/bin/env bash
# Run unirl-stream's test suite (after `pip install -e '.[dev]'`, see README.md).
#
# Installs the Debian packages some tests need when they are missing (libibverbs1 for
# Mooncake's transfer engine, tesseract-ocr + English data for the OCR reward, tmux for the
# live-monitor test, chromium + a font for the report's headless-browser test): directly as
# root, through sudo otherwise. UNIRL_SKIP_APT=1 skips that.
# Extra arguments go to pytest. pytest's "no tests collected" (exit 5) counts as a failure.
set -euo pipefail
# Paths given relative to the caller's folder keep working after the cd to the repo root.
args=()
for a in "$@"; do
  if [[ "$a" != -* && -e "$a" ]]; then args+=("$(realpath "$a")"); else args+=("$a"); fi
done
cd "$(dirname "$0")/.."

packages=(libibverbs1 tesseract-ocr tesseract-ocr-eng tmux chromium fonts-dejavu-core)
missing=()
if [[ "${UNIRL_SKIP_APT:-0}" != "1" ]] && command -v dpkg-query >/dev/null; then
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if ((${#missing[@]})); then
  echo "installing system packages: ${missing[*]}" >&2
  sudo=""
  [[ "$(id -u)" != "0" ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Two phases (tests/conftest.py marks the second): the in-process tests on two pytest-xdist
# workers, then the tests that start Ray, servers or CLI runs, alone and one at a time.
set +e
python -m pytest -q -n 2 -m "not serial" "${args[@]}"
rc1=$?
python -m pytest -q -m serial "${args[@]}"
rc2=$?
set -e
if [[ $rc1 -eq 5 && $rc2 -eq 5 ]]; then
  echo "scripts/test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
# "no tests collected" in one phase is fine when the other ran some (a file of one kind)
for rc in $rc1 $rc2; do
  if [[ $rc -ne 0 && $rc -ne 5 ]]; then exit $rc; fi
done
exit 0
