"""The export bench's report: data, throughput, memory and exactness, this run against the
targets and, apart, the external reference figures with their source."""

from __future__ import annotations

from typing import Any

from bench import common
from bench.common import table
from bench.web_load_report import _ISSUE_2, external_sources

# External reference figures: other systems, measured by someone else on another day. They are
# printed apart from this run's figures, with where they come from, never as if measured here.
ANCHORS = {
    "label_studio": {
        "system": "Label Studio 1.23, export of all 100,000 tasks",
        "source": _ISSUE_2,
        "measured_on": "2026-11-27",
        "small": "3,000 labelled tasks in 3-4 s",
        "large_rows": 100_000,
        "large_s": 134.0,
        "large_rows_s": 100_000 / 134.0,
        "large_mem_mb": 1300,
        "first_byte": "nothing sent before the end",
    },
    "prototype": {
        "system": "bare prototype streamed export (server-side cursor, 1,000 rows per chunk, "
        "gunicorn, Postgres)",
        "source": _ISSUE_2,
        "measured_on": "2026-11-27",
        "rows": 1_000_000,
        "s": 12.0,
        "rows_s": 83_000,
        "first_byte_s": 0.1,
        "rss_mb": 93,
    },
}
TARGETS = {"rows_s": 50_000, "first_byte_s": 0.200}


def report(result: dict[str, Any]) -> str:
    e, m, x, d = result["export"], result["memory"], result["exactness"], result["data"]
    shape = result.get("shape", "pairs")
    exported = "decisive A/B" if shape == "pairs" else f"exported by {shape}"
    images = f", {d['images']:,} stored images" if d.get("images") else ""
    if d.get("image_per_task"):
        images = ", an image row per task"
    lines = [
        f"Data: {d['judgements']:,} {d['kind'] + ' ' if d.get('kind') else ''}judgements ({d['decisive']:,} "
        f"{exported}{images}) on {d['tasks']:,} tasks, overlap {d['overlap']}, built by SQL in "
        f"{d['seconds']} s; DB {d['db_mb']} MB",
        f"Server: {result['server']}",
        "",
    ]
    lines.append(
        table(
            [
                f"export ?shape={shape}",
                "rows",
                "seconds",
                "rows/s",
                "MB/s",
                "first byte ms",
                "peak RSS MB (VmHWM)",
                "baseline RSS MB",
                "RSS spread 2nd half MB",
                "RSS growth 2nd vs 1st half MB",
            ],
            [
                [
                    "Tandem",
                    e["rows"],
                    e["seconds"],
                    e["rows_per_s"],
                    e["mb_per_s"],
                    round(e["first_byte_s"] * 1000, 1) if e["first_byte_s"] is not None else None,
                    m["peak_rss_mb_vmhwm"],
                    m["baseline_rss_mb"],
                    m["rss_second_half_spread_mb"],
                    m["rss_growth_mb"],
                ]
            ],
        )
    )
    c = e.get("cpu_cores_used", {})
    lines.append(
        f"CPU during the export (cores of {c.get('cores')}): client {c.get('bench_client')}, gunicorn "
        f"{c.get('gunicorn')}, postgres {c.get('postgres_bench')}, OTHER processes on the box {c.get('other')}"
    )
    lines.append("RSS over time (s, MB): " + ", ".join(f"{t}:{mb}" for t, mb in m["timeline_mb"]))
    if not x["complete"]:
        lines.append(
            f"!! The export was CUT OFF after {e['seconds']} s (--max-export-s): figures cover the rows received."
        )
    lines.append(
        f"Exactness: rows {x['rows']:,} vs decisive judgements {x['decisive_judgements_in_db']:,} -> "
        f"{'EQUAL' if x['rows_equal_decisive'] else 'DIFFERENT'}; duplicates {x['duplicates']}; "
        f"second export since={x['cursor']} -> {x['second_export_rows']} rows"
    )
    lines.append("")
    lines.append(comparison(result))
    return "\n".join(lines)


def comparison(result: dict[str, Any]) -> str:
    """This run against the targets, then, apart, the external reference figures with their source."""
    e, m, x = result["export"], result["memory"], result["exactness"]
    a = ANCHORS
    fb = e["first_byte_s"]
    fb_ms = round(fb * 1000, 1) if fb is not None else None
    exact_ok = x["rows_equal_decisive"] and x["second_export_rows"] == 0 and not x["duplicates"]
    ours = [
        [
            "rows/s",
            e["rows_per_s"],
            f">= {TARGETS['rows_s']:,}",
            common.verdict((e["rows_per_s"] or 0) >= TARGETS["rows_s"]),
        ],
        [
            "first byte (ms)",
            fb_ms,
            f"< {TARGETS['first_byte_s'] * 1000:.0f}",
            common.verdict(fb is not None and fb < TARGETS["first_byte_s"]),
        ],
        [
            "peak worker memory (MB)",
            m["peak_rss_mb_vmhwm"],
            "flat",
            common.verdict((m["rss_growth_mb"] or 0) < 10),
        ],
        [
            "exact (rows = decisive, since -> 0)",
            ("yes" if exact_ok else "NO") if x["complete"] else "-",
            "exact",
            common.verdict(exact_ok) if x["complete"] else "NOT CHECKED (cut off)",
        ],
    ]
    ext = [
        [
            "rows/s",
            e["rows_per_s"],
            f"{a['label_studio']['large_rows_s']:.0f} (100k in 134 s)",
            a["prototype"]["rows_s"],
            common.ratio(e["rows_per_s"], a["label_studio"]["large_rows_s"]),
        ],
        [
            "first byte (ms)",
            fb_ms,
            "at the end (134,000)",
            a["prototype"]["first_byte_s"] * 1000,
            common.ratio(fb, a["label_studio"]["large_s"], lower_is_better=True),
        ],
        [
            "peak worker memory (MB)",
            m["peak_rss_mb_vmhwm"],
            a["label_studio"]["large_mem_mb"],
            a["prototype"]["rss_mb"],
            common.ratio(
                m["peak_rss_mb_vmhwm"], a["label_studio"]["large_mem_mb"], lower_is_better=True
            ),
        ],
    ]
    shape = result.get("shape", "pairs")
    ours_table = table(
        ["figure", "Tandem (this run)", "target", "verdict"],
        ours,
        title="This run against the targets:"
        if shape == "pairs"
        else f"This run against the targets (shape={shape}; rows/s "
        f"{common.ratio(e['rows_per_s'], TARGETS['rows_s'])} the target):",
    )
    if shape != "pairs":
        # The external figures are exports of pairwise data: no reference for this shape.
        return ours_table
    return "\n".join(
        [
            ours_table,
            "",
            table(
                [
                    "figure",
                    "Tandem (this run)",
                    "Label Studio (external)",
                    "prototype (external)",
                    "vs LS",
                ],
                ext,
                title="External reference (not measured in this run):",
            ),
            "",
            external_sources(ANCHORS),
        ]
    )
