"""Admin forms. A stored secret is write-only: it can be replaced, never shown."""
import json
import math

from django import forms
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput

from tenancy.models import DatabaseServer


class DatabaseServerForm(forms.ModelForm):
    # render_value=False: the page never carries the stored password, not even after a
    # failed validation; a blank field therefore means "keep what is stored".
    new_password = forms.CharField(
        label="New admin password", required=False, strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave blank to keep the stored password.")
    clear_password = forms.BooleanField(
        label="Remove the stored password", required=False,
        help_text="For servers that need no password (trust or peer authentication).")

    class Meta:
        model = DatabaseServer
        # is_default is kept in step with settings by tenancy.servers, not edited by hand.
        fields = ["name", "host", "port", "admin_user", "maintenance_db", "max_tenant_databases", "notes"]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("new_password") and cleaned.get("clear_password"):
            raise forms.ValidationError("Either type a new password or remove the stored one, not both.")
        return cleaned

    def save(self, commit=True):
        server = super().save(commit=False)
        if self.cleaned_data.get("new_password"):
            server.set_admin_password(self.cleaned_data["new_password"])
        elif self.cleaned_data.get("clear_password"):
            server.set_admin_password("")
        if commit:
            server.save()
            self._save_m2m()
        return server


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:30]} is out of range")
    return value


def _jsonb_problem(value) -> str | None:
    """Why PostgreSQL's jsonb would refuse this parsed JSON (a NUL or a lone surrogate in a
    key or a string), or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        texts = [item] if isinstance(item, str) else [str(k) for k in item] if isinstance(item, dict) else []
        for text in texts:
            if "\x00" in text:
                return "a key or a text contains a NUL character"
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return "a key or a text contains invalid Unicode (a lone surrogate)"
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


class TenantSettingsField(forms.JSONField):
    """Tenant settings as JSON that the jsonb column takes: a form error (never a failed save)
    for NaN, Infinity, a number beyond a float or of more than 4300 digits, a NUL or a lone
    surrogate; an empty field is {} (the column is NOT NULL)."""

    @staticmethod
    def _problem(text: str) -> str | None:
        try:
            parsed = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
        except (ValueError, RecursionError) as exc:
            return str(exc)[:120]
        return _jsonb_problem(parsed)

    def to_python(self, value):
        if self.disabled or not isinstance(value, str):
            return super().to_python(value)
        if value.strip() in ("", "null"):
            return {}
        problem = self._problem(value)
        if problem:
            raise ValidationError(f"Enter valid JSON: {problem}.", code="invalid")
        return super().to_python(value)

    def bound_data(self, data, initial):
        # The form shown again with its error: the text as typed (Django's own would parse it
        # again and fail on a 5000-digit number or print a lone surrogate).
        if not self.disabled and isinstance(data, str) and data.strip() and self._problem(data):
            return InvalidJSONInput(data)
        return super().bound_data(data, initial)
