"""Django settings. Everything comes from the environment through django-environ
(`NAME_FILE` may point at a file holding the value: Docker/Kubernetes secrets, so secrets
never live in the repo); the defaults make `make run` work with nothing set: SQLite in
the data directory, Redis on localhost.

Importing this module has no side effects: it creates no folder and writes no secret.
`manage.py serve` (what `make run` starts) prepares the data directory and the secret key
on first start (workers/setup.py)."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import dj_database_url
import environ

env = environ.FileAwareEnv()


def env_paths(name: str, default: str) -> list[Path]:
    """A PATH-like list (entries separated by os.pathsep), resolved to absolute paths."""
    return [Path(item).expanduser().resolve() for item in env.str(name, default=default).split(os.pathsep) if item]


def read_secret(path: Path) -> str:
    """The secret key kept in the data directory by the setup step, if it is there yet."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""

BASE_DIR = Path(__file__).resolve().parent.parent

# Where datasets, job folders, the SQLite database and generated secrets live.
DATA_DIR = Path(env.str("DIGITS_DATA_DIR", default=str(BASE_DIR / "data"))).expanduser().resolve()
# Job folders (datasets' LMDB databases, snapshots, logs, exports): on several hosts, one
# shared file system mounted at the same path everywhere; the rest of DATA_DIR is per host.
JOBS_DIR = Path(env.str("DIGITS_JOBS_DIR", default=str(DATA_DIR / "jobs"))).expanduser().resolve()
# Server folders that datasets may be read from; nothing outside them is ever opened.
DATA_ROOTS: list[Path] = env_paths("DIGITS_DATA_ROOTS", str(DATA_DIR / "images"))

SECRET_KEY_FILE = DATA_DIR / "secret_key"
# No key set and none written yet (a command run before the first `make run`): a key for
# this process only. Sessions need the persistent one, which serve writes before the web starts.
SECRET_KEY = env.str("SECRET_KEY", default="") or read_secret(SECRET_KEY_FILE) or "unset-" + os.urandom(24).hex()
# Job artifacts in an S3-compatible store (workers/storage.py); off when empty.
ARTIFACTS_S3 = env.str("DIGITS_ARTIFACTS_S3", default="")
ARTIFACTS_S3_ENDPOINT = env.str("DIGITS_ARTIFACTS_S3_ENDPOINT", default="")
ARTIFACTS_S3_REGION = env.str("DIGITS_ARTIFACTS_S3_REGION", default="")
ARTIFACTS_S3_ACCESS_KEY_ID = env.str("DIGITS_ARTIFACTS_S3_ACCESS_KEY_ID", default="")
ARTIFACTS_S3_SECRET_ACCESS_KEY = env.str("DIGITS_ARTIFACTS_S3_SECRET_ACCESS_KEY", default="")
ARTIFACTS_CACHE_BYTES = env.int("DIGITS_ARTIFACTS_CACHE_BYTES", default=50 << 30)
# Encrypts stored S3 secrets (datasets/credentials.py); SECRET_KEY's digest when not set.
CREDENTIALS_KEY = env.str("DIGITS_CREDENTIALS_KEY", default="")
# S3 sources: how long to wait for an endpoint, and how many objects are fetched at once.
S3_CONNECT_TIMEOUT = env.float("DIGITS_S3_CONNECT_TIMEOUT", default=5.0)
S3_READ_TIMEOUT = env.float("DIGITS_S3_READ_TIMEOUT", default=30.0)
# S3 endpoints on private, loopback or link-local addresses (a MinIO inside the network) are
# refused unless they start with one of these comma-separated URL prefixes: a person's
# endpoint must not make the server probe the machines around it.
S3_ALLOWED_ENDPOINTS = [e.strip() for e in env.str("DIGITS_S3_ALLOWED_ENDPOINTS", default="").split(",") if e.strip()]
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = [h for h in env.str("ALLOWED_HOSTS", default="*").split(",") if h]
CSRF_FAILURE_VIEW = "frontend.views.csrf_failure"  # back to the form, not Django's bare 403
CSRF_TRUSTED_ORIGINS = [o for o in env.str("CSRF_TRUSTED_ORIGINS", default="").split(",") if o]

