"""The environment settings are read from: process variables first, then `.env` if present."""
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def embedded_pg_dir() -> Path:
    """The data folder of the embedded PostgreSQL cluster (used when DATABASE_URL is unset)."""
    return Path(env("EMBEDDED_PG_DIR", default=str(BASE_DIR / ".pgdata")))


def app_database_name() -> str:
    """The application's database on the embedded cluster."""
    return env("APP_DATABASE_NAME", default="repairshop")
