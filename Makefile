# The two commands of the README: `make demo` and `make test`. Both set everything up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
SEED_TENANTS ?= 20
SEED_LARGEST ?= 200000
TEST_WORKERS ?= 2

.PHONY: install env db demo test bench stop-db

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

install: $(VENV)/.installed

# A fresh encryption key in a git-ignored .env, only when there is none.
env: install
	@$(PY) scripts/ensure_env.py

db: env
	@$(PY) -m project.embedded_pg start

demo: db
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo --if-empty --tenants $(SEED_TENANTS) --largest $(SEED_LARGEST)
	$(PY) manage.py demo_move
	$(PY) manage.py ensure_demo_admin
	$(PY) manage.py collectstatic --noinput --verbosity 0
	@echo "Admin: http://127.0.0.1:$(PORT)/admin/  (the login is printed above)"
	$(PY) scripts/serve.py --port $(PORT)

test: db
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

bench: db
	$(PY) manage.py migrate --noinput
	$(PY) manage.py bench_migration $(BENCH_ARGS)

stop-db:
	-$(PY) -m project.embedded_pg stop
