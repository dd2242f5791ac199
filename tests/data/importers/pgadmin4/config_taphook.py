# pgAdmin 4 configuration for the taphook importer corpus, loaded through
# CONFIG_DISTRO_FILE_PATH (it replaces the wheel's own config_distro.py, whose
# two settings are repeated here).  Everything that changes per run lives in
# $PGADMIN_WORKDIR; the port comes from $PGADMIN_PORT.
import logging
import os

_work = os.environ["PGADMIN_WORKDIR"]

HELP_PATH = "../../docs/en_US/_build/html/"
MINIFY_HTML = False

SERVER_MODE = True                 # a login page, one session per user
DEFAULT_SERVER = "127.0.0.1"
DEFAULT_SERVER_PORT = int(os.environ.get("PGADMIN_PORT", "5050"))
DATA_DIR = os.path.join(_work, "pgadmin-data")  # sqlite, sessions, storage/
LOG_FILE = os.path.join(_work, "pgadmin4.log")
CONSOLE_LOG_LEVEL = logging.WARNING
FILE_LOG_LEVEL = logging.WARNING
MASTER_PASSWORD_REQUIRED = False
UPGRADE_CHECK_ENABLED = False      # no call to www.pgadmin.org
_bindir = os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin")
DEFAULT_BINARY_PATHS = {"pg": _bindir, "pg-15": _bindir, "pg-16": _bindir, "pg-17": _bindir}
