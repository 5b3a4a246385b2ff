"""Route cache invalidation whenever something routing depends on changes."""
from django.db.models.signals import post_delete, post_save

from tenancy.models import DatabaseCredential, DatabaseServer, Domain, Tenant
from tenancy.routing import notify_change


def _tenant_changed(sender, instance, **kwargs):
    notify_change(instance.pk)


def _related_changed(sender, instance, **kwargs):
    notify_change(instance.tenant_id)


def _server_changed(sender, instance, **kwargs):
    notify_change(None)  # a host or port change concerns every tenant on that server


def connect():
    for signal in (post_save, post_delete):
        signal.connect(_tenant_changed, sender=Tenant, dispatch_uid=f"routes-tenant-{signal}")
        signal.connect(_related_changed, sender=Domain, dispatch_uid=f"routes-domain-{signal}")
        signal.connect(_related_changed, sender=DatabaseCredential, dispatch_uid=f"routes-cred-{signal}")
        signal.connect(_server_changed, sender=DatabaseServer, dispatch_uid=f"routes-server-{signal}")
