"""Celery work as services ask for it: by task name, so no service imports `annotation.tasks`.

`annotation/tasks.py` imports services (inside each task function) to run them; if services
imported the tasks back to enqueue them, the two would form an import cycle. Sending by name keeps
the dependency one-way (STYLE.md, HackSoft's advice). The names below are the ones `tasks.py`
registers; tests/annotation/test_layering.py checks that each one resolves to a registered task.
"""

from typing import Any

from celery import current_app  # the app Django's settings configured, in web and worker alike
from django.conf import settings

# Kept short so that a request (or the commit of one) hears within seconds that the broker is down.
_BROKER_CONNECT_SECONDS = 3
_BROKER_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}

RUN_IMPORT = "annotation.tasks.run_import"
RUN_ROUND_STAGE = "annotation.tasks.run_round_stage"
RUN_OUTCOMES = "annotation.tasks.run_outcomes"


def enqueue(task_name: str, *args: Any, queue: str | None = None, **options: Any) -> None:
    """Sends one message for `task_name` with positional `args`; raises what the broker raises.

    `queue` overrides the route in CELERY_TASK_ROUTES (the loop sends GPU projects' stages to
    "gpu"); `options` go to `send_task` as they are (a connection, a retry policy).
    """
    if queue is not None:
        options["queue"] = queue
    current_app.send_task(task_name, args=list(args), **options)


def enqueue_promptly(task_name: str, *args: Any, queue: str | None = None) -> None:
    """`enqueue` on a fresh broker connection with a short timeout: raises within seconds when
    the broker is down, where the shared producer pool would keep retrying for a long time."""
    with current_app.connection_for_write(
        url=settings.CELERY_BROKER_URL, connect_timeout=_BROKER_CONNECT_SECONDS
    ) as conn:
        enqueue(
            task_name, *args, queue=queue, connection=conn, retry=True, retry_policy=_BROKER_RETRY
        )
