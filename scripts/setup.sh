#!/usr/bin/env bash
# Installs everything Sluice's tests and `sluice run` need on a fresh Debian machine: Debian packages
# (Prometheus for the analysis integration tests), a virtualenv in .venv, and Sluice with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

debs=(prometheus)
missing=()
for d in "${debs[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if [ ${#missing[@]} -gt 0 ]; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # --no-install-recommends: only the binaries; no service is started.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup done: $(.venv/bin/python --version), sluice $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("sluice"))')"
