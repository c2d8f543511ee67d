"""Server-side checks of one reader answer: scores in 5 % steps, TOT between max(GG, RET) and GG + RET, Likert
ratings 1-5, a corrected level slice inside the slices shown.

Examples
--------
>>> check_scores(30, 20, 10)
>>> check_scores(35, 20, 10)
Traceback (most recent call last):
...
sscild.review.answers.AnswerError: TOT 35 % must lie between max(GG, RET) = 20 % and GG + RET = 30 %
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..domain import PATTERNS
from ..errors import SscildError

STEP = 5
MAX_COMMENT = 2000
MAX_SECONDS = 86400


class AnswerError(SscildError):
    """An answer breaks a rule of the study (a reader sees the message as it is)."""


@dataclass(frozen=True)
class AnswerIn:
    """One level's answer as a reader gives it (also the body of ``PUT /api/answer``: FastAPI checks the types,
    :func:`check_answer` the rules)."""

    TOT: int
    GG: int
    RET: int
    misplaced: bool = False
    corrected_offset: int | None = None
    likert: Mapping[str, int] | None = None
    comment: str = ""
    seconds: float | None = None


def check_scores(tot: int, gg: int, ret: int) -> None:
    """Raise :class:`AnswerError` unless the three scores are 0-100 in 5 % steps and TOT is consistent."""
    for name, v in (("TOT", tot), ("GG", gg), ("RET", ret)):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 100 or v % STEP:
            raise AnswerError(f"{name} must be 0-100 % in {STEP} % steps, got {v!r}")
    lo, hi = max(gg, ret), gg + ret
    if not lo <= tot <= hi:
        raise AnswerError(f"TOT {tot} % must lie between max(GG, RET) = {lo} % and GG + RET = {hi} %")


def check_answer(a: AnswerIn, *, neighbours: int, heatmaps: bool) -> None:
    """All rules for one answer; ``neighbours`` is how many slices each side of the level were shown and
    ``heatmaps`` whether the study asks for Likert ratings of the heat maps."""
    check_scores(a.TOT, a.GG, a.RET)
    if a.misplaced:
        if a.corrected_offset is None or not -neighbours <= a.corrected_offset <= neighbours:
            raise AnswerError(f"a misplaced level needs the right slice: an offset from -{neighbours} to "
                              f"+{neighbours}, got {a.corrected_offset!r}")
    elif a.corrected_offset not in (None, 0):
        raise AnswerError("a corrected slice is only given when the level is marked as misplaced")
    if heatmaps:
        got = dict(a.likert or {})
        missing = [p for p in PATTERNS if p not in got]
        if missing:
            raise AnswerError(f"rate every heat map (1-5): missing {', '.join(missing)}")
        bad = {p: v for p, v in got.items() if p not in PATTERNS or not isinstance(v, int) or not 1 <= v <= 5}
        if bad:
            raise AnswerError(f"heat-map ratings are 1-5 for {', '.join(PATTERNS)}; got {bad}")
    elif a.likert:
        raise AnswerError("this study has no heat maps to rate")
    if len(a.comment) > MAX_COMMENT:
        raise AnswerError(f"the comment is {len(a.comment)} characters; keep it under {MAX_COMMENT}")
    if a.seconds is not None and not 0 <= a.seconds <= MAX_SECONDS:
        raise AnswerError(f"the time spent on a level is 0-{MAX_SECONDS} s, got {a.seconds!r}")
