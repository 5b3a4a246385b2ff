from django.apps import AppConfig
from django.db.models.signals import post_migrate


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = "Fleet moves (plans of many tenants)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Imported here, not above: these modules import models, which Django loads after apps.
        from fleet import receivers
        from migration_jobs.signals import run_finished

        run_finished.connect(receivers.advance_plans_of_run, dispatch_uid="fleet-advance-plans-of-run")
        post_migrate.connect(receivers.ensure_schedule, sender=self, dispatch_uid="fleet-schedule")
