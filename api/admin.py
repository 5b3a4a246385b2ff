"""API tokens (created here, the plaintext shown once) and the read-only record of API calls.

A token records who made it and can never be made for a user who may do more than its maker:
the add form refuses a user holding a permission the creator lacks (or a superuser unless the
creator is one). At call time both must hold the permission (api/auth.py)."""
from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

from api.models import TOKEN_PREFIX, ApiCall, ApiToken
from tenancy.admin_mixins import ReadOnlyAdmin

# The session key under which a new token's plaintext waits for its one display (then popped).
CREATED_SESSION_KEY = "api_token_created_{}"


def permissions_beyond(user, creator) -> list[str]:
    """What `user` may do that `creator` may not (superuser status included)."""
    if user.is_superuser and not creator.is_superuser:
        return ["superuser status"]
    return sorted(perm for perm in user.get_all_permissions() if not creator.has_perm(perm))


class ApiTokenForm(forms.ModelForm):
    creator = None  # the staff user adding the token, set by ApiTokenAdmin.get_form

    def clean_user(self):
        user = self.cleaned_data["user"]
        if self.creator is not None and user is not None:
            beyond = permissions_beyond(user, self.creator)
            if beyond:
                raise forms.ValidationError(
                    f"{user.get_username()} has permissions you do not have ({', '.join(beyond[:10])}"
                    f"{', ...' if len(beyond) > 10 else ''}): a token can never do more than the person who "
                    "makes it.")
        return user


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = ("name", "user", "created_by", "scope", "token_prefix", "created_at", "expires_at",
                    "last_used_at", "revoked")
    list_filter = ("revoked", "scope")
    search_fields = ("name", "user__username", "created_by__username", "prefix")
    list_select_related = ("user", "created_by")
    readonly_fields = ("token_prefix", "created_by", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    @admin.display(description="token")
    def token_prefix(self, obj):
        return f"{TOKEN_PREFIX}{obj.prefix}_…" if obj.prefix else "-"

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "user", "scope", "expires_at")
        return ("name", "user", "created_by", "scope", "expires_at", "token_prefix", "revoked", "created_at",
                "last_used_at", "revoked_at")

    def get_readonly_fields(self, request, obj=None):
        # Who and what a token is for are fixed once made: a wider token is a new token, from
        # someone allowed to make it. Expiry and revocation may change.
        return self.readonly_fields + (("user", "scope") if obj is not None else ())

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"creator": request.user})

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user":
            kwargs["queryset"] = get_user_model().objects.filter(is_staff=True, is_active=True)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
            request._new_api_token = obj.issue()  # kept on the request only, never stored
        elif "revoked" in form.changed_data:
            obj.revoked_at = timezone.now() if obj.revoked else None
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        token = getattr(request, "_new_api_token", None)
        if token is None:
            return super().response_add(request, obj, post_url_continue)
        # Post/redirect/get: reloading the page that shows the token never posts the form again
        # (a second live token). The plaintext waits in this user's session for that one display.
        request.session[CREATED_SESSION_KEY.format(obj.pk)] = token
        return HttpResponseRedirect(reverse("admin:api_apitoken_created", args=[obj.pk]))

    def get_urls(self):
        return [path("<int:token_id>/created/", self.admin_site.admin_view(self.created_view),
                     name="api_apitoken_created"), *super().get_urls()]

    def created_view(self, request, token_id):
        """The new token, shown once: its plaintext leaves the session as it is displayed; a
        reload says it cannot be shown again."""
        obj = ApiToken.objects.select_related("user", "created_by").filter(pk=token_id).first()
        if obj is None:
            raise Http404
        if not (self.has_add_permission(request) or self.has_view_permission(request, obj)):
            raise PermissionDenied
        token = request.session.pop(CREATED_SESSION_KEY.format(obj.pk), None)
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

    list_display = ("created_at", "user", "creator", "token", "method", "path", "status_code", "tenant_id",
                    "run_id", "duration_ms")
    list_filter = ("status_code", "method", "user")
    search_fields = ("path", "detail", "user__username", "creator__username", "token__name")
    list_select_related = ("user", "creator", "token")
    date_hierarchy = "created_at"
    fields = ("created_at", "user", "creator", "token", "method", "path", "query", "status_code", "tenant_id", "run_id",
              "remote_addr", "duration_ms", "detail")
    readonly_fields = fields

