"""`web_export --kind hallucination`: the judgements of a hallucination project, built in SQL.

As `web_export.build_data` does for pairs: valid rows matching the models, written set-based
with FK triggers off. Every prompt is one user question naming one of a few images stored through
the image service (`annotation.services.images.image_store`: real files and `Image` rows, linked
to the project), as the import would leave them. Judgement payloads are what the kind's validator
returns (choice, helpful_choice, spans inside the responses' texts, correction null) with the
agreement key as answer: "A", "B", "tie:A" (a tie decided by helpfulness) and "tie" (tied on
both questions: no preferred response, so no vision_pairs row).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, vision_data
from bench.vision_data import _FILLER

# Rows each shape exports, as a predicate on the judgement (the export's own filters).
EXPECTED_ROWS = {
    "vision_pairs": "answer IN ('A', 'B', 'tie:A', 'tie:B')",
    "llava_rlhf": "answer IN ('A', 'B', 'tie:A', 'tie:B')",
    "spans": "true",
}

STORE_IMAGES_CODE = r"""
import io, json
from PIL import Image as Pil, ImageDraw
from annotation.models import Project
from annotation.services.images import image_store
project = Project.objects.get(pk=PROJECT)
shas = []
for i in range(COUNT):
    img = Pil.new("RGB", (128, 96), ((i * 97) % 256, (i * 57 + 80) % 256, (i * 23 + 160) % 256))
    ImageDraw.Draw(img).text((8, 32), f"image {i}", fill=(0, 0, 0))
    out = io.BytesIO()
    img.save(out, format="PNG" if i % 2 == 0 else "JPEG")
    shas.append(image_store(project=project, data=out.getvalue(), name=f"bench-{i}").sha256)
