"""URL configuration."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from api.schema import schema
from api.views import KillboardGraphQLView
from config.throttle import ThrottledAdminAuthenticationForm
from monitoring import views as monitoring

# Too many failed logins lock a username and address out for a while (config.throttle).
admin.site.login_form = ThrottledAdminAuthenticationForm

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", monitoring.metrics, name="metrics"),
    path("healthz", monitoring.healthz, name="healthz"),
    # CSRF is checked by the view for session-cookie requests; token requests need none.
    path("graphql/", csrf_exempt(KillboardGraphQLView.as_view(schema=schema)), name="graphql"),
]
