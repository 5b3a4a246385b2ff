from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "Tenant moves"
admin.site.site_title = "Tenant moves"
admin.site.site_url = None  # no public site: no "View site" link to a 404

urlpatterns = [
    path("admin/", admin.site.urls),
    path("shop/", include("shop.urls")),
    path("api/", include("api.urls")),
    path("metrics", include("api.metrics")),  # Prometheus, behind an API token (api/metrics.py)
]

# Short answers, never a debug page; JSON under /api/ (a string: project imports no app).
handler400 = "tenancy.error_reporting.bad_request"
handler500 = "tenancy.error_reporting.server_error"
