#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:  # e.g. a malformed TENANT_ENCRYPTION_KEY: one line, no traceback
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
