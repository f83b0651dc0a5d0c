"""Image import benchmark: a zip of 10,000 image tasks through the REST import of a production-like
Tandem, end to end, with the Celery worker's memory alongside the zip's size.

What it does, all on 127.0.0.1 and bounded in time:
1. drops and recreates the database ``tandem_bench`` (``BENCH_DB``), migrates it, creates a staff
   user; images go to a media root of this run only (a temporary folder), so no file is found
   from an earlier run;
2. starts ``gunicorn webapp.wsgi`` (production settings, 2 sync workers);
3. for each size (1,000 then 10,000 tasks by default): writes the zip into a temporary folder,
   one entry at a time (``tasks.jsonl`` at its root, then one distinct 128x96 picture per task,
   PNG and JPEG alternating, drawn with Pillow and named by relative path in the lines), creates a
   hallucination project over REST, starts a FRESH Celery worker (so its peak RSS, VmHWM, is this
   import's), POSTs the zip streamed from disk to ``/api/v1/projects/{id}/imports`` (above
   TANDEM_IMPORT_INLINE_BYTES the server answers 202 and the worker runs the job), polls the job
   until done and samples the worker's and gunicorn's RSS all along;
4. checks the result in the database: as many tasks as lines, each prompt naming a stored image,
   as many distinct images as tasks, every image linked to the project.

Figures: tasks/s from the first byte sent to the job done; the worker's peak RSS and its growth
over the idle worker, against the zip's size (an archive held whole would grow it by at least
the zip's size; streamed, it grows with the lines' parsed rows only).

    .venv/bin/python -m bench.image_import [--tasks 1000,10000] [--save-result]
    .venv/bin/python -m bench.image_import --smoke    # seconds: 200 tasks, job path
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, vision_data  # noqa: E402
from bench.common import Server, table  # noqa: E402

# 1,000 and 10,000 tasks of small pictures for tasks/s, then 1,000 tasks of photo-sized JPEGs
# (~90 KB each): the same lines in a zip about 40 times larger, which shows whether the worker's
# memory follows the lines or the archive's bytes.
TASKS = "1000,10000,1000:640x480:jpeg"
SMOKE = ["--tasks", "200,50:640x480:jpeg", "--import-path", "job", "--max-seconds", "150"]
README_SETUP = {"tasks": TASKS, "image": "128x96", "formats": "mixed"}


class PeakSampler(threading.Thread):
    """RSS of a few processes every `every` seconds: the peak of each and a short timeline."""

    def __init__(self, pids: dict[str, list[int]], every: float = 0.1):
        super().__init__(daemon=True)
        self.pids, self.every = pids, every
        self.peak_kb: dict[str, int] = {name: 0 for name in pids}
        self.timeline: list[tuple[float, int]] = []  # (s, worker kB)
        self.stop_evt = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        while not self.stop_evt.is_set():
            for name, pids in self.pids.items():
                kb = max((common.proc_status(p).get("VmRSS", 0) for p in pids), default=0)
                self.peak_kb[name] = max(self.peak_kb[name], kb)
                if name == "celery_worker":
                    self.timeline.append((round(time.perf_counter() - self.t0, 2), kb))
            self.stop_evt.wait(self.every)

    def stop(self) -> None:
        self.stop_evt.set()
        self.join(5)


def _wait_ready(worker: common.CeleryWorker, timeout: float = 60) -> float:
    """Seconds until the worker logs that it is ready (its imports done, its memory settled)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if worker.proc is not None and worker.proc.poll() is not None:
            raise RuntimeError(f"celery worker exited early; see {worker.log_path}")
        try:
            if b"ready." in worker.log_path.read_bytes():
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"celery worker not ready after {timeout:.0f} s; see {worker.log_path}")


