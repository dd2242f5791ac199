"""Minimal Django project around django-import-export's admin integration.

Everything that changes per run lives in $IMPORTER_WORKDIR (the sqlite
database and the uploaded files that wait for confirmation).
"""
import os
from pathlib import Path

WORKDIR = Path(os.environ.get("IMPORTER_WORKDIR", "/tmp/django-import-export-work"))
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "taphook-test-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "import_export",
    "people",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "importsite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": WORKDIR / "db.sqlite3"}
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"
MEDIA_ROOT = WORKDIR / "media"
FILE_UPLOAD_TEMP_DIR = None
# django-import-export keeps the uploaded file between the dry run and the
# confirmation in this folder (TempFolderStorage uses tempfile.gettempdir()).
os.makedirs(WORKDIR / "tmp", exist_ok=True)
import tempfile  # noqa: E402

tempfile.tempdir = str(WORKDIR / "tmp")
IMPORT_EXPORT_SKIP_ADMIN_LOG = False
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.server": {"handlers": ["console"], "level": "INFO"}},
}
