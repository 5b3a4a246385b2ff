"""Create the demo superuser, or reset its password, and print the login.

Printing a password is deliberate here: this is the demo login that `make demo` shows the
user. A fresh random password is set on every run, so an old printout stops working.
"""
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction


class Command(BaseCommand):
    help = "Create (or reset the password of) a demo superuser and print its login."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin", help="default: admin")

    def handle(self, *args, username, **options):
        user_model = get_user_model()
        password = secrets.token_urlsafe(12)
        with transaction.atomic():
            user, created = user_model._default_manager.get_or_create(**{user_model.USERNAME_FIELD: username})
            user.is_staff = user.is_superuser = user.is_active = True
            user.set_password(password)
            user.save()
        self.stdout.write(f"{'Created' if created else 'Reset the password of'} superuser {username}.")
        self.stdout.write(f"Admin login: {username} / {password}")
