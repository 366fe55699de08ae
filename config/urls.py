"""URL configuration."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from api.schema import schema
from api.views import KillboardGraphQLView

urlpatterns = [
    path("admin/", admin.site.urls),
    # CSRF is checked by the view for session-cookie requests; token requests need none.
    path("graphql/", csrf_exempt(KillboardGraphQLView.as_view(schema=schema)), name="graphql"),
]
