#!/usr/bin/env bash
# Start the small Django project in project/ (one model, Person, whose admin has
# django-import-export's Import button) on 127.0.0.1:PORT in the foreground,
# with a fresh sqlite database and superuser in WORKDIR (default: a new temp dir).
#   usage: serve.sh PORT [WORKDIR]
#   env:   VENV (default /tmp/importers/django-import-export/venv)
# Login: username "admin", password "import-me".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${1:?usage: serve.sh PORT [WORKDIR]}"
workdir="${2:-$(mktemp -d /tmp/django-import-export.XXXXXX)}"
venv="${VENV:-/tmp/importers/django-import-export/venv}"
mkdir -p "$workdir"
rm -rf "$workdir/db.sqlite3" "$workdir/tmp" "$workdir/media"
export IMPORTER_WORKDIR="$workdir"
export DJANGO_SETTINGS_MODULE=importsite.settings
export PYTHONPATH="$here/project"
export PYTHONDONTWRITEBYTECODE=1
export PYTHONUNBUFFERED=1
py="$venv/bin/python"
"$py" "$here/project/manage.py" migrate --noinput -v 0
DJANGO_SUPERUSER_PASSWORD=import-me "$py" "$here/project/manage.py" \
    createsuperuser --noinput --username admin --email admin@example.org >/dev/null
# --insecure: serve the admin's static files with DEBUG off, as runserver can
exec "$py" "$here/project/manage.py" runserver "127.0.0.1:$port" --noreload --insecure
