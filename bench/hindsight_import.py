"""Write marketplace import lines for a hindsight project (training.marketplace.import_lines).

Each line is one customer (the prompt: requirement, budget, prices), two scripted assistant
replies, the store's hidden facts for the outcome simulator and metadata.true_utility per reply.

    python -m bench.hindsight_import --lines 200 --seed 0 > market.jsonl
    python -m bench.hindsight_import --lines 200 --outcomes --out market.jsonl

With --outcomes every reply carries its outcome (the deterministic world model's), so the project
needs no simulator; without it a project's configured simulator writes them from the hidden facts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.marketplace import import_lines  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=100, help="customers (import lines)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--outcomes", action="store_true", help="each reply carries its simulated outcome"
    )
    parser.add_argument(
        "--assistant-view",
        action="store_true",
        help="prompts start with the store records (annotators then see them too)",
    )
    parser.add_argument("--out", type=Path, help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    if args.lines < 1:
        parser.error("--lines must be at least 1")
    text = "".join(
        json.dumps(line) + "\n"
        for line in import_lines(
            args.lines, args.seed, outcomes=args.outcomes, assistant_view=args.assistant_view
        )
    )
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