def post_zip(port: int, token: str, project: int, path: Path, timeout: float) -> dict[str, Any]:
    """POSTs the zip streamed from disk and polls the job: seconds from the first byte to done."""
    client = common.Client(port, token, timeout=timeout)
    size = path.stat().st_size
    headers = dict(client.headers)
    headers.update({"Content-Type": "application/zip", "Content-Length": str(size)})
    t0 = time.perf_counter()
    with path.open("rb") as body:
        client.conn.request(
            "POST", f"/api/v1/projects/{project}/imports", body=body, headers=headers
        )
        resp = client.conn.getresponse()
        raw = resp.read()
    client.close()
    request_s = time.perf_counter() - t0
    payload = json.loads(raw)
    status = resp.status
    path_taken = "inline" if status == 201 else "job"
    polls = 0
    if status == 202:
        poller = common.Client(port, token, timeout=60)
        while payload.get("status") not in ("done", "failed"):
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"import job not done after {timeout:.0f} s: {payload}")
            time.sleep(0.1)
            polls += 1
            status, payload = poller.call("GET", f"/api/v1/imports/{payload['import_id']}")
            if status != 200:
                raise RuntimeError(f"import job status: {status} {str(payload)[:500]}")
        poller.close()
    seconds = time.perf_counter() - t0
    if payload.get("status") != "done":
        raise RuntimeError(f"import failed: {status} {str(payload)[:800]}")
    return {
        "path": path_taken,
        "request_s": round(request_s, 3),
        "seconds": round(seconds, 3),
        "created": payload.get("created"),
        "polls": polls,
    }


def db_checks(project: int) -> dict[str, int]:
    with common.pg_connect() as conn:

        def one(sql: str) -> int:
            return conn.execute(sql, {"p": project}).fetchone()[0]

        return {
            "tasks": one("SELECT count(*) FROM annotation_task WHERE project_id = %(p)s"),
            "prompts_with_image": one(
                "SELECT count(*) FROM annotation_prompt WHERE project_id = %(p)s AND image <> ''"
            ),
            "prompts_image_missing": one(
                "SELECT count(*) FROM annotation_prompt p LEFT JOIN annotation_image i "
                "ON i.sha256 = substr(p.image, 8) WHERE p.project_id = %(p)s AND i.sha256 IS NULL"
            ),
            "distinct_images": one(
                "SELECT count(DISTINCT image) FROM annotation_prompt WHERE project_id = %(p)s"
            ),
            "images_linked": one(
                "SELECT count(*) FROM annotation_projectimage WHERE project_id = %(p)s"
            ),
        }


def sizes_of(spec: str, image_size: str, formats: str) -> list[tuple[int, tuple[int, int], str]]:
    """'1000,10000,1000:640x480:jpeg' -> [(tasks, (w, h), formats)]; the pictures' size and formats
    default to --image-size and --image-formats."""
    out = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        n, _, rest = item.partition(":")
        size, _, fmt = rest.partition(":")
        w, _, h = (size or image_size).partition("x")
        fmt = fmt or formats
        if fmt not in ("png", "jpeg", "mixed"):
            raise SystemExit(f"--tasks {item}: formats must be png, jpeg or mixed")
        out.append((int(n), (int(w), int(h)), fmt))
    return out


