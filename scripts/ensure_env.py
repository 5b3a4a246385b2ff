"""Write a git-ignored .env with fresh secrets when there is none (never overwrites one);
an existing .env without a superuser password for the embedded PostgreSQL gets one appended."""
import re
import secrets
from pathlib import Path

env_file = Path(__file__).resolve().parent.parent / ".env"
pg_password_line = f"EMBEDDED_PG_PASSWORD={secrets.token_urlsafe(32)}\n"
if env_file.exists():
    # An older .env may lack a secret made later: add each missing one, change nothing else.
    text = env_file.read_text()
    missing = [(name, line) for name, line in (("EMBEDDED_PG_PASSWORD", pg_password_line),
               ("DJANGO_SECRET_KEY", f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}\n"))
               if not re.search(rf"^\s*{name}\s*=", text, re.MULTILINE)]
    if missing:
        with env_file.open("a") as out:
            out.write(("" if text.endswith("\n") or not text else "\n") + "".join(line for _, line in missing))
        print(f"{env_file.name}: added {', '.join(name for name, _ in missing)}")
    else:
        print(f"{env_file.name}: kept as it is")
else:
    env_file.write_text(
        "# Made by `make` on first run. Never commit this file.\n"
        f"TENANT_ENCRYPTION_KEY={secrets.token_hex(32)}\n"
        f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}\n"
        + pg_password_line)
    env_file.chmod(0o600)
    print(f"{env_file.name}: written with a new TENANT_ENCRYPTION_KEY")
