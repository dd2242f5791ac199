#!/usr/bin/env bash
# Install sqlite-web (Flask + peewee) at pinned versions into a venv.
# Idempotent: a second run with the same requirements.txt does nothing.
#   usage: setup.sh [VENV_DIR]     (default /tmp/importers/sqlite-web/venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/../venv.sh" sqlite-web "$here" "${1:-/tmp/importers/sqlite-web/venv}" sqlite_web
