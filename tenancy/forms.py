"""Admin forms. A stored secret is write-only: it can be replaced, never shown."""
from django import forms

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
