"""Production: every secret from the environment, no defaults; passes `manage.py check --deploy`."""

from .base import *  # noqa: F401,F403
from .base import caches_for, database_from_url, env, redis_transport_options, result_backend_for

DEBUG = False
# No default: refuse to start without a real secret key.
SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
# No embedded fallback in production: PostgreSQL and the broker must be named. Each process
# (gunicorn worker, Celery worker) pools at most PREFLOOP_DB_POOL_SIZE connections (0: no pool).
DB_POOL_SIZE = env.int("PREFLOOP_DB_POOL_SIZE", default=4)
DATABASES = {"default": database_from_url(env.str("DATABASE_URL"), pool_size=DB_POOL_SIZE)}
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL")
CELERY_BROKER_TRANSPORT_OPTIONS = redis_transport_options(CELERY_BROKER_URL)
CELERY_RESULT_BACKEND = result_backend_for(CELERY_BROKER_URL)
CACHES = caches_for(CELERY_BROKER_URL, str(DATABASES["default"]["NAME"]))
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
