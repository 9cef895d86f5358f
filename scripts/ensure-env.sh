#!/usr/bin/env bash
# Sourced by scripts/sluice and scripts/test: make sure .venv is set up, and do nothing when it already is.
#
# "Set up" means scripts/setup.sh ran to the end with the pyproject.toml and setup.sh that are here now. A stamp in
# .venv records a hash of both; when it matches (and .venv/bin/python exists) this costs one sha256sum. When either
# file changes, setup.sh runs again (it is idempotent: pip only installs what is missing or changed).
# SLUICE_SETUP_SCRIPT overrides the setup script (tests use a stand-in; nobody else needs it).

sluice_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

sluice_setup_key() {
  cat "$sluice_root/pyproject.toml" "$sluice_root/scripts/setup.sh" | sha256sum | cut -d' ' -f1
}

sluice_ensure_env() {
  local stamp="$sluice_root/.venv/.sluice-setup-stamp" key
  key="$(sluice_setup_key)"
  if [ -x "$sluice_root/.venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
    return 0
  fi
  echo "sluice: setting up .venv (first use, or pyproject.toml/setup.sh changed) ..." >&2
  bash "${SLUICE_SETUP_SCRIPT:-$sluice_root/scripts/setup.sh}" >&2
  mkdir -p "$sluice_root/.venv"
  printf '%s\n' "$key" >"$stamp"
}
