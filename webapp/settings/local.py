"""Developer machine and the embedded demo: DEBUG on, a throwaway secret unless one is given."""

from .base import *  # noqa: F401,F403
from .base import VAR_DIR, env

VAR_DIR.mkdir(parents=True, exist_ok=True)
DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="local-only-insecure-key-do-not-use-in-production")
