"""Re-encrypt every stored secret under the current TENANT_ENCRYPTION_KEY (see HELP)."""
import argparse
import os
import re
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError, DjangoHelpFormatter
from django.db import transaction
from django.test.utils import override_settings

from tenancy import crypto
from tenancy.management.base import ContractCommand
from tenancy.models import DatabaseCredential, DatabaseServer

# Every stored secret: (model, field, the context its tokens are bound to).
SECRETS = [
    (DatabaseServer, "admin_password_encrypted", crypto.SERVER_CONTEXT),
    (DatabaseCredential, "password_encrypted", crypto.CREDENTIAL_CONTEXT),
]

KEY, OLD = crypto.KEY_SETTING, crypto.OLD_KEYS_SETTING

HELP = """\
Re-encrypt every stored secret (tenant database credentials, server admin passwords) under
the current TENANT_ENCRYPTION_KEY, decrypting with it or any of TENANT_ENCRYPTION_OLD_KEYS.
All rows are locked and rewritten in one transaction; each new value is checked to decrypt
to the same secret before the commit. Prints counts, never a secret or a key.

Rotation procedure:
  1. Stop the web server and the workers: a process keeps the keys it started with and
     could not read secrets re-encrypted under a key it does not know.
  2. manage.py rotate_encryption_key --generate-into .env
     Writes a fresh key into .env as TENANT_ENCRYPTION_KEY and moves the previous key to
     TENANT_ENCRYPTION_OLD_KEYS (file replaced atomically, mode 0600, other lines kept),
     and only then re-encrypts. If it stops half-way nothing is lost, as .env already
     holds both keys: run `manage.py rotate_encryption_key` to finish.
  3. Start the processes again. `manage.py rotate_encryption_key --check` must exit 0.
  4. Remove the old key from TENANT_ENCRYPTION_OLD_KEYS and restart. Keep it somewhere
     safe for as long as database backups taken before the rotation may be restored.

Keys set in the process environment take precedence over .env; then rotate by hand: new
key in TENANT_ENCRYPTION_KEY, the previous one added to TENANT_ENCRYPTION_OLD_KEYS,
restart, and run this command without --generate-into. For no downtime, first add the new
key to TENANT_ENCRYPTION_OLD_KEYS everywhere and restart, then swap the two, restart again
and run this command: every process can read both keys throughout.
"""


