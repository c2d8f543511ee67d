"""Agreement statistics of a reader study: ``sscild review stats STUDY`` writes ``agreement.html`` and CSVs.

- inter-reader (first readings): per level and pattern, for each pair of readers, MAE +- SD, linearly weighted
  kappa on 5 % categories and ICC(2,1) (two-way random, absolute agreement) via :func:`sscild.evaluate.per_level_table`;
  for all readers together ICC(2,1) for k raters (pingouin) and, with more than two readers, Krippendorff's alpha
  (interval); the readers' own noise is estimated as SD(reader A - reader B) / sqrt(2).
- intra-reader: each reader's repeated cases, first against second reading.
- each reader against the tool, and the consensus (mean of the readers) against the tool.
- Bland-Altman plots (statsmodels), Likert summaries of the heat maps, how often a level was marked misplaced.
"""
from __future__ import annotations

import html
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..domain import LEVELS, PATTERNS
from ..evaluate import bland_altman, per_level_table
from ..figures import save_png
from ..util import atomic_path
from .study import Study, open_study


@dataclass(frozen=True)
class StudyStats:
    """The tables of ``agreement.html`` (each also written as CSV)."""

    answers: pd.DataFrame
    inter_pairs: pd.DataFrame
    inter_all: pd.DataFrame
    intra: pd.DataFrame
    vs_tool: pd.DataFrame
    consensus_vs_tool: pd.DataFrame
    likert: pd.DataFrame
    levels: pd.DataFrame


def load_answers(study: Study, db_url: str | None = None) -> pd.DataFrame:
    """Every answer of a study, one row per reader, case, replicate and level (no tokens)."""
    import sqlalchemy as sa

    from .db import Answer, Assignment, Reader, database_url, open_db

    engine = open_db(database_url(study.root, db_url))
    q = (sa.select(Reader.name.label("reader"), Assignment.position, Assignment.case_id, Assignment.replicate,
                   Answer.level, Answer.tot.label("TOT"), Answer.gg.label("GG"), Answer.ret.label("RET"),
                   Answer.misplaced, Answer.corrected_offset, Answer.likert_tot.label("likert_TOT"),
                   Answer.likert_gg.label("likert_GG"), Answer.likert_ret.label("likert_RET"), Answer.comment,
                   Answer.seconds)
         .join(Assignment, Answer.assignment_id == Assignment.id).join(Reader, Answer.reader_id == Reader.id)
         .order_by(Reader.name, Assignment.position, Answer.level))
    with engine.connect() as c:
        df = pd.DataFrame(c.execute(q).mappings().all())
    engine.dispose()
    if df.empty:
        df = pd.DataFrame(columns=["reader", "position", "case_id", "replicate", "level", *PATTERNS, "misplaced",
                                   "corrected_offset", "likert_TOT", "likert_GG", "likert_RET", "comment", "seconds"])
    df[list(PATTERNS)] = df[list(PATTERNS)].astype(float)
    return df


def _scores(df: pd.DataFrame) -> pd.DataFrame:
    """``scan_id, level, TOT, GG, RET`` as :func:`sscild.evaluate.per_level_table` takes them."""
    return df.rename(columns={"case_id": "scan_id"})[["scan_id", "level", *PATTERNS]]


def _table(a: pd.DataFrame, b: pd.DataFrame, **labels) -> pd.DataFrame:
    if a.empty or b.empty or _scores(a).merge(_scores(b), on=["scan_id", "level"]).empty:
        return pd.DataFrame()
    t = per_level_table(_scores(a), _scores(b))
    for k, v in reversed(labels.items()):
        t.insert(0, k, v)
    return t


def _noise_sd(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, float]:
    m = _scores(a).merge(_scores(b), on=["scan_id", "level"])
    return {p: float(np.std(m[f"{p}_x"] - m[f"{p}_y"], ddof=1) / np.sqrt(2)) if len(m) > 1 else float("nan")
            for p in PATTERNS}


