"""GET /api/plugins/: the installed data and visualization plugins, with each data
plugin's fields (what `plugin_options` takes); staff also see those that failed to load."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .view_plugins import installed_plugins


class PluginsApi(APIView):
    @extend_schema(responses=inline_serializer("Plugins", {
        "data": serializers.ListField(child=serializers.DictField(), help_text="name, label, task, fields"),
        "views": serializers.ListField(child=serializers.DictField(), help_text="name, label, tasks"),
        "failures": serializers.ListField(child=serializers.DictField(), help_text="Staff only: group, name, value, error."),
    }))
    def get(self, request: Request) -> Response:
        found = installed_plugins()
        if not request.user.is_staff:
            found["failures"] = []
        return Response(found)
