"""The OpenAPI schema's shared parts: the one error body every endpoint answers with, and
an AutoSchema that documents the error responses each operation can give."""
from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers


@extend_schema_serializer(component_name="Error")
class ErrorSerializer(serializers.Serializer):
    """Every error (workers/api.py's exception handler)."""

    detail = serializers.CharField(help_text="What went wrong and what to do next.")
    errors = serializers.DictField(  # type: ignore[assignment]  # a field named like Serializer.errors
        child=serializers.ListField(child=serializers.CharField()), required=False,
        help_text="Per field (dotted for nested ones): its messages. Present when fields are to blame.",
    )


class AutoSchema(SpectacularAutoSchema):
    """Adds the error responses: 401 and 403 everywhere (login, permissions), 400 where a
    body or query is read, 415 where a body is sent, 404 where the path names an object, 409 on deletes (a dataset
    that a model uses)."""

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)  # type: ignore[arg-type]
        if direction != "response":
            return responses
        method = self.method.upper()
        codes = ["401", "403"]
        if method in ("POST", "PUT", "PATCH") or self._get_filter_parameters() or method == "GET":
            codes.append("400")
        if method in ("POST", "PUT", "PATCH"):
            codes.append("415")  # a body in a media type the endpoint does not parse (or a malformed multipart one)
        if "{" in self.path or (self._is_list_view() and self._get_paginator()):
            codes.append("404")  # no such object, or a page past the end
        if method == "DELETE":
            codes.append("409")
        for code in codes:
            responses.setdefault(code, self._get_response_for_code(ErrorSerializer, code))
        return responses
