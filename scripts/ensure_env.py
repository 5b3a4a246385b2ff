"""Write a git-ignored .env with fresh secrets when there is none (never overwrites one);
an existing .env without a superuser password for the embedded PostgreSQL gets one appended."""
import re
import secrets
from pathlib import Path

env_file = Path(__file__).resolve().parent.parent / ".env"
pg_password_line = f"EMBEDDED_PG_PASSWORD={secrets.token_urlsafe(32)}\n"
if env_file.exists():
    text = env_file.read_text()
    if re.search(r"^\s*EMBEDDED_PG_PASSWORD\s*=", text, re.MULTILINE):
        print(f"{env_file.name}: kept as it is")
    else:
        with env_file.open("a") as fh:
            fh.write(("" if text.endswith("\n") or not text else "\n") + pg_password_line)
        print(f"{env_file.name}: EMBEDDED_PG_PASSWORD added")
else:
    env_file.write_text(
        "# Made by `make` on first run. Never commit this file.\n"
        f"TENANT_ENCRYPTION_KEY={secrets.token_hex(32)}\n"
        f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}\n"
        + pg_password_line)
    env_file.chmod(0o600)
    print(f"{env_file.name}: written with a new TENANT_ENCRYPTION_KEY")
