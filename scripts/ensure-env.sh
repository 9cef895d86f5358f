#!/usr/bin/env bash
# Sourced by scripts/sluice and scripts/test: make sure .venv is set up, and do nothing when it already is.
#
# "Set up" means scripts/setup.sh ran to the end with the pyproject.toml and setup.sh that are here now. A stamp in
# .venv records a hash of both; when it matches (and .venv/bin/python exists) this costs one sha256sum. When either
# file changes, setup.sh runs again (it is idempotent: pip only installs what is missing or changed).

sluice_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

sluice_setup_key() {
  cat "$sluice_root/pyproject.toml" "$sluice_root/scripts/setup.sh" | sha256sum | cut -d' ' -f1
}

sluice_env_current() {
  local stamp="$sluice_root/.venv/.sluice-setup-stamp"
  [ -x "$sluice_root/.venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(sluice_setup_key)" ]
}

sluice_ensure_env() {
  sluice_env_current && return 0
  mkdir -p "$sluice_root/.venv"
  # Two first calls at once (e.g. scripts/test in two terminals): one sets up, the other waits and then finds it done.
  exec {lock_fd}>"$sluice_root/.venv/.sluice-setup-lock"
  command -v flock >/dev/null && flock "$lock_fd"
  if ! sluice_env_current; then
    echo "sluice: setting up .venv (first use, or pyproject.toml/setup.sh changed) ..." >&2
    bash "$sluice_root/scripts/setup.sh" >&2
    sluice_setup_key >"$sluice_root/.venv/.sluice-setup-stamp"
  fi
  exec {lock_fd}>&-
}