print("RESULT " + json.dumps(shas))
"""


def setup(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, Any], Path]:
    """The server's environment (images in a media root of this run only: the caller removes
    it), the staff, the annotators and the project of `args.kind`."""
    media = Path(tempfile.mkdtemp(prefix="tandem-web-export-media-"))
    env = common.server_env(DJANGO_MEDIA_ROOT=str(media))
    made = vision_data.setup_kinds(
        env=env, kinds=[args.kind], annotators=args.annotators, overlap=args.overlap
    )
    made["project"] = made["projects"][args.kind]
    return env, made, media


def build(
    args: argparse.Namespace, env: dict[str, str], project: int, ids: list[int], shape: str
) -> dict[str, Any]:
    """Stores `args.images` pictures, then writes the judgements (see build_data); with
    --image-per-task, each prompt names an image row of its own instead (rows only, built in SQL:
    the row export reads no image file)."""
    shas = [] if args.image_per_task else store_images(env, project, args.images)
    return build_data(project, ids, args.judgements, args.overlap, args.tie_every, shas, shape)


def store_images(env: dict[str, str], project: int, count: int) -> list[str]:
    """Stores `count` distinct pictures for the project through the image service."""
    code = STORE_IMAGES_CODE.replace("PROJECT", str(project)).replace("COUNT", str(count))
    return common.django_shell(code, env=env)


def _span(response: int, text: str, word: str, category: str) -> dict[str, Any]:
    start = text.index(word)
    return {"response": response, "start": start, "end": start + len(word), "category": category}


def payloads() -> dict[str, str]:
    """The four payloads, by answer: spans found in the fixed lead of the responses' texts (the
    same in every task), so each is valid for every task."""
    spans_a = [_span(0, _FILLER, "coloured square", "attribute")]
    # Sorted by (response, start), as the validator stores them.
    spans_b = [_span(1, _FILLER, "number", "count"), _span(1, _FILLER, "bar", "object")]
    out = {
        "A": {"choice": "A", "helpful_choice": None, "spans": spans_b, "correction": None},
        "B": {"choice": "B", "helpful_choice": None, "spans": spans_a, "correction": None},
        "tie:A": {"choice": "tie", "helpful_choice": "A", "spans": [], "correction": None},
        "tie": {"choice": "tie", "helpful_choice": "tie", "spans": [], "correction": None},
    }
    return {k: json.dumps(v) for k, v in out.items()}


def build_data(
    project: int,
    annotator_ids: list[int],
    judgements: int,
    overlap: int,
    tie_every: int,
    shas: list[str],
    shape: str,
) -> dict[str, Any]:
    """Writes `judgements` hallucination judgements on judgements/overlap tasks with set-based SQL;
    the prompts name `shas` round-robin, or with none an image row each."""
    if judgements % overlap:
        raise SystemExit("--judgements must be a multiple of --overlap")
    tasks = judgements // overlap
    n_ann = len(annotator_ids)
    if n_ann < overlap:
        raise SystemExit("need at least `overlap` annotators")
    first = annotator_ids[0]
    if annotator_ids != list(range(first, first + n_ann)):
        raise SystemExit("expected consecutive annotator ids")
    t0 = time.perf_counter()
    steps: dict[str, float] = {}
    p = payloads()
    with common.pg_connect(autocommit=True) as conn:
        xid = int(conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0])
        seq_values = max(1, min(judgements, xid - 100))
        params = {
            "p": project,
            "t": tasks,
            "j": judgements,
            "o": overlap,
            "a": n_ann,
            "u0": first,
            "s": seq_values,
            "tie": tie_every,
            "shas": shas,
            "k": len(shas),
            "filler": _FILLER,
            "pa": p["A"],
            "pb": p["B"],
            "pta": p["tie:A"],
            "pt": p["tie"],
        }
        statements = {
            # One image row per prompt when no stored images are given: 64 hex from two md5s.
            "images": """
                INSERT INTO annotation_image (sha256, format, width, height, size_bytes, file,
                                              thumbnail, created_at)
                SELECT md5('bench' || g) || md5('image' || g), 'png', 128, 96, 2000,
                       'images/bench/' || g || '.png', 'images/bench/' || g || '.png', now()
                FROM generate_series(1, %(t)s) g WHERE %(k)s = 0""",
            "image_links": """
                INSERT INTO annotation_projectimage (project_id, image_id, created_at)
                SELECT %(p)s, md5('bench' || g) || md5('image' || g), now()
                FROM generate_series(1, %(t)s) g WHERE %(k)s = 0""",
            "prompts": """
                INSERT INTO annotation_prompt (id, project_id, messages, external_id, metadata, image,
                                               context, split, created_at)
                SELECT g, %(p)s,
                       jsonb_build_array(jsonb_build_object('role', 'user', 'content',
                           'Question ' || g || ': which number is drawn in this picture?')),
                       'vision-' || g, jsonb_build_object('source', 'bench', 'n', g),
                       'sha256:' || CASE WHEN %(k)s = 0 THEN md5('bench' || g) || md5('image' || g)
                                         ELSE (%(shas)s::text[])[1 + g %% GREATEST(%(k)s, 1)] END,
                       jsonb_build_object('captions', jsonb_build_array(
                           'A coloured card showing the number ' || g || '.')),
                       'train', now()
                FROM generate_series(1, %(t)s) g""",
            "responses": """
                INSERT INTO annotation_response (id, prompt_id, text, model_name, created_at)
                SELECT r, (r + 1) / 2,
                       CASE WHEN r %% 2 = 1
                            THEN %(filler)s || 'The number on it is ' || ((r + 1) / 2) || '.'
                            ELSE %(filler)s || 'The number on it is ' || ((r + 1) / 2 + 1)
                                 || ', and there is a red circle.' END,
                       CASE WHEN r %% 2 = 0 THEN 'policy-r0' ELSE '' END, now()
                FROM generate_series(1, 2 * %(t)s) r""",
            "tasks": """
                INSERT INTO annotation_task (id, project_id, prompt_id, kind, round, priority, overlap,
                    judgement_count, live_leases, next_lease_expiry, is_complete, is_gold, gold_answer,
                    purpose, created_at)
                SELECT g, %(p)s, g, 'hallucination', 0, 0.0, %(o)s, %(o)s, 0, NULL, true, false, NULL,
                       'label', now()
                FROM generate_series(1, %(t)s) g""",
            "task_slots": """
                INSERT INTO annotation_taskresponse (task_id, response_id, position)
                SELECT (r + 1) / 2, r, (r + 1) %% 2 FROM generate_series(1, 2 * %(t)s) r""",
            "assignments": """
                INSERT INTO annotation_assignment (id, task_id, annotator_id, project_id, status,
                                                   leased_at, expires_at, finished_at)
                SELECT j, (j - 1) / %(o)s + 1, %(u0)s + (((j - 1) / %(o)s) + (j - 1) %% %(o)s) %% %(a)s,
                       %(p)s, 'submitted', now() - interval '1 hour', now() + interval '1 hour',
                       now() - interval '30 minutes'
                FROM generate_series(1, %(j)s) j""",
            "judgements": """
                INSERT INTO annotation_judgement (id, task_id, assignment_id, annotator_id, project_id,
                    kind, payload, answer, rationale, time_spent_ms, idempotency_key, late, commit_seq,
                    created_at)
                SELECT j, (j - 1) / %(o)s + 1, j,
                       %(u0)s + (((j - 1) / %(o)s) + (j - 1) %% %(o)s) %% %(a)s, %(p)s, 'hallucination',
                       CASE WHEN j %% %(tie)s = 0 THEN %(pt)s::jsonb
                            WHEN j %% 7 = 0 THEN %(pta)s::jsonb
                            WHEN j %% 3 = 0 THEN %(pb)s::jsonb
                            ELSE %(pa)s::jsonb END,
                       CASE WHEN j %% %(tie)s = 0 THEN 'tie' WHEN j %% 7 = 0 THEN 'tie:A'
                            WHEN j %% 3 = 0 THEN 'B' ELSE 'A' END,
                       '', 4000 + j %% 9000, 'bench-' || j, false,
                       1 + ((j - 1)::bigint * %(s)s) / %(j)s,
                       now() - interval '30 minutes'
                FROM generate_series(1, %(j)s) j""",
            "answer_counts": """
                UPDATE annotation_task t SET answer_counts = c.counts
                FROM (SELECT task_id, jsonb_object_agg(answer, n) AS counts
                      FROM (SELECT task_id, answer, count(*) AS n FROM annotation_judgement
                            WHERE project_id = %(p)s GROUP BY 1, 2) per_answer
                      GROUP BY task_id) c
                WHERE t.id = c.task_id""",
        }
        conn.execute("SET session_replication_role = replica")  # FK triggers off for the bulk load
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        for name, sql in statements.items():
            s0 = time.perf_counter()
            conn.execute(sql, params)
            steps[name] = round(time.perf_counter() - s0, 2)
        conn.execute("SET session_replication_role = origin")
        tables = ("prompt", "response", "task", "taskresponse", "assignment", "judgement")
        for table_name in tables:
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('annotation_{table_name}', 'id'), "
                f"(SELECT max(id) FROM annotation_{table_name}))"
            )
        s0 = time.perf_counter()
        for table_name in (*tables, "image", "projectimage"):
            conn.execute(f"VACUUM ANALYZE annotation_{table_name}")
        steps["vacuum_analyze"] = round(time.perf_counter() - s0, 2)
        expected = conn.execute(
            "SELECT count(*) FROM annotation_judgement WHERE project_id = %s AND "
            + EXPECTED_ROWS[shape],
            [project],
        ).fetchone()[0]
        answers = dict(
            conn.execute(
                "SELECT answer, count(*) FROM annotation_judgement WHERE project_id = %s "
                "GROUP BY 1 ORDER BY 1",
                [project],
            ).fetchall()
        )
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {
        "kind": "hallucination",
        "judgements": sum(answers.values()),
        # "decisive": the rows the shape exports (web_export's exactness check reads this name)
        "decisive": expected,
        "answers": answers,
        "images": len(shas) or tasks,
        "image_per_task": not shas,
        "tasks": tasks,
        "overlap": overlap,
        "annotators": n_ann,
        "commit_seq_values": seq_values,
        "seconds": round(time.perf_counter() - t0, 1),
        "steps_s": steps,
        "db_mb": round(size / 1e6),
    }
