#!/usr/bin/env bash
# Install datasette + datasette-upload-csvs (+ datasette-auth-passwords for the login form) at pinned versions into a venv.
# Idempotent: a second run with the same requirements.txt does nothing.
#   usage: setup.sh [VENV_DIR]     (default /tmp/importers/datasette-upload-csvs/venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/../venv.sh" datasette-upload-csvs "$here" "${1:-/tmp/importers/datasette-upload-csvs/venv}" datasette
