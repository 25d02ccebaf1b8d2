"""Settings shared by every environment (local, test, production).

Configuration comes from the environment (django-environ). With neither DATABASE_URL nor
CELERY_BROKER_URL set, Prefloop runs on its embedded default: a SQLite file and Celery's
filesystem transport under ``PREFLOOP_VAR`` (default ``./var``), so one command starts it.
"""

from pathlib import Path

import environ
from csp.constants import NONE, SELF

from training.formats import DEFAULT_MAX_TEXT_CHARS  # torch-free: the CLI readers use the same default

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env = environ.Env()

VAR_DIR = Path(env.str("PREFLOOP_VAR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "csp",
    "annotation",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Outside the NUL check, so its 400s carry the policy too.
    "annotation.middleware.PrefloopCSPMiddleware",
    # Before sessions, authentication and axes: a NUL reaches no database lookup (a 400 instead of a 500).
    "annotation.middleware.RejectNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: throttles repeated failed logins.
    "axes.middleware.AxesMiddleware",
]

# Content-Security-Policy (django-csp) on every response: scripts and styles only from our own
# static files (no inline script, no eval, no style="" attributes), images from here, data: URLs
# and the hosts an operator names (PREFLOOP_CSP_IMG_HOSTS, e.g. "https://img.example.org"): a
# markdown image in a prompt cannot phone home from an annotator's browser. DRF's browsable API
# pages alone also allow inline styles (annotation.middleware.PrefloopCSPMiddleware).
PREFLOOP_CSP_IMG_HOSTS = env.list("PREFLOOP_CSP_IMG_HOSTS", default=[])
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:", *PREFLOOP_CSP_IMG_HOSTS],
        "object-src": [NONE],
        "base-uri": [SELF],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    },
}

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    # Django's ModelBackend reading a user's permissions in one query, not two
    "annotation.access.ModelBackend",
]
# Repeated failed logins: after 5 failures for a username from one address, refuse for 15 min.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = 0.25  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

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