class _HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of the procedure above."""


_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def _env_value(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw.split(" #", 1)[0].strip()


def read_env_keys(path: Path) -> tuple[str, list[str]]:
    """The current and old keys an env file assigns (first assignment wins, as when loaded)."""
    values = {}
    for line in path.read_text().splitlines():
        match = _ASSIGNMENT.match(line)
        if match and match.group(1) in (KEY, OLD):
            values.setdefault(match.group(1), _env_value(match.group(2)))
    return values.get(KEY, "").strip(), [k.strip() for k in values.get(OLD, "").split(",") if k.strip()]


def write_env_keys(path: Path, current: str, old: list[str]) -> None:
    """Rewrite the two key lines of an env file atomically, keeping every other line."""
    wanted = {KEY: current, OLD: ",".join(old)}
    lines, written = [], set()
    for line in path.read_text().splitlines(keepends=True):
        match = _ASSIGNMENT.match(line)
        if match and match.group(1) in wanted:
            if match.group(1) not in written:
                lines.append(f"{match.group(1)}={wanted[match.group(1)]}\n")
                written.add(match.group(1))
            continue  # a second assignment of the same name would only confuse
        lines.append(line)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines += [f"{name}={value}\n" for name, value in wanted.items() if name not in written]

    # mkstemp creates the file with mode 0600 in the same folder, so os.replace is atomic:
    # a crash leaves either the old file or the new one, never a partial one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _configured_keys() -> tuple[str, list[str]]:
    current = settings.TENANT_ENCRYPTION_KEY.strip()
    return current, [k.strip() for k in settings.TENANT_ENCRYPTION_OLD_KEYS if k.strip()]


def stored_secrets(lock: bool = False):
    """(model, field, context, pk, token) of every non-empty stored secret."""
    for model, field, context in SECRETS:
        rows = model.objects.order_by("pk")
        if lock:
            rows = rows.select_for_update()
        for pk, token in rows.values_list("pk", field):
            if token:
                yield model, field, context, pk, token


class Command(ContractCommand):
    help = HELP
    # A malformed key (in the settings or the environment) is bad input: one `error:` line, 2.
    exit_statuses = {**ContractCommand.exit_statuses, ImproperlyConfigured: 2, crypto.DecryptionError: 2}

    def create_parser(self, prog_name, subcommand, **kwargs):
        kwargs["formatter_class"] = _HelpFormatter
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser):
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--generate-into", metavar="PATH",
                          help=f"first write a new {KEY} into this env file (e.g. .env), moving the "
                               f"previous key to {OLD}, then re-encrypt under it")
        mode.add_argument("--check", action="store_true",
                          help="change nothing; list the secrets (model and pk) not under the current key "
                               "and exit 1 if there are any")

    def handle(self, *args, generate_into=None, check=False, **options):
        if check:
            return self.check_current()
        # Fail before changing anything if some secret cannot be read with the keys we have.
        self.readable_or_fail()
        if generate_into:
            current, old = self.generate_into(Path(generate_into))
            # Settings were loaded with the previous key: put the new keyring in effect
            # for this command only (restored on exit).
            with override_settings(TENANT_ENCRYPTION_KEY=current, TENANT_ENCRYPTION_OLD_KEYS=old):
                self.rotate()
        else:
            self.rotate()

    def readable_or_fail(self):
        for model, _field, context, pk, token in stored_secrets():
            try:
                crypto.decrypt(token, context=context)
            except crypto.DecryptionError as exc:
                raise CommandError(f"{model.__name__} pk={pk}: {exc}. Nothing was changed.", returncode=2) from None

    def generate_into(self, path: Path) -> tuple[str, list[str]]:
        path = path.resolve()
        current, old = _configured_keys()
        if not path.is_file():
            raise CommandError(f"{path} is not a file; it must be the env file {KEY} is read from. "
                               "Nothing was changed.", returncode=2)
        try:
            file_current, file_old = read_env_keys(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read {path}: {getattr(exc, 'strerror', None) or type(exc).__name__}. "
                               "Nothing was changed.", returncode=2) from None
        # If this process did not get its keys from the file, rewriting the file would not
        # change the keys the next start uses, and secrets could end up under a key it lacks.
        if file_current != current or set(file_old) != set(old):
            raise CommandError(f"the keys in {path} are not the ones in effect ({KEY} or {OLD} is set "
                               "elsewhere, e.g. in the environment); change the keys there by hand and "
                               "run this command without --generate-into. Nothing was changed.", returncode=2)
        new_key = crypto.generate_key()
        new_old = list(dict.fromkeys([current, *old]))  # previous key first, no duplicates
        try:
            write_env_keys(path, new_key, new_old)  # atomic: the file is the old one or the new one
        except OSError as exc:
            raise CommandError(f"cannot write {path}: {exc.strerror or type(exc).__name__}. Nothing was changed.",
                               returncode=2) from None
        self.stdout.write(f"Wrote a new {KEY} (key {crypto.key_id(new_key)}) into {path}; "
                          f"key {crypto.key_id(current)} moved to {OLD}.")
        return new_key, new_old

    def rotate(self):
        kid = crypto.current_key_id()
        rotated = already = 0
        with transaction.atomic():
            for model, field, context, pk, token in stored_secrets(lock=True):
                if crypto.token_key_id(token) == kid:
                    already += 1
                    continue
                try:
                    plaintext = crypto.decrypt(token, context=context)
                except crypto.DecryptionError as exc:
                    raise CommandError(f"{model.__name__} pk={pk}: {exc}. Nothing was changed.") from None
                new_token = crypto.encrypt(plaintext, context=context)
                if crypto.decrypt(new_token, context=context) != plaintext:
                    raise CommandError(f"{model.__name__} pk={pk}: re-encrypted value did not verify. "
                                       "Nothing was changed.")
                # update(), not save(): only the token changes, nothing to signal or timestamp.
                model.objects.filter(pk=pk).update(**{field: new_token})
                rotated += 1
        self.stdout.write(f"Key {kid}: {rotated} secret(s) re-encrypted, {already} already current.")

    def check_current(self):
        kid = crypto.current_key_id()
        stale = [(model.__name__, pk) for model, _f, _c, pk, token in stored_secrets()
                 if crypto.token_key_id(token) != kid]
        for name, pk in stale:
            self.stdout.write(f"{name} pk={pk}")
        if stale:
            raise CommandError(f"{len(stale)} secret(s) not under the current key {kid}; "
                               "run `manage.py rotate_encryption_key`", returncode=1)
        self.stdout.write(f"All secrets are under the current key {kid}.")
