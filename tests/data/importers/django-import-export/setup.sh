#!/usr/bin/env bash
# Install Django + django-import-export at pinned versions into a venv.
# Idempotent: a second run with the same requirements.txt does nothing.
#   usage: setup.sh [VENV_DIR]     (default /tmp/importers/django-import-export/venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/../venv.sh" django-import-export "$here" "${1:-/tmp/importers/django-import-export/venv}" django-admin
