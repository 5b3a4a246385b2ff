"""API tokens (created here, the plaintext shown once) and the read-only record of API calls."""
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from api.models import TOKEN_PREFIX, ApiCall, ApiToken
from tenancy.admin_mixins import ReadOnlyAdmin


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "token_prefix", "created_at", "last_used_at", "revoked")
    list_filter = ("revoked",)
    search_fields = ("name", "user__username", "prefix")
    list_select_related = ("user",)
    readonly_fields = ("token_prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    @admin.display(description="token")
    def token_prefix(self, obj):
        return f"{TOKEN_PREFIX}{obj.prefix}_…" if obj.prefix else "-"

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "user")
        return ("name", "user", "token_prefix", "revoked", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields + (("user",) if obj is not None else ())

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user":
            kwargs["queryset"] = get_user_model().objects.filter(is_staff=True, is_active=True)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        if not change:
            request._new_api_token = obj.issue()  # kept on the request only, never stored
        elif "revoked" in form.changed_data:
            obj.revoked_at = timezone.now() if obj.revoked else None
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        token = getattr(request, "_new_api_token", None)
        if token is None:
            return super().response_add(request, obj, post_url_continue)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "object": obj,
                   "token": token, "title": "API token created",
                   "api_url": request.build_absolute_uri("/api/")}
        response = TemplateResponse(request, "admin/api/apitoken/created.html", context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked=False).update(revoked=True, revoked_at=timezone.now())
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)


@admin.register(ApiCall)
class ApiCallAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    """An audit record: nobody adds, edits or deletes calls from the admin."""

    list_display = ("created_at", "user", "token", "method", "path", "status_code", "tenant_id", "run_id",
                    "duration_ms")
    list_filter = ("status_code", "method", "user")
    search_fields = ("path", "detail", "user__username", "token__name")
    list_select_related = ("user", "token")
    date_hierarchy = "created_at"
    fields = ("created_at", "user", "token", "method", "path", "query", "status_code", "tenant_id", "run_id",
              "remote_addr", "duration_ms", "detail")
    readonly_fields = fields

