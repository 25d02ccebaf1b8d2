"""DRF's token authentication with its lookup compiled once (``Prepared``): every annotation
call authenticates, and the ORM spent longer building the token's query than PostgreSQL took
to answer it. Same answers and errors as ``rest_framework.authentication.TokenAuthentication``."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from annotation.prepared import Prepared, columns, instances

_TOKEN = Prepared(lambda key: Token.objects.filter(key=key).values_list(*columns(Token), *columns(get_user_model(), "user__")),
                  key=str)


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key):
        rows = _TOKEN.rows(key=key)
        if not rows:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        token, user, _rest = instances(rows[0], Token, get_user_model())
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token.user = user
        return user, token
