"""Follow and control a fleet plan.

    manage.py plan_control show 3        # [n/N] done / running / waiting / failed, rows moved, rate, ETA
    manage.py plan_control start 3       # a draft: scheduled until its window opens, else running
    manage.py plan_control pause 3       # no new moves start; running ones finish
    manage.py plan_control resume 3
    manage.py plan_control cancel 3      # no new moves; running ones are cancelled and rolled back

Exit status: 0 when done, 2 when refused (one `error:` line, nothing changed).
"""
from fleet import services
from fleet.management.commands._plans import print_plan
from migration_jobs.exceptions import BadRequest
from migration_jobs.management.base import TenantCommand

ACTIONS = {"show": None, "start": services.start_plan, "pause": services.pause, "resume": services.resume,
           "cancel": services.cancel}


class Command(TenantCommand):
    help = "Show, start, pause, resume or cancel a plan of moves."

    def add_arguments(self, parser):
        parser.add_argument("action", metavar="show|start|pause|resume|cancel")
        parser.add_argument("plan", metavar="PLAN_ID")

    def handle(self, *args, action, plan, **options):
        if action not in ACTIONS:
            raise BadRequest(f"unknown action {action!r}: use {', '.join(ACTIONS)}")
        plan = services.get_plan(plan)
        if ACTIONS[action] is not None:
            plan = ACTIONS[action](plan)
            self.stdout.write(f"plan {plan.pk}: {action} done; now {plan.status}")
            plan.refresh_from_db()
        print_plan(self, plan)
