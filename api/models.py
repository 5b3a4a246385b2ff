"""Staff API tokens and the record of every API call.

A token is `tmt_<prefix>_<secret>`: the prefix (public, indexed) finds the row, the SHA-256
of the whole token is what is stored and compared (constant time). Tokens are 256-bit
random, so a fast hash is enough; the plaintext is shown once, when the token is created
in the admin, and never stored.
"""
import hashlib
import hmac
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "tmt_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Scope(models.TextChoices):
    READ = "read", "Read (GET only)"
    READ_WRITE = "read-write", "Read and write"


class ApiToken(models.Model):
    name = models.CharField(max_length=100, help_text="What the token is for (a script, a person, a host).")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens",
                             help_text="Calls act as this user, who must be active staff.")
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked = models.BooleanField(default=False, help_text="A revoked token is refused (403).")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   editable=False, related_name="+",
                                   help_text="The staff user who made the token: it never does more than they "
                                             "may (a token without a creator is refused).")
    expires_at = models.DateTimeField(null=True, blank=True,
                                      help_text="Refused (401) from then on; empty: no expiry.")
    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.READ,
                             help_text="read: GET calls only; read-write: every call its users' permissions allow.")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.name} ({TOKEN_PREFIX}{self.prefix}_…)"

    def issue(self) -> str:
        """Give the token a new secret; returns the plaintext (the only time it exists)."""
        self.prefix = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}{self.prefix}_{secrets.token_urlsafe(32)}"
        self.secret_hash = hash_token(token)
        return token

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(self.secret_hash, hash_token(token))

    @staticmethod
    def prefix_of(token: str) -> str | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        prefix, sep, secret = token[len(TOKEN_PREFIX):].partition("_")
        return prefix if sep and prefix and secret else None


class ApiCall(models.Model):
    """Who called what, when, and how it ended. Written for every request under /api/."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    token = models.ForeignKey(ApiToken, on_delete=models.SET_NULL, null=True, blank=True, related_name="calls")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="+", help_text="The token's user: the call acted as them.")
    creator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="+", help_text="Who made the token used.")
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    query = models.CharField(max_length=500, blank=True, default="")
    status_code = models.PositiveSmallIntegerField()
    tenant_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    run_id = models.BigIntegerField(null=True, blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    duration_ms = models.FloatField(default=0)
    detail = models.TextField(blank=True, default="", help_text="The error message, or what was done.")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API call"

    def __str__(self):
        return f"{self.method} {self.path} -> {self.status_code}"
