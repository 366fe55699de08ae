# Everything runs from the project's own virtualenv; `make install` creates it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint format demo bench run

# Settings default to production; the tests, the demo and the benchmarks run in development
# mode (the development secret key, no HTTPS redirect).
test demo bench: export DJANGO_DEBUG = true

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: install
	$(BIN)/python -m demo

bench: install
	$(BIN)/python -m benchmarks

# The admin and GraphQL on http://127.0.0.1:8000/ in development mode. Without
# CELERY_BROKER_URL, jobs started there run on this process's background runner (config/background.py).
run: export DJANGO_DEBUG = true
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py runserver