def database_from_url(url: str, *, pool_size: int = 0) -> dict:
    """A DATABASES entry for ``url``; SQLite gets the settings that make it safe under concurrency.

    SQLite has no SELECT ... FOR UPDATE: every transaction starts IMMEDIATE (takes the write
    lock at BEGIN) so hand-out and voting are serialised; WAL lets readers run beside a writer.

    PostgreSQL: ``pool_size`` > 0 gives each process psycopg's connection pool of at most that
    many connections (Django's ``OPTIONS["pool"]``; one is opened at start, more while requests
    need them, each checked before use), so a server holds at most processes x ``pool_size``
    connections whatever its threads: no worker model can exhaust PostgreSQL's
    ``max_connections``. A request takes a connection for its length and gives it back
    (``CONN_MAX_AGE`` 0, which the pool requires). 0: no pool, one persistent connection per
    thread (``CONN_MAX_AGE``, default 60 s).
    """
    db = env.db_url_config(url)
    if db["ENGINE"] == "django.db.backends.sqlite3":
        db.setdefault("OPTIONS", {}).update(
            {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            }
        )
    elif pool_size > 0:
        # timeout: how long a request waits for a free connection before it fails
        db.setdefault("OPTIONS", {})["pool"] = {"min_size": 1, "max_size": pool_size, "timeout": 10}
        db["CONN_MAX_AGE"] = 0
        db["CONN_HEALTH_CHECKS"] = True
    else:
        db["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
        db["CONN_HEALTH_CHECKS"] = True
    return db


EMBEDDED_DATABASE = not env.str("DATABASE_URL", default="")
DATABASES = {
    "default": database_from_url(
        env.str("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'prefloop.sqlite3'}")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# ---------------------------------------------------------------- REST API
REST_FRAMEWORK = {
    # Token first: a request without credentials answers 401 with WWW-Authenticate: Token (DRF
    # takes both from the first class); a browser's session still authenticates, CSRF-checked.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "annotation.authentication.TokenAuthentication",  # DRF's, its lookup compiled once
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "annotation.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "annotation.pagination.StrictLimitOffsetPagination",
    "PAGE_SIZE": 100,
    # Scoped rates (ScopedRateThrottle): each model request costs a worker seconds of compute.
    "DEFAULT_THROTTLE_RATES": {
        "chat": env.str("PREFLOOP_CHAT_RATE", default="60/min"),
        # next + vote + skip together, per user (annotation/throttles.py): a person does a few a minute
        "annotate": env.str("PREFLOOP_ANNOTATE_RATE", default="300/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Prefloop API",
    "DESCRIPTION": "Collect pairwise preferences, export them for training.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Every operation's error statuses (400/401/403/404/409/413/429) in the error shape.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "annotation.schema.error_responses"],
    # Two "kind" choice sets: every run kind a stored run may have, and the kinds that can be started.
    "ENUM_NAME_OVERRIDES": {
        "TrainingRunKindEnum": "annotation.models.TrainingRun.Kind",
        "DataScopeEnum": "annotation.models.TrainingRun.DataScope",
        "RecipeKindEnum": "annotation.api_runs.RECIPE_KINDS",
        # Runs and evaluations have the same statuses (one enum) and each its own triggers.
        "WorkStatusEnum": "annotation.models.TrainingRun.Status",
        "TrainingRunTriggerEnum": "annotation.models.TrainingRun.Trigger",
        "EvaluationTriggerEnum": "annotation.models.Evaluation.Trigger",
    },
}

# ---------------------------------------------------------------- Celery
# JSON only, explicit time limits, late acks so a crashed worker's task is redelivered.
_broker = env.str("CELERY_BROKER_URL", default="")
if _broker:
    CELERY_BROKER_URL = _broker
else:
    CELERY_BROKER_URL = "filesystem://"
    _celery_dir = VAR_DIR / "celery"
    for _sub in ("queue", "processed", "control"):
        (_celery_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_celery_dir / "queue"),
        "data_folder_out": str(_celery_dir / "queue"),
        "processed_folder": str(_celery_dir / "processed"),
        # kombu's exchange tables; its default is ./control under whatever the working directory is.
        "control_folder": str(_celery_dir / "control"),
        "store_processed": False,
    }


def result_backend_for(broker_url: str) -> str:
    """Where task results go (only ``chat_complete``'s are waited for: the web process relays a
    model worker's chat completion): the Redis broker's own database, or files beside the
    embedded default's queue. ``CELERY_RESULT_BACKEND`` overrides. Settings that change the
    broker URL call this again."""
    if env.str("CELERY_RESULT_BACKEND", default=""):
        return env.str("CELERY_RESULT_BACKEND")
    if broker_url.startswith(("redis://", "rediss://")):
        return broker_url
    results = VAR_DIR / "celery" / "results"
    results.mkdir(parents=True, exist_ok=True)
    return f"file://{results}"


CELERY_RESULT_BACKEND = result_backend_for(CELERY_BROKER_URL)
CELERY_RESULT_EXPIRES = 3600  # a result nobody fetched within an hour is dropped
CELERY_TASK_IGNORE_RESULT = True  # tasks whose result is read say ignore_result=False
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 60 * 60 * 6
CELERY_TASK_SOFT_TIME_LIMIT = 60 * 60 * 6 - 60


def redis_transport_options(broker_url: str, options: dict | None = None) -> dict | None:
    """Redis re-delivers an unacknowledged task after ``visibility_timeout`` (default 1 h); with
    late acks a training run (up to CELERY_TASK_TIME_LIMIT) would be handed to a second worker
    while the first still runs it. Longer than the longest task: only a dead worker's task
    comes back. Settings that change the broker URL call this again."""
    if broker_url.startswith(("redis://", "rediss://")):
        return {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 3600}
    return options


CELERY_BROKER_TRANSPORT_OPTIONS = redis_transport_options(CELERY_BROKER_URL, globals().get("CELERY_BROKER_TRANSPORT_OPTIONS"))


def caches_for(broker_url: str, prefix: str) -> dict:
    """The cache (rate-limit counts): the broker's Redis server when there is one, so a limit
    holds across web processes, in the next database index (``cache.clear()`` flushes a whole
    database: never the broker's queues); else this process's memory (the embedded default).
    ``prefix`` keeps two deployments (or test databases) sharing one Redis apart. Settings that
    change the broker URL call this again."""
    if broker_url.startswith(("redis://", "rediss://")):
        from urllib.parse import urlsplit, urlunsplit

        url = urlsplit(broker_url)
        db = int(url.path.strip("/") or 0)
        location = urlunsplit(url._replace(path=f"/{(db + 1) % 16}"))
        return {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": location,
                            "KEY_PREFIX": prefix, "OPTIONS": {"socket_timeout": 1, "socket_connect_timeout": 1}}}
    return {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


CACHES = caches_for(CELERY_BROKER_URL, str(DATABASES["default"]["NAME"]))
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_DEFAULT_QUEUE", default="default")
# GPU work (sampling, training) goes to the `gpu` queue, served with concurrency 1 per GPU.
CELERY_TASK_ROUTES = {
    "workers.tasks.sample_pairs": {"queue": "gpu"},
    "workers.tasks.gpu_*": {"queue": "gpu"},
    # /v1/chat/completions: served by a model worker consuming `serve` (with `gpu` on one GPU, or
    # its own worker for answers that never wait behind a training run).
    "workers.tasks.chat_complete": {"queue": "serve"},
}
CELERY_BEAT_SCHEDULE = {
    "expire-leases": {"task": "workers.tasks.expire_leases", "schedule": 60.0},
    # Keeps each active campaign's open comparisons at buffer_size, so annotators never wait.
    "refill-buffers": {"task": "workers.tasks.refill_buffers", "schedule": 30.0},
    # Starts a run for each campaign whose RetrainPolicy is due (once, even with two beats).
    "retrain-due": {"task": "workers.tasks.retrain_due", "schedule": 60.0},
    # Fails runs and evaluations left running by a lost worker (PREFLOOP["WORK_STALE_MINUTES"]).
    "sweep-stale": {"task": "workers.tasks.sweep_stale", "schedule": 300.0},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# ---------------------------------------------------------------- Prefloop
# A lease's length is each campaign's own (Campaign.lease_minutes); the limits of what annotators
# send (rationale, skip reason, seconds spent) size columns and live in annotation/limits.py.
PREFLOOP = {
    # Largest accepted upload / import line and text field, in characters.
    "MAX_IMPORT_LINE_CHARS": 1_000_000,
    "MAX_TEXT_CHARS": DEFAULT_MAX_TEXT_CHARS,
    # The policy a campaign without one samples from (registered as a ModelVersion on first use):
    # a Hugging Face id, a local directory, or the embedded SmolLM2-135M-Instruct.
    "DEFAULT_POLICY": env.str("PREFLOOP_DEFAULT_POLICY", default="smollm2-135m-instruct"),
    # A buffer refill not finished after this long (a worker died) no longer blocks the next one.
    "REFILL_STALE_MINUTES": env.int("PREFLOOP_REFILL_STALE_MINUTES", default=60),
    # A running training run or evaluation whose worker gave no sign of life for this long
    # (a run writes its progress every second or so) is failed by the beat task sweep_stale.
    "WORK_STALE_MINUTES": env.int("PREFLOOP_WORK_STALE_MINUTES", default=60),
    # Where training runs write checkpoints and final models (one run-<id> directory each).
    "ARTIFACTS_DIR": env.str("PREFLOOP_ARTIFACTS_DIR", default=str(VAR_DIR / "artifacts")),
    # /v1/chat/completions: how long the web waits for the model worker, and the longest prompt.
    # Below gunicorn's --timeout (120 s), so the client gets the 504 in the error shape.
    "CHAT_TIMEOUT_SECONDS": env.float("PREFLOOP_CHAT_TIMEOUT_SECONDS", default=60.0),
    "CHAT_MAX_PROMPT_TOKENS": env.int("PREFLOOP_CHAT_MAX_PROMPT_TOKENS", default=4096),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}
