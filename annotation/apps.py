from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "annotation"
    verbose_name = "Annotation"

    def ready(self) -> None:
        # Every kind module registers its kind at import: load them all before the first request,
        # so the registry the cores read is complete.
        from . import kinds

        kinds.load()
