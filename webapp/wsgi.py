import os

from django.core.wsgi import get_wsgi_application

# Production unless another module is asked for by name: a forgotten variable must never
# serve debug pages. `make demo` asks for webapp.settings.demo, developers for .dev.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.production")
application = get_wsgi_application()
