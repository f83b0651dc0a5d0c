import pytest
import redis
from django.conf import settings

# Each test that stores images does so under a media root of its own.
from tests.annotation.image_support import media  # noqa: F401


@pytest.fixture
def broker():
    """The real Redis the tests' Celery app sends to (this run's own database number), emptied
    of the loop's queues before and after."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("cpu", "gpu")
    yield client
    client.delete("cpu", "gpu")
