"""List pagination (DRF's ``limit`` / ``offset``), strict: a value that is not a whole number in
range is refused (400, the error shape) rather than silently replaced by the default, and the
schema says what is accepted."""

import re

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination


class StrictLimitOffsetPagination(LimitOffsetPagination):
    def _whole(self, request, name: str, minimum: int) -> None:
        raw = request.query_params.get(name)
        if raw is None:
            return
        if not re.fullmatch(r"[0-9]{1,18}", raw) or int(raw) < minimum:
            raise ValidationError({name: [f"A whole number of at least {minimum}."]})

    def get_limit(self, request):
        self._whole(request, self.limit_query_param, 1)
        return super().get_limit(request)

    def get_offset(self, request):
        self._whole(request, self.offset_query_param, 0)
        return super().get_offset(request)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1 if parameter["name"] == self.limit_query_param else 0
        return parameters
