from django.apps import AppConfig
from django.db.models.signals import post_migrate


class TenancyConfig(AppConfig):
    name = "tenancy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Imported here, not above: these modules import models, which Django loads after apps.
        from tenancy import crypto, signals
        from tenancy.servers import ensure_default_server

        # Fail at startup, not at the first credential read: names the variable and how to make one.
        crypto.keyring()
        signals.connect()
        post_migrate.connect(ensure_default_server, sender=self)
