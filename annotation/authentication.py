"""DRF's token authentication with its lookup compiled once (``Prepared``): every annotation
call authenticates, and the ORM spent longer building the token's query than PostgreSQL took
to answer it. On PostgreSQL the same statement reads the user's permissions (their own and their
groups', as ``access.ModelBackend`` would next: every API call checks one), one query instead of
two. Same answers and errors as ``rest_framework.authentication.TokenAuthentication``."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import CharField, OuterRef, Value
from django.db.models.functions import Concat
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from annotation.prepared import Prepared, columns, instances


def _token_query(key):
    from annotation.access import permissions_of  # (access imports DRF, whose settings import this module)

    qs, perms = Token.objects.filter(key=key), []
    if connection.vendor == "postgresql":  # an array of a subquery: PostgreSQL's; elsewhere the backend asks
        from django.contrib.postgres.expressions import ArraySubquery

        names = permissions_of(OuterRef(OuterRef("user_id"))).order_by().values(
            perm=Concat("content_type__app_label", Value("."), "codename", output_field=CharField()))
        qs, perms = qs.annotate(perms=ArraySubquery(names)), ["perms"]
    return qs.values_list(*columns(Token), *columns(get_user_model(), "user__"), *perms)


_TOKEN = Prepared(_token_query, key=str)


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key):
        rows = _TOKEN.rows(key=key)
        if not rows:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        token, user, rest = instances(rows[0], Token, get_user_model())
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        if rest and not user.is_superuser:  # a superuser has every permission: the backend reads them all
            user._perm_cache = set(rest[0])  # what ``access.ModelBackend.get_all_permissions`` keeps
        token.user = user
        return user, token
