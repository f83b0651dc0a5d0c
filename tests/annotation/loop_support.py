"""Real Celery workers (and a throwaway Redis) for the loop's end-to-end and fault tests, and the
tiny models and drawn-scene project of the multimodal (hallucination) loop's tests."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], object], *, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def celery_worker(
    *,
    artifacts: Path,
    broker: str,
    log: Path,
    stale_seconds: int = 8,
    tick_seconds: float = 1.0,
    media: Path | None = None,
):
    """A worker process with embedded beat on the test database, in its own process group.

    `media`: the test's media root (where its images are stored), for stages that open images.
    Yields the Popen; leaving the block (or the test failing) kills the whole group.
    """
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "webapp.settings.test",
        "TEST_DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{connection.settings_dict['NAME']}",
        "TEST_CELERY_BROKER_URL": broker,
        "TANDEM_ARTIFACT_ROOT": str(artifacts),
        "TANDEM_MODEL_ROOTS": os.pathsep.join(str(p) for p in settings.TANDEM_MODEL_ROOTS),
        "TANDEM_LOOP_STALE_SECONDS": str(stale_seconds),
        "TANDEM_LOOP_TICK_SECONDS": str(tick_seconds),
        "PYTHONUNBUFFERED": "1",
        **({"DJANGO_MEDIA_ROOT": str(media)} if media is not None else {}),
    }
    schedule = log.with_suffix(".beat")
    handle = log.open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "webapp",
            "worker",
            "-B",
            "-s",
            str(schedule),
            "-Q",
            "cpu",
            "-P",
            "solo",
            "--loglevel=INFO",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        kill_group(process)
        handle.close()


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)


@contextmanager
def redis_server(port: int, workdir: Path):
    """A private Redis the test may stop and start, so the shared one is never touched."""
    process = start_redis(port, workdir)
    try:
        yield process
    finally:
        kill_group(process)


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick), never a fixed one that
    another test run on the machine may hold."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    """Starts a Redis on `port` and waits until it answers; fails if the Redis answering there is
    not this one (another run took the port in between), so a test never flushes or stops
    someone else's server."""
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    import redis

    client = redis.Redis(port=port)
    try:
        wait_for(lambda: _ours(client, process), timeout=20, what=f"our redis on port {port}")
    except AssertionError:
        kill_group(process)
        raise
    return process


def _ours(client, process: subprocess.Popen) -> bool:
    import redis

    if process.poll() is not None:
        raise AssertionError(f"redis-server exited with {process.returncode} (port taken?)")
    try:
        return client.info("server")["process_id"] == process.pid
    except redis.ConnectionError:
        return False


def queued_run_ids(client, queue: str = "cpu") -> list[int]:
    """The run ids of the Celery messages waiting in a queue (kombu's JSON envelope, base64 body)."""
    return sorted(_run_id(m) for m in client.lrange(queue, 0, -1))


def take_run_id(client, queue: str = "cpu") -> int | None:
    """Consumes the oldest message of a queue (kombu pushes left, pops right); its run id."""
    message = client.rpop(queue)
    return None if message is None else _run_id(message)


def _run_id(message: bytes) -> int:
    envelope = json.loads(message)
    assert envelope["headers"]["task"] == "annotation.tasks.run_round_stage", envelope["headers"]
    return json.loads(base64.b64decode(envelope["body"]))[0][0]


# --- the multimodal loop: tiny models and a project of drawn scenes -----------------------------


def tiny_vision_models(root: Path) -> tuple[Path, Path]:
    """(π_0, reward backbone) for the hallucination loop, built from configs under `root`.

    π_0 is training.vision.build_tiny_vlm (32 px images in 8 px patches: 16 image tokens); the
    Fact-RLHF reward reads text, so its backbone is a tiny Llama on the same scenes tokenizer.
    Both are untrained: the tests check the loop's plumbing and records, not learning (the package
    tests and bench/hallucination_loop.py do that).
    """
    from training.models import TinyModelConfig, build_tiny_causal_lm, build_tokenizer
    from training.vision import build_tiny_vlm, scenes_corpus

    corpus = scenes_corpus(n_scenes=40, seed=0)
    policy = build_tiny_vlm(root / "vlm-pi0", corpus=corpus, seed=0)
    tokenizer = build_tokenizer(corpus, vocab_size=600, model_max_length=512)
    reward = root / "fact-reward-backbone"
    build_tiny_causal_lm(
        tokenizer, TinyModelConfig(hidden_size=32, heads=2, intermediate=64), reward
    )
    return policy, reward


# Small enough that a round takes seconds on two cores.
TINY_VISION_LOOP: dict = {
    "samples_per_prompt": 4,
    "ensemble_members": 2,
    "reward": {"epochs": 2.0, "learning_rate": 3e-3, "batch_size": 8, "max_length": 160},
    "policy": {"epochs": 1.0, "learning_rate": 1e-3, "batch_size": 8, "max_length": 128},
    "generation": {"max_new_tokens": 12, "temperature": 1.0},
}


def hallucination_loop_project(
    *,
    creator,
    policy: Path,
    reward_backbone: Path,
    labelled: int = 24,
    prompts_per_round: int = 8,
    eval_prompts: int = 4,
    image_size: int = 64,
):
    """A hallucination project of drawn scenes with its loop on, made through the services.

    `labelled` round-0 tasks of two answers that really hallucinate (the demo's) on training
    prompts (round r generates for slice r of them, `prompts_per_round` long) and `eval_prompts`
    held-out prompts without answers. Every prompt carries its image, captions (context) and
    scene (metadata, for the SceneOracle). Precondition: no transaction is open (images are kept
    only once the rows that name them commit).
    """
    import io
    import json

    from django.db import transaction

    from annotation import services
    from annotation.demo_hallucination import demo_tasks
    from annotation.models import FeedbackKind, ImportJob
    from annotation.services.images import ImageBatch, image_store
    from annotation.services.rounds import loop_configure

    project = services.project_create(
        creator=creator,
        name="Shapes loop",
        kind=FeedbackKind.HALLUCINATION,
        overlap=1,
        lease_seconds=300,
    )
    drawn = demo_tasks(seed=3, tasks=labelled + eval_prompts, size=image_size)
    lines = []
    with ImageBatch(project=project) as batch:
        for index, task in enumerate(drawn):
            image = image_store(project=project, data=task["png"], name=f"{index}.png", batch=batch)
            line = {**task["line"], "image": f"sha256:{image.sha256}"}
            if index >= labelled:
                line.update(responses=[], split="eval")
            lines.append(line)
        body = "".join(json.dumps(line) + "\n" for line in lines).encode()
        with transaction.atomic():
            batch.write_rows()
            job = services.import_create(
                project=project, user=creator, stream=io.BytesIO(body), size=len(body)
            )
    assert job.status == ImportJob.Status.DONE, job.errors
    loop_configure(
        project=project,
        data={
            **TINY_VISION_LOOP,
            "enabled": True,
            "policy_model": str(policy),
            "reward_backbone": str(reward_backbone),
            "prompts_per_round": prompts_per_round,
            "eval_prompts": eval_prompts,
        },
    )
    return project
