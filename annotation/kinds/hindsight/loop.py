"""The online loop's hindsight parts: the text loop, trained on hindsight pairs, with outcomes.

A hindsight task is a pairwise text task judged twice, so the loop's text hooks serve it as they
are: the `pairs` shape this kind exports reads the hindsight phase by default, which makes the
reward model and DPO learn from judgements made after the outcome was seen (RLHS), never from the
foresight ones the policy could win by pleasing. What differs is that an answer the loop generates
needs its outcome before an annotator can judge it in hindsight: the select stage simulates the
missing outcomes (annotation/services/outcomes.py) before it makes tasks of new answers.
"""

from __future__ import annotations

from ..pairwise_loop import PairwiseLoop


class HindsightLoop(PairwiseLoop):
    """Hooks of the hindsight kind: the pairwise text loop on hindsight pairs."""

    training_shape = (
        "pairs"  # the kind's pairs: hindsight judgements (annotation/kinds/hindsight/exports.py)
    )
    simulates_outcomes = True
