"""Routes of the staff API (mounted at /api/ by project/urls.py)."""
from django.urls import path, re_path

from api import openapi, plans, views

app_name = "api"

urlpatterns = [
    path("openapi.json", openapi.openapi_json, name="openapi"),
    path("tenants/export", views.tenant_export, name="tenant-export"),
    path("admin/tenants", views.tenant_list, name="tenant-list"),
    path("admin/tenants/restore", views.tenant_restore, name="tenant-restore"),
    path("admin/tenants/<str:tenant_id>", views.tenant_detail, name="tenant-detail"),
    path("admin/tenants/<str:tenant_id>/suspend", views.tenant_suspend, name="tenant-suspend"),
    path("admin/tenants/<str:tenant_id>/reactivate", views.tenant_reactivate, name="tenant-reactivate"),
    path("admin/tenants/<str:tenant_id>/migrations", views.tenant_migrations, name="tenant-migrations"),
    path("admin/migrations/<int:run_id>", views.migration_run, name="migration-run"),
    path("admin/migrations/<int:run_id>/cancel", views.migration_cancel, name="migration-cancel"),
    path("admin/candidates", plans.candidate_list, name="candidate-list"),
    path("admin/plans", plans.plan_list, name="plan-list"),
    path("admin/plans/<str:plan_id>", plans.plan_detail, name="plan-detail"),
    path("admin/plans/<str:plan_id>/start", plans.plan_start, name="plan-start"),
    path("admin/plans/<str:plan_id>/pause", plans.plan_pause, name="plan-pause"),
    path("admin/plans/<str:plan_id>/resume", plans.plan_resume, name="plan-resume"),
    path("admin/plans/<str:plan_id>/cancel", plans.plan_cancel, name="plan-cancel"),
    re_path(r"^(?P<rest>.*)$", views.not_found),
]
