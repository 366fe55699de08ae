# The image of every process in compose.yaml: the project with its own .venv, made as
# `make install` makes it, so the Procfile's lines run in the container unchanged.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app

COPY requirements.txt .
RUN python -m venv .venv && .venv/bin/pip install --no-cache-dir -r requirements.txt

COPY . .
# Static files for a proxy (or a CDN) to serve from var/static; settings need no secret here.
RUN DJANGO_DEBUG=true .venv/bin/python manage.py collectstatic --noinput \
    && useradd --system --no-create-home app \
    && chown -R app var
USER app

# compose.yaml gives each service its command: its line of the Procfile.
EXPOSE 8000 5555
