"""Serve the app with gunicorn and a django-q2 cluster beside it (what `make demo` ends with).

gunicorn, not runserver: a production WSGI server (threaded workers, no autoreload, no
static-file view: WhiteNoise serves STATIC_ROOT, filled by `collectstatic`). More options
through GUNICORN_CMD_ARGS (e.g. "--workers 4"), which gunicorn reads itself.
Both run until Ctrl-C; if either stops, the other is stopped too."""
import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", default="8000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", default="2")
    args = parser.parse_args()
    python = sys.executable
    cluster = subprocess.Popen([python, "manage.py", "qcluster"], cwd=BASE)
    web = subprocess.Popen([python, "-m", "gunicorn", "project.wsgi:application", "--bind", f"{args.host}:{args.port}",
                            "--workers", args.workers, "--worker-class", "gthread", "--threads", "4",
                            "--timeout", "300", "--access-logfile", "-", "--no-control-socket"], cwd=BASE)
    children = [cluster, web]

    def stop(*_):
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()

    signal.signal(signal.SIGTERM, stop)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    stop()
    return max(child.returncode or 0 for child in children)


if __name__ == "__main__":
    sys.exit(main())
