import os

from celery import Celery

# Production unless another module is asked for by name: a forgotten variable must never
# serve debug pages. `make demo` asks for webapp.settings.demo, developers for .dev.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.production")

app = Celery("tandem")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