def inter_reader(first: pd.DataFrame) -> pd.DataFrame:
    """Every pair of readers on their first readings, per level and pattern, with the noise SD estimate."""
    parts = []
    for ra, rb in itertools.combinations(sorted(first["reader"].unique()), 2):
        a, b = first[first["reader"] == ra], first[first["reader"] == rb]
        t = _table(a, b, reader_a=ra, reader_b=rb)
        if not t.empty:
            sd = _noise_sd(a, b)
            t["reader_SD_est"] = [sd[p] if lv == "all" else np.nan for lv, p in zip(t["level"], t["pattern"])]
            parts.append(t)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def all_readers(first: pd.DataFrame) -> pd.DataFrame:
    """ICC(2,1) for k raters (pingouin) and Krippendorff's alpha (interval) over the items all readers scored."""
    import krippendorff
    import pingouin as pg

    rows = []
    readers = sorted(first["reader"].unique())
    for lv in [*LEVELS, "all"]:
        sub = first if lv == "all" else first[first["level"] == lv]
        for p in PATTERNS:
            wide = sub.pivot_table(index=["case_id", "level"], columns="reader", values=p).dropna()
            row = {"level": lv, "pattern": p, "n_items": len(wide), "n_readers": len(readers),
                   "ICC_k_raters": np.nan, "krippendorff_alpha": np.nan}
            if len(wide) >= 3 and len(readers) >= 2 and wide.to_numpy().std() > 0:
                long = wide.reset_index(drop=True).rename_axis("item").reset_index().melt(id_vars="item")
                t = pg.intraclass_corr(long, targets="item", raters="reader", ratings="value").set_index("Type")
                row["ICC_k_raters"] = float(t.loc["ICC(A,1)" if "ICC(A,1)" in t.index else "ICC2", "ICC"])
                if len(readers) > 2:
                    row["krippendorff_alpha"] = float(krippendorff.alpha(
                        reliability_data=wide.to_numpy().T, level_of_measurement="interval"))
            rows.append(row)
    return pd.DataFrame(rows)


def intra_reader(answers: pd.DataFrame) -> pd.DataFrame:
    """Each reader's repeated cases: first against second reading."""
    parts = []
    for r, sub in answers.groupby("reader"):
        rep = sub[sub["replicate"] == 1]
        first = sub[(sub["replicate"] == 0) & sub["case_id"].isin(rep["case_id"])]
        t = _table(rep, first, reader=r)
        if not t.empty:
            parts.append(t)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def tool_scores(study: Study) -> pd.DataFrame:
    """The tool's scores of the study's cases (``tool.json``) as ``case_id, level, TOT, GG, RET``."""
    rows = [{"case_id": c, "level": n, **{p: s.get(p) for p in PATTERNS}}
            for c, lv in study.tool().items() for n, s in lv.items()]
    return pd.DataFrame(rows, columns=["case_id", "level", *PATTERNS])


def consensus(first: pd.DataFrame, how: str = "mean") -> pd.DataFrame:
    """The readers' consensus per case and level (mean or median of the first readings), with ``n_readers``."""
    g = first.groupby(["case_id", "level"])
    out = g[list(PATTERNS)].agg(how).reset_index()
    out["n_readers"] = g.size().to_numpy()
    return out


def likert_summary(answers: pd.DataFrame) -> pd.DataFrame:
    """Per pattern: n, mean, median and counts of the 1-5 ratings of the heat maps (all readings)."""
    rows = []
    for p in PATTERNS:
        v = answers[f"likert_{p}"].dropna().astype(int)
        rows.append({"pattern": p, "n": len(v), "mean": v.mean() if len(v) else np.nan,
                     "median": v.median() if len(v) else np.nan,
                     **{f"n_{k}": int((v == k).sum()) for k in range(1, 6)}})
    return pd.DataFrame(rows)