# Production behind HTTPS (README "Deploying"): `manage.py check --deploy` is clean with
# DIGITS_HTTPS=1. Behind a proxy that terminates TLS, DIGITS_PROXY_SSL_HEADER=1 trusts its
# X-Forwarded-Proto (only when the proxy sets it: otherwise clients could forge it).
HTTPS = env.bool("DIGITS_HTTPS", default=False)
if HTTPS:
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("DIGITS_HSTS_SECONDS", default=31536000)
    # Both on by default (what the deploy check asks); a site whose subdomains are not all
    # on HTTPS, or that does not want the browsers' preload list, turns them off, and the
    # check's warning with it (a choice made, not an oversight).
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DIGITS_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("DIGITS_HSTS_PRELOAD", default=True)
    SILENCED_SYSTEM_CHECKS = [
        *([] if SECURE_HSTS_INCLUDE_SUBDOMAINS else ["security.W005"]),
        *([] if SECURE_HSTS_PRELOAD else ["security.W021"]),
    ]
    if env.bool("DIGITS_PROXY_SSL_HEADER", default=False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

# Login rate limiting (django-axes): after AXES_FAILURE_LIMIT failed logins for one
# username from one address, that pair is locked out for AXES_COOLOFF_TIME hours (admins
# unlock in the admin: Axes → Access attempts). API tokens are not affected.
AXES_FAILURE_LIMIT = env.int("DIGITS_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("DIGITS_LOGIN_COOLOFF_HOURS", default=0.25)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
if env.bool("DIGITS_PROXY_SSL_HEADER", default=False):
    AXES_IPWARE_PROXY_COUNT = 1  # the client's address is the one the proxy forwards
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]

# Single sign-on through an OpenID Connect provider (frontend/sso.py): on when a client id
# is set; local accounts and API tokens keep working. The endpoints are the provider's
# (its /.well-known/openid-configuration lists them).
OIDC_RP_CLIENT_ID = env.str("DIGITS_OIDC_CLIENT_ID", default="")
OIDC_ENABLED = bool(OIDC_RP_CLIENT_ID)
OIDC_RP_CLIENT_SECRET = env.str("DIGITS_OIDC_CLIENT_SECRET", default="")
OIDC_OP_AUTHORIZATION_ENDPOINT = env.str("DIGITS_OIDC_AUTHORIZATION_ENDPOINT", default="")
OIDC_OP_TOKEN_ENDPOINT = env.str("DIGITS_OIDC_TOKEN_ENDPOINT", default="")
OIDC_OP_USER_ENDPOINT = env.str("DIGITS_OIDC_USERINFO_ENDPOINT", default="")
OIDC_OP_JWKS_ENDPOINT = env.str("DIGITS_OIDC_JWKS_ENDPOINT", default="")
OIDC_RP_SIGN_ALGO = env.str("DIGITS_OIDC_SIGN_ALGO", default="RS256")
OIDC_ISSUER = env.str("DIGITS_OIDC_ISSUER", default="")  # checked against the ID token's `iss` when set
OIDC_RP_SCOPES = env.str("DIGITS_OIDC_SCOPES", default="openid email profile")
OIDC_TEAMS_CLAIM = env.str("DIGITS_OIDC_TEAMS_CLAIM", default="")  # e.g. "groups": teams follow it
OIDC_PROVIDER_NAME = env.str("DIGITS_OIDC_PROVIDER_NAME", default="single sign-on")
OIDC_AUTHENTICATION_CALLBACK_URL = "sso_callback"
OIDC_TIMEOUT = 15
LOGIN_REDIRECT_URL_FAILURE = "/accounts/login/?sso=failed"
if OIDC_ENABLED:
    AUTHENTICATION_BACKENDS.insert(1, "frontend.sso.OidcBackend")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "axes",
    "workers",
    "datasets",
    "models_app",
    "frontend",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "frontend.middleware.LoginRequiredMiddleware",
    "frontend.middleware.DomainErrorMiddleware",
    "frontend.visibility.VisibilityMiddleware",
    "workers.audit.AuditMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]

ROOT_URLCONF = "digits_site.urls"
ASGI_APPLICATION = "digits_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "frontend" / "templates"],
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


def _database(url: str) -> dict[str, Any]:
    if not url:
        config = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "digits.sqlite3"),
            # WAL lets the web server read while a worker writes; IMMEDIATE avoids
            # "database is locked" upgrades inside transactions.
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
        return config
    parsed: dict[str, Any] = {**dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)}
    if str(parsed["ENGINE"]).endswith("postgresql"):
        # A network that drops packets silently must fail in seconds, not in TCP's
        # minutes, so that workers ride it out as an outage (workers/outage.py).
        options: dict[str, Any] = {**(parsed.get("OPTIONS") or {})}
        options.update(connect_timeout=5, keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
        parsed["OPTIONS"] = options
    return parsed


DATABASES = {"default": _database(env.str("DATABASE_URL", default=""))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "frontend" / "static"]
# Serve straight from the app folders: no collectstatic step for a self-hosted tool.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Uploads (classify-one images): refuse anything large before it is read.
MAX_UPLOAD_IMAGE_BYTES = env.int("DIGITS_MAX_UPLOAD_IMAGE_BYTES", default=20 * 1024 * 1024)
# Dataset archives arrive in chunks of at most MAX_UPLOAD_CHUNK_BYTES (resumable), up to
# MAX_UPLOAD_ARCHIVE_BYTES in all, and may expand to MAX_ARCHIVE_EXTRACT_BYTES on disk.
MAX_UPLOAD_ARCHIVE_BYTES = env.int("DIGITS_MAX_UPLOAD_ARCHIVE_BYTES", default=4 * 1024**3)
MAX_UPLOAD_CHUNK_BYTES = 16 * 1024 * 1024
MAX_ARCHIVE_EXTRACT_BYTES = env.int("DIGITS_MAX_ARCHIVE_EXTRACT_BYTES", default=16 * 1024**3)
# Uploaded text lists (path label lines) and labels files.
MAX_UPLOAD_LIST_BYTES = env.int("DIGITS_MAX_UPLOAD_LIST_BYTES", default=64 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# Training: a split whose decoded images fit TRAIN_CACHE_BYTES is held in memory (per
# process); larger ones stream from LMDB through TRAIN_LOADER_WORKERS loader processes.
TRAIN_CACHE_BYTES = env.int("DIGITS_TRAIN_CACHE_BYTES", default=4 * 1024**3)
# Snapshots kept per model: the last N and the best (0: every one). A model's own
# "keep snapshots" overrides it.
SNAPSHOT_KEEP_LAST = env.int("DIGITS_SNAPSHOT_KEEP_LAST", default=0)
TRAIN_LOADER_WORKERS = env.int("DIGITS_TRAIN_LOADER_WORKERS", default=2)
# The module each training rank runs (`python -m ...`); bench/scheduler.py swaps in a no-op
# to measure the scheduler alone.
TRAINING_MODULE = env.str("DIGITS_TRAINING_MODULE", default="models_app.training.train")
# Job children of device workers are forked from a pre-imported zygote (workers/zygote.py),
# saving the imports (about 1.3 s with torch) at every start; 0 starts each child afresh.
ZYGOTE = env.bool("DIGITS_ZYGOTE", default=True)
# Custom network code runs in a child process (visualize, classify) under these limits.
SANDBOX_SECONDS = env.int("DIGITS_SANDBOX_SECONDS", default=60)
SANDBOX_MEMORY_BYTES = env.int("DIGITS_SANDBOX_MEMORY_BYTES", default=8 * 1024**3)

# Devices and scheduling (workers/devices.py, workers/scheduler.py).
# A host without GPUs offers this many CPU "devices" (one pinned worker each).
CPU_DEVICES = env.int("DIGITS_CPU_DEVICES", default=1)
# Torch threads of a job on a CPU device: the host's cores shared among its CPU devices.
CPU_DEVICE_THREADS = env.int("DIGITS_CPU_DEVICE_THREADS", default=0) or max(1, (os.cpu_count() or 1) // max(1, CPU_DEVICES))
# This host's name and the address other hosts reach it at (for multi-host DDP).
HOST_NAME = env.str("DIGITS_HOST_NAME", default=socket.gethostname())
HOST_ADDRESS = env.str("DIGITS_HOST_ADDRESS", default="127.0.0.1")
DEVICE_HEARTBEAT_SECONDS = env.float("DIGITS_DEVICE_HEARTBEAT_SECONDS", default=3)
# A device silent this long is lost: its job is requeued to resume from its last snapshot.
DEVICE_DEAD_SECONDS = env.float("DIGITS_DEVICE_DEAD_SECONDS", default=15)
# Devices one user's jobs may hold at once (0: no limit); admins set per-user overrides.
USER_DEVICE_LIMIT = env.int("DIGITS_USER_DEVICE_LIMIT", default=0)
# Device-hours one user's jobs may use in any 7 days (0: no limit); admins set overrides,
# and quotas per team (a Django group).
USER_DEVICE_HOURS_PER_WEEK = env.float("DIGITS_USER_DEVICE_HOURS_PER_WEEK", default=0)
# A job's run stops (with a snapshot, resumable) after this many hours when it sets no
# limit; users may set a shorter one, admins any (0: no limit). Admins override per user.
JOB_TIME_LIMIT_HOURS = env.float("DIGITS_JOB_TIME_LIMIT_HOURS", default=0)
# A job asked to stop (time limit, preemption) snapshots at its next step; one that has
# not stopped this long after the request is killed (and resumes from its last snapshot).
STOP_GRACE_SECONDS = env.float("DIGITS_STOP_GRACE_SECONDS", default=60)
# Workers ride out a database outage this long (a running job keeps training, its points
# kept in memory until they can be stored); longer, and the run fails.
DB_OUTAGE_SECONDS = env.float("DIGITS_DB_OUTAGE_SECONDS", default=600)
# Fair share (workers/fairshare.py): past device use counts half as much this many days later.
FAIR_SHARE_HALF_LIFE_DAYS = env.float("DIGITS_FAIR_SHARE_HALF_LIFE_DAYS", default=7)
# Smaller jobs may start ahead of a blocked larger one (backfill) until it has waited this
# long; then nothing behind it starts until it fits, so large jobs cannot starve.
SCHEDULER_BACKFILL_SECONDS = env.float("DIGITS_SCHEDULER_BACKFILL_SECONDS", default=1800)
# A job whose ranks did not all start (a gang start that timed out) waits this long,
# doubled at each further interruption, before it is placed again.
GANG_RETRY_SECONDS = env.float("DIGITS_GANG_RETRY_SECONDS", default=30)
# A job requeued this many times after lost workers fails instead of looping.
MAX_INTERRUPTIONS = env.int("DIGITS_MAX_INTERRUPTIONS", default=3)
# Ranks wait this long for rank 0 and for each other (torch.distributed timeout).
RENDEZVOUS_SECONDS = env.float("DIGITS_RENDEZVOUS_SECONDS", default=120)

REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": env.str("DIGITS_CHANNEL_PREFIX", default="digits")},
    }
}

CELERY_BROKER_URL = REDIS_URL
# Results only for the inference worker's answers (workers/inference.py); every other
# task ignores its result.
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_EXPIRES = 600
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis restarting must not end a run: its task goes on (the run's state is in Postgres,
# its events reach the database without Redis), rather than being cancelled to be
# redelivered, which Celery plans to make the default.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Training can take days; the visibility timeout must outlast the longest task or
# Redis redelivers it (the claim makes a redelivery harmless, but it costs a worker).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 7 * 24 * 3600}
CELERY_TASK_ROUTES = {
    "datasets.tasks.*": {"queue": "datasets"},
    "models_app.classify_one": {"queue": "inference"},
}
# The inference worker: how long a page or API call waits for its answer, and torch's
# threads per request there (0: every core).
INFERENCE_TIMEOUT_SECONDS = env.float("DIGITS_INFERENCE_TIMEOUT", default=60.0)
INFERENCE_THREADS = env.int("DIGITS_INFERENCE_THREADS", default=1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Logged in to read anything; owner or admin to change an object (workers/permissions.py).
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "frontend.visibility.ObjectInUrlVisible",  # 404 for an object the user may not see
        "workers.permissions.IsOwnerOrReadOnly",
    ],
    "DEFAULT_SCHEMA_CLASS": "workers.schema.AutoSchema",
    # Every list: paginated (workers/listing.py), filtered with django-filter.
    "DEFAULT_PAGINATION_CLASS": "workers.listing.Pagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "EXCEPTION_HANDLER": "workers.api.api_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "DIGITS-NG API",
    "DESCRIPTION": "Datasets, models, training jobs, inference and downloads.",
    "VERSION": "0.1.0",
    # Request bodies get their own components, so uploads are binary in multipart bodies.
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI and Redoc from drf-spectacular-sidecar: the docs work with no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Two models have a `source` with different choices: name each set.
    "ENUM_NAME_OVERRIDES": {
        "DatasetSourceEnum": "datasets.models.Source",
        "EvaluationSourceEnum": "models_app.models.EvaluationSource",
        "JobStatusEnum": "workers.models.JobStatus",
        "SweepStatusEnum": "models_app.models.SweepStatus",
        "TrialStateEnum": "models_app.models.TrialState",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # axes logs every login at INFO; lockouts are warnings.
    "loggers": {"daphne": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
