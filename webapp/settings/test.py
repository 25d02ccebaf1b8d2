"""Tests: PostgreSQL and Redis, as in production (DATABASE_URL / CELERY_BROKER_URL override)."""

from .base import *  # noqa: F401,F403
from .base import caches_for, database_from_url, env, redis_transport_options, result_backend_for

SECRET_KEY = "test-only-key"
DEBUG = False
DATABASES = {
    "default": database_from_url(
        env.str("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/prefloop")
    )
}
DATABASES["default"]["CONN_MAX_AGE"] = 0
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/15")
CELERY_BROKER_TRANSPORT_OPTIONS = redis_transport_options(CELERY_BROKER_URL)
CELERY_RESULT_BACKEND = result_backend_for(CELERY_BROKER_URL)
CACHES = caches_for(CELERY_BROKER_URL, str(DATABASES["default"]["NAME"]))
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
AXES_ENABLED = env.bool("AXES_ENABLED", default=True)
