"""Corrections of `training.scenes` answers, made the way RLHF-V's annotators make them.

RLHF-V (Yu et al., 2024) asks annotators to correct the hallucinated segments of an answer, not
to rewrite or delete them: "The triangle in the top left corner is blue." becomes "... is green."
The corrected answer then differs from the original only in the made-up words, and dense DPO
weighs exactly those changed tokens γ; deleting the false sentence instead would leave a pair
whose difference is a whole missing sentence, with no token-level signal about what was wrong.
"""

from __future__ import annotations

import difflib

from .scenes import Scene, claims_of, facts


def _words(text: str) -> list[str]:
    return text.rstrip(".").split()


def nearest_truth(scene: Scene, sentence: str) -> str:
    """The true statement of the grammar closest to `sentence`: highest difflib ratio on words
    (fewest words changed), then on characters; the first in `facts`' order after a full tie.

    How a careful annotator fixes a false claim: change the made-up words, keep the rest. A scene
    always has a true statement ("There is no <shape> in the image." for an absent shape, or a
    count for a present one), so there is always one to return.
    """
    said = _words(sentence)
    truths = [text for found in facts(scene).values() for text in found]
    return max(
        truths,
        key=lambda truth: (
            difflib.SequenceMatcher(None, said, _words(truth), autojunk=False).ratio(),
            difflib.SequenceMatcher(None, sentence, truth, autojunk=False).ratio(),
        ),
    )


def corrected(scene: Scene, text: str) -> str:
    """`text` with each false claim (by `claims_of`) replaced by its `nearest_truth`; the lead-in,
    the true sentences and any text outside the grammar stay as they were. A faithful text comes
    back unchanged."""
    for claim in sorted(claims_of(scene, text), reverse=True):
        if not claim.true:
            fixed = nearest_truth(scene, text[claim.start : claim.end])
            text = text[: claim.start] + fixed + text[claim.end :]
    return text
