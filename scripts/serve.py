"""Serve the admin with a django-q2 cluster beside it (what `make demo` ends with).

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
    args = parser.parse_args()
    python = sys.executable
    cluster = subprocess.Popen([python, "manage.py", "qcluster"], cwd=BASE)
    web = subprocess.Popen([python, "manage.py", "runserver", f"{args.host}:{args.port}", "--noreload"], cwd=BASE)
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
