"""Write a git-ignored .env with fresh secrets when there is none (never overwrites one)."""
import secrets
from pathlib import Path

env_file = Path(__file__).resolve().parent.parent / ".env"
if env_file.exists():
    # An older .env may lack the Django secret key: add one, change nothing else.
    if "DJANGO_SECRET_KEY=" not in env_file.read_text():
        with env_file.open("a") as out:
            out.write(f"\nDJANGO_SECRET_KEY={secrets.token_urlsafe(50)}\n")
        print(f"{env_file.name}: added a new DJANGO_SECRET_KEY")
    else:
        print(f"{env_file.name}: kept as it is")
else:
    env_file.write_text(
        "# Made by `make` on first run. Never commit this file.\n"
        f"TENANT_ENCRYPTION_KEY={secrets.token_hex(32)}\n"
        f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}\n")
    env_file.chmod(0o600)
    print(f"{env_file.name}: written with a new TENANT_ENCRYPTION_KEY")