def misplaced_summary(first: pd.DataFrame) -> pd.DataFrame:
    """Per level: how many first readings marked it misplaced and the mean corrected offset (slices, + cranial)."""
    rows = []
    for lv in LEVELS:
        s = first[first["level"] == lv]
        m = s[s["misplaced"].astype(bool)]
        rows.append({"level": lv, "n": len(s), "n_misplaced": len(m),
                     "mean_offset": float(m["corrected_offset"].mean()) if len(m) else np.nan})
    return pd.DataFrame(rows)


def compute_stats(study: Study, db_url: str | None = None) -> StudyStats:
    """All tables of a study. Statistics undefined on few or constant answers (e.g. kappa of one level of one
    repeated case) are NaN, shown as "-"; the libraries' warnings about them are silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*cohen_kappa_score.*")
        return _compute_stats(study, db_url)


def _compute_stats(study: Study, db_url: str | None) -> StudyStats:
    ans = load_answers(study, db_url)
    first = ans[ans["replicate"] == 0]
    tool = tool_scores(study)
    vs_tool = [_table(first[first["reader"] == r], tool, reader=r) for r in sorted(first["reader"].unique())]
    vs_tool = [t for t in vs_tool if not t.empty]
    return StudyStats(ans, inter_reader(first), all_readers(first) if len(first) else pd.DataFrame(),
                      intra_reader(ans), pd.concat(vs_tool, ignore_index=True) if vs_tool else pd.DataFrame(),
                      _table(consensus(first), tool, reader="consensus (mean)") if len(first) else pd.DataFrame(),
                      likert_summary(ans), misplaced_summary(first))


# ------------------------------------------------------------------------------------------------------------------
# agreement.html
# ------------------------------------------------------------------------------------------------------------------
def ba_png(a: np.ndarray, b: np.ndarray, path: Path, title: str) -> Path:
    """Bland-Altman plot (statsmodels' mean_diff_plot) drawn on a matplotlib Figure, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from statsmodels.graphics.agreement import mean_diff_plot

    fig = Figure(figsize=(4.2, 3.4), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    mean_diff_plot(np.asarray(a, float), np.asarray(b, float), ax=ax)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("mean of the two (%)")
    ax.set_ylabel("difference (%)")
    fig.tight_layout()
    save_png(fig, path)
    return path


def _ba_pairs(st: StudyStats, study: Study) -> list[tuple[str, np.ndarray, np.ndarray]]:
    first = st.answers[st.answers["replicate"] == 0]
    readers = sorted(first["reader"].unique())
    pairs = []
    if len(readers) >= 2:
        m = _scores(first[first["reader"] == readers[0]]).merge(_scores(first[first["reader"] == readers[1]]),
                                                                on=["scan_id", "level"])
        pairs += [(f"{readers[0]} vs {readers[1]}: {p}", m[f"{p}_x"].to_numpy(), m[f"{p}_y"].to_numpy())
                  for p in PATTERNS]
    if len(first):
        m = _scores(consensus(first)).merge(_scores(tool_scores(study)), on=["scan_id", "level"]).dropna()
        pairs += [(f"consensus vs tool: {p}", m[f"{p}_x"].to_numpy(), m[f"{p}_y"].to_numpy()) for p in PATTERNS]
    return [(t, a, b) for t, a, b in pairs if len(a) >= 2]


def _html_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "<p>not enough answers yet</p>"
    return df.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-", border=0, classes="t")


def summary(st: StudyStats) -> pd.DataFrame:
    """One row per comparison and pattern over all levels (pairs and readers averaged): the page's first table."""
    rows = []
    for name, df in (("inter-reader (mean over pairs)", st.inter_pairs), ("intra-reader (mean over readers)", st.intra),
                     ("readers vs tool (mean over readers)", st.vs_tool), ("consensus vs tool", st.consensus_vs_tool)):
        if df is None or df.empty:
            continue
        a = df[df["level"] == "all"].groupby("pattern", sort=False)[["n", "MAE", "kappa", "ICC"]].mean()
        rows += [{"comparison": name, "pattern": p, **a.loc[p].to_dict()} for p in PATTERNS if p in a.index]
    out = pd.DataFrame(rows)
    if len(out):
        out["n"] = out["n"].round().astype(int)
    return out


SECTIONS = (("inter_pairs", "Inter-reader agreement (first readings), each pair of readers",
             "MAE +- SD in % points, linearly weighted kappa on 5 % categories, ICC(2,1); reader_SD_est = SD of the "
             "differences / sqrt 2, each reader's own scatter if both scatter alike."),
            ("inter_all", "All readers together", "ICC(2,1) for k raters (pingouin); Krippendorff's alpha "
             "(interval) with more than two readers."),
            ("intra", "Intra-reader agreement", "repeated cases: second reading against the first."),
            ("vs_tool", "Each reader against the tool", "reader as the first, the tool as the second."),
            ("consensus_vs_tool", "Consensus (mean of readers) against the tool", ""),
            ("likert", "Heat maps: 'marks the diseased lung' (1-5)", "all readings."),
            ("levels", "Level placement", "first readings that marked the level misplaced; offset in slices, "
             "+ toward the head."))


def write_results(study_dir: str | Path, out: str | Path | None = None, db_url: str | None = None) -> Path:
    """Compute the statistics of a study and write ``agreement.html``, one CSV per table and the Bland-Altman
    PNGs into ``out`` (default ``STUDY/results``); returns the path of ``agreement.html``."""
    study = open_study(study_dir)
    out = Path(out) if out else study.root / "results"
    out.mkdir(parents=True, exist_ok=True)
    st = compute_stats(study, db_url)
    cols = [c for c in st.answers.columns if c != "comment"]
    for name in ("answers", *(s[0] for s in SECTIONS)):
        df = st.answers[cols] if name == "answers" else getattr(st, name)
        with atomic_path(out / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=False)
    pairs = _ba_pairs(st, study)
    figs = [ba_png(a, b, out / f"ba_{i}.png", t) for i, (t, a, b) in enumerate(pairs)]
    ba = pd.DataFrame([{"comparison": t, "n": len(a), **bland_altman(a, b)} for t, a, b in pairs])
    with atomic_path(out / "bland_altman.csv") as tmp:
        ba.to_csv(tmp, index=False)
    n_read = st.answers.groupby("reader").size().to_dict() if len(st.answers) else {}
    n_cases = len(study.settings["cases"])
    body = [f"<h1>Reader study: agreement</h1><p>{n_cases} case{'s' if n_cases != 1 else ''}, readers "
            f"{html.escape(', '.join(study.settings['readers']))}; answers given: "
            f"{html.escape(', '.join(f'{k} {v}' for k, v in n_read.items())) or 'none'}.</p>"]
    body.append("<h2>Summary (all levels)</h2><p class=n>MAE in % points; kappa linearly weighted on 5 % "
                "categories; ICC(2,1).</p>" + _html_table(summary(st)))
    for name, title, note in SECTIONS:
        body.append(f"<h2>{html.escape(title)}</h2><p class=n>{html.escape(note)}</p>{_html_table(getattr(st, name))}")
    body.append("<h2>Bland-Altman</h2><p class=n>first minus second, % points; limits of agreement = mean +- 1.96 "
                "SD</p>" + _html_table(ba) + "".join(f'<img src="{f.name}" alt="{f.stem}">' for f in figs))
    page = ("<!doctype html><html lang=en><meta charset=utf-8><title>sscild reader study: agreement</title><style>"
            "body{font:14px system-ui,sans-serif;margin:1.5em;max-width:75em}table.t{border-collapse:collapse;"
            "margin:.4em 0}.t td,.t th{padding:.15em .5em;border-bottom:1px solid #ddd;text-align:right}"
            ".n{color:#555}img{margin:.3em}</style><body>" + "\n".join(body) + "</body></html>")
    with atomic_path(out / "agreement.html") as tmp:
        tmp.write_text(page)
    return out / "agreement.html"
