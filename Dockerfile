# One image for web, migrate, beat and the CPU worker; the GPU worker builds it with EXTRAS=gpu
# (vLLM, from pyproject's optional dependencies).
FROM python:3.11-slim

# Production settings, named: they refuse to start without SECRET_KEY and DJANGO_ALLOWED_HOSTS
# (and never serve debug pages); `docker run -e SECRET_KEY=... -e DJANGO_ALLOWED_HOSTS=...`.
ENV DJANGO_SETTINGS_MODULE=webapp.settings.production \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .

ARG EXTRAS=""
# Editable, so the extra's dependencies install without a second copy of the code in site-packages.
RUN if [ -n "$EXTRAS" ]; then pip install -e ".[${EXTRAS}]"; fi

# Production settings refuse to start without a secret and hosts; collectstatic needs neither,
# so throwaway values live only in this one build step, never in the image's environment.
RUN SECRET_KEY=collectstatic-only DJANGO_ALLOWED_HOSTS=localhost \
    CELERY_BROKER_URL=redis://localhost:6379/0 \
    python manage.py collectstatic --noinput -v0

RUN useradd --create-home --uid 1000 tandem \
    && mkdir -p /artifacts /media /app/var \
    && chown tandem:tandem /artifacts /media /app/var
USER tandem

EXPOSE 8000
# Threaded workers, timeouts and the bind address: webapp/gunicorn_conf.py (GUNICORN_* variables).
CMD ["gunicorn", "-c", "webapp/gunicorn_conf.py", "webapp.wsgi"]