def import_one(
    args: argparse.Namespace,
    env: dict[str, str],
    server: Server,
    staff: str,
    spec: tuple[int, tuple[int, int], str],
    tmp: Path,
) -> dict[str, Any]:
    n, size, formats = spec
    zip_path = tmp / f"tasks-{n}.zip"
    t0 = time.perf_counter()
    built = vision_data.write_zip(zip_path, n, size=size, formats=formats)
    built["build_s"] = round(time.perf_counter() - t0, 2)
    print(
        f"[image_import] {n:,} tasks: zip {built['zip_bytes'] / 1e6:.1f} MB built in "
        f"{built['build_s']} s",
        flush=True,
    )
    status, body = common.Client(server.port, staff).call(
        "POST", "/api/v1/projects", {"name": f"images-{n}", "kind": "hallucination"}
    )
    if status != 201:
        raise RuntimeError(f"project create: {status} {body}")
    project = body["id"]
    log = common.REPO / "bench" / "out" / f"image_import-worker-{common.BENCH_DB}.log"
    worker = common.CeleryWorker(env=env, log_path=log)
    with worker:
        assert worker.proc is not None
        ready_s = _wait_ready(worker)
        time.sleep(0.5)
        pid = worker.proc.pid
        baseline = common.proc_status(pid)
        sampler = PeakSampler({"celery_worker": [pid], "gunicorn": server.worker_pids()})
        sampler.start()
        with common.CpuMeter(server.proc.pid, worker_pid=pid) as cpu:
            result = post_zip(server.port, staff, project, zip_path, timeout=args.import_timeout)
        sampler.stop()
        final = common.proc_status(pid)
    zip_path.unlink(missing_ok=True)
    checks = db_checks(project)
    mb = 1024
    peak_mb = final.get("VmHWM", 0) / mb
    base_mb = baseline.get("VmRSS", 0) / mb
    growth_mb = peak_mb - base_mb
    zip_mb = built["zip_bytes"] / 1e6 / 1.048576  # MiB, as RSS
    step = max(1, len(sampler.timeline) // 12)
    return {
        "tasks": n,
        "project": project,
        "zip": built,
        "import": result | {"tasks_per_s": round(n / result["seconds"], 1)},
        "worker_ready_s": round(ready_s, 2),
        "memory": {
            "worker_baseline_rss_mb": round(base_mb, 1),
            "worker_peak_rss_mb_vmhwm": round(peak_mb, 1),
            "worker_growth_mb": round(growth_mb, 1),
            "zip_mib": round(zip_mb, 1),
            "growth_over_zip": round(growth_mb / zip_mb, 2) if zip_mb else None,
            "worker_growth_kb_per_task": round(growth_mb * mb / n, 2),
            "gunicorn_worker_peak_rss_mb": round(sampler.peak_kb["gunicorn"] / mb, 1),
            "worker_timeline_mb": [(t, round(kb / mb, 1)) for t, kb in sampler.timeline[::step]],
        },
        "cpu_cores_used": cpu.result,
        "db": checks,
        "exact": checks["tasks"] == n
        and checks["prompts_with_image"] == n
        and checks["prompts_image_missing"] == 0
        and checks["distinct_images"] == n
        and checks["images_linked"] == n,
    }


def run(args: argparse.Namespace, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fills `result` as it goes, so a caller that hits a time cap still has the finished sizes."""
    result = result if result is not None else {}
    sizes = sizes_of(args.tasks, args.image_size, args.image_formats)
    result |= {"setup": setup_of(args), "imports": []}
    tmp = Path(tempfile.mkdtemp(prefix="tandem-image-import-"))
    try:
        common.fresh_db()
        extra = {"CELERY_BROKER_URL": args.broker, "DJANGO_MEDIA_ROOT": str(tmp / "media")}
        if args.import_path == "job":
            extra["TANDEM_IMPORT_INLINE_BYTES"] = "0"
        env = common.server_env(**extra)
        setup = vision_data.setup_kinds(env=env, kinds=[], annotators=0)
        with Server(env=env, workers=2, worker_class="sync", timeout=300) as server:
            staff = common.token_for(server.port, setup["staff"])
            for spec in sizes:
                r = import_one(args, env, server, staff, spec, tmp)
                result["imports"].append(r)
                m, n = r["memory"], r["tasks"]
                print(
                    f"[image_import] {n:,} tasks ({r['zip']['image_size']}) in {r['import']['seconds']} s "
                    f"({r['import']['tasks_per_s']} tasks/s, {r['import']['path']}); worker peak "
                    f"{m['worker_peak_rss_mb_vmhwm']} MB (+{m['worker_growth_mb']} MB) for a "
                    f"{m['zip_mib']} MiB zip; exact {r['exact']}",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep_db:
            common.drop_db()
    return result


def setup_of(args: argparse.Namespace) -> dict[str, Any]:
    setup = {
        "tasks": args.tasks,
        "data": f"zip: tasks.jsonl (deflated) + one distinct {args.image_size} picture per task "
        f"({args.image_formats}: even PNG, odd JPEG when mixed; stored), drawn by "
        "bench.vision_data; lines name images by relative path; 2 responses of ~140 characters",
        "import_path": args.import_path,
        "server": "gunicorn 2 sync workers; a fresh celery -A webapp worker -Q cpu -P solo per size",
        "settings": "webapp.settings.production, media root a temporary folder of this run",
        "database": f"Postgres, fresh database {common.BENCH_DB}",
    }
    diff = []
    if args.tasks != README_SETUP["tasks"]:
        diff.append(f"sizes {args.tasks}, not {README_SETUP['tasks']}")
    if args.image_size != README_SETUP["image"] or args.image_formats != README_SETUP["formats"]:
        diff.append(f"images {args.image_size} {args.image_formats}")
    if args.import_path == "job":
        diff.append("TANDEM_IMPORT_INLINE_BYTES lowered to 0 (job path for any size)")
    setup["differences_from_readme"] = diff
    return setup


def report(result: dict[str, Any]) -> str:
    s = result.get("setup") or {}
    lines = [
        f"Setup: {s.get('data')}; {s.get('server')}; {s.get('settings')}; {s.get('database')}",
        "Differs from the README's setup: " + "; ".join(s["differences_from_readme"])
        if s.get("differences_from_readme")
        else "Same setup as the README states.",
        "",
    ]
    if result.get("error"):
        lines.append(f"!! INCOMPLETE: {result['error']}")
    rows = []
    for r in result.get("imports", []):
        m, i = r["memory"], r["import"]
        rows.append(
            [
                r["tasks"],
                f"{r['zip']['image_size']} {r['zip']['image_formats']}",
                round(r["zip"]["image_bytes"] / r["tasks"] / 1024, 1),
                m["zip_mib"],
                i["path"],
                i["request_s"],
                i["seconds"],
                i["tasks_per_s"],
                m["worker_baseline_rss_mb"],
                m["worker_peak_rss_mb_vmhwm"],
                m["worker_growth_mb"],
                m["growth_over_zip"],
                m["worker_growth_kb_per_task"],
                m["gunicorn_worker_peak_rss_mb"],
                "yes" if r["exact"] else "NO",
            ]
        )
    lines.append(
        table(
            [
                "tasks",
                "pictures",
                "KiB each",
                "zip MiB",
                "path",
                "upload s",
                "end to end s",
                "tasks/s",
                "worker idle MB",
                "worker peak MB",
                "growth MB",
                "growth / zip",
                "kB per task",
                "gunicorn peak MB",
                "exact",
            ],
            rows,
            title="Zip import of image tasks (end to end: first byte sent -> job done)",
        )
    )
    for r in result.get("imports", []):
        c = r.get("cpu_cores_used") or {}
        lines.append(
            f"  {r['tasks']:,} tasks: CPU (cores) gunicorn {c.get('gunicorn')}, celery worker "
            f"{c.get('celery_worker')}, postgres {c.get('postgres_bench')}, OTHER {c.get('other')}; "
            "worker RSS over time (s, MB): "
            + ", ".join(f"{t}:{mb}" for t, mb in r["memory"]["worker_timeline_mb"])
        )
    lines += ["", comparison(result)]
    return "\n".join(lines)


def comparison(result: dict[str, Any]) -> str:
    """tasks/s at the most tasks; whether the worker's memory follows the archive's bytes (it must
    not: streamed, never held whole) or its lines; exactness."""
    imports = result.get("imports", [])
    if not imports:
        return "no import finished"
    most = max(imports, key=lambda r: (r["tasks"], -r["zip"]["zip_bytes"]))
    heaviest = max(imports, key=lambda r: r["zip"]["zip_bytes"])
    mh = heaviest["memory"]
    rows = [
        [
            f"tasks/s ({most['tasks']:,} tasks, {most['zip']['image_size']})",
            most["import"]["tasks_per_s"],
            "-",
            "-",
        ],
        [
            f"worker peak ({most['tasks']:,} tasks)",
            f"{most['memory']['worker_peak_rss_mb_vmhwm']} MB "
            f"(+{most['memory']['worker_growth_mb']} MB)",
            "-",
            "-",
        ],
        [
            f"worker growth vs zip size ({heaviest['tasks']:,} tasks, "
            f"{heaviest['zip']['image_size']})",
            f"{mh['worker_growth_mb']} MB vs {mh['zip_mib']} MiB",
            "below the zip's size (streamed, never held whole)",
            common.verdict(mh["worker_growth_mb"] < mh["zip_mib"]),
        ],
    ]
    # The same number of lines in a heavier zip: what the extra bytes cost the worker.
    twin = next(
        (
            r
            for r in imports
            if r["tasks"] == heaviest["tasks"]
            and r["zip"]["zip_bytes"] < heaviest["zip"]["zip_bytes"]
        ),
        None,
    )
    if twin is not None:
        extra_zip = mh["zip_mib"] - twin["memory"]["zip_mib"]
        extra_growth = mh["worker_growth_mb"] - twin["memory"]["worker_growth_mb"]
        rows.append(
            [
                f"{heaviest['tasks']:,} tasks: {mh['zip_mib']} vs {twin['memory']['zip_mib']} MiB zip",
                f"+{extra_zip:.1f} MiB of zip -> {extra_growth:+.1f} MB of worker growth",
                "independent of the bytes",
                common.verdict(extra_growth < 0.25 * extra_zip),
            ]
        )
    exact = all(r["exact"] for r in imports)
    rows.append(
        ["exact (tasks, images, links)", "yes" if exact else "NO", "exact", common.verdict(exact)]
    )
    return table(["figure", "Tandem (this run)", "target", "verdict"], rows, title="This run:")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.image_import",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--tasks",
        default=TASKS,
        help="comma-separated imports, each N[:WxH[:png|jpeg|mixed]] (default %(default)s)",
    )
    p.add_argument("--image-size", default="128x96", help="WxH of each picture (default 128x96)")
    p.add_argument("--image-formats", choices=["png", "jpeg", "mixed"], default="mixed")
    p.add_argument(
        "--import-path",
        choices=["auto", "job"],
        default="auto",
        help="auto: as production (a zip over 2 MiB runs as a Celery job); job: even a small zip",
    )
    p.add_argument("--import-timeout", type=float, default=400, help="give up on one import")
    p.add_argument("--broker", default=common.BENCH_BROKER, help="Redis database (flushed first)")
    p.add_argument("--keep-db", action="store_true", help="leave the bench database in place")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--max-seconds", type=float, default=540, help="hard cap for the whole run")
    p.add_argument("--smoke", action="store_true", help="seconds: " + " ".join(SMOKE))
    common.add_record_args(p)
    return p


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """The arguments, with --smoke expanded into its sizes (later flags still win)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    effective = (SMOKE + argv) if "--smoke" in argv else argv
    return parser().parse_args(effective), effective


def main(argv: list[str] | None = None) -> int:
    args, effective = parse(argv)
    result: dict[str, Any] = {}
    with common.RunMeter(db=common.BENCH_DB) as meter:
        try:
            with common.deadline_guard(args.max_seconds, "image_import"):
                run(args, result)
        except TimeoutError as exc:
            result["error"] = str(exc)
            print(f"!! {exc}: printing the sizes that finished", flush=True)
            common.drop_db()
    result = common.record(
        "image_import",
        effective,
        meter,
        result,
        json_path=args.json,
        save=args.save_result,
        smoke=args.smoke,
    )
    print()
    print(common.provenance_header(result))
    print(report(result))
    return 1 if result.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
