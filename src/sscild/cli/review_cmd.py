"""`sscild review`: reader studies (create, serve, stats, export)."""
from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import console

review_app = typer.Typer(help="Reader study: experts score the level slices in a browser; agreement statistics; "
                              "their consensus as training labels.", no_args_is_help=True)
app.add_typer(review_app, name="review")

DB_URL = typer.Option(None, "--db-url", help="Database URL instead of STUDY/review.db, e.g. "
                                             "postgresql+psycopg://USER@HOST/DB (several sites).")


def _scans_csv(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    import pandas as pd

    from ..errors import ConfigError

    df = pd.read_csv(path, dtype=str)
    if not {"folder", "path"} <= set(df.columns):
        raise ConfigError(f"{path}: --scans needs columns folder,path (analysed folder name, source scan)")
    return dict(zip(df["folder"], df["path"]))


@review_app.command("create")
def create(
    study: Path = typer.Argument(..., help="New study folder."),
    sources: list[Path] = typer.Option(..., "--from", help="Output folder of sscild analyze / demo / batch "
                                                          "(repeat the option for several)."),
    readers: str = typer.Option(..., "--readers", help="Comma-separated reader names, e.g. ana,ben."),
    repeat: float = typer.Option(0.1, "--repeat", help="Share of cases each reader reads again, later."),
    heatmaps: bool = typer.Option(False, "--heatmaps", help="Readers rate the heat maps (1-5)."),
    show_tool_after: bool = typer.Option(False, "--show-tool-after", help="Show the tool's scores after each "
                                                                         "answer (never before)."),
    neighbours: int = typer.Option(3, "--neighbours", help="Slices shown on each side of a level."),
    scans: Path = typer.Option(None, "--scans", help="CSV folder,path: the source scan of analyze folders that "
                                                     "do not record it."),
    seed: int = typer.Option(0, "--seed", help="Seed of the per-reader case order."),
    db_url: str = DB_URL,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Build a study from analysed scans: de-identified level slices, per-reader order, access tokens."""
    from ..review.study import create_study, find_sources

    tokens = create_study(study, find_sources(sources, _scans_csv(scans)), readers.split(","), repeat=repeat,
                          heatmaps=heatmaps, show_tool_after=show_tool_after, neighbours=neighbours, seed=seed,
                          db_url=db_url, quiet=quiet)
    console.print(f"study written to {study}/ . Access tokens (shown only now; give each reader their own):")
    for name, tok in tokens.items():
        typer.echo(f"{name}\t{tok}")


@review_app.command("serve")
def serve(
    study: Path = typer.Argument(..., help="Study folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (localhost by default)."),
    port: int = typer.Option(8000, "--port"),
    ssl_certfile: Path = typer.Option(None, "--ssl-certfile", help="TLS certificate (HTTPS), for a non-local host."),
    ssl_keyfile: Path = typer.Option(None, "--ssl-keyfile", help="TLS key (HTTPS)."),
    behind_proxy: bool = typer.Option(False, "--behind-proxy", help="A TLS reverse proxy (nginx, caddy) forwards "
                                      "to this server: cookies are marked Secure, X-Forwarded-* trusted."),
    db_url: str = DB_URL,
) -> None:
    """Serve the reading page (FastAPI + uvicorn); readers log in with their token."""
    import uvicorn

    from ..review.app import check_host, create_app

    tls = ssl_certfile is not None and ssl_keyfile is not None
    check_host(host, tls=tls, behind_proxy=behind_proxy)
    web = create_app(study, db_url=db_url, secure_cookie=tls or behind_proxy)
    scheme = "https" if tls else "http"
    console.print(f"reader study at {scheme}://{host}:{port}/ (Ctrl+C stops; answers are saved as given)")
    uvicorn.run(web, host=host, port=port, log_level="warning", proxy_headers=behind_proxy,
                ssl_certfile=str(ssl_certfile) if tls else None, ssl_keyfile=str(ssl_keyfile) if tls else None)


@review_app.command("stats")
def stats(
    study: Path = typer.Argument(..., help="Study folder."),
    out: Path = typer.Option(None, "-o", "--out", help="Output folder (default STUDY/results)."),
    db_url: str = DB_URL,
) -> None:
    """Agreement statistics: agreement.html and CSVs (inter-/intra-reader, against the tool, Likert)."""
    from ..review.stats import write_results

    page = write_results(study, out, db_url)
    console.print(f"agreement statistics written to {page}")


@review_app.command("export")
def export(
    study: Path = typer.Argument(..., help="Study folder."),
    out: Path = typer.Option(..., "-o", "--out", help="Labels CSV to write (S-Net dataset layout)."),
    how: str = typer.Option("mean", "--consensus", help="mean or median of the readers."),
    steps: int = typer.Option(300, "--steps", help="Training steps in the fine-tuning config written beside."),
    replay: int = typer.Option(40, "--replay-phantoms", help="Replay this many of S-Net's own training phantoms "
                               "(and synthetic slices) in every fine-tuning batch (0: none)."),
    db_url: str = DB_URL,
) -> None:
    """The readers' consensus as training labels (+ level positions for L-Net, + a fine-tuning config)."""
    from ..review.export import export_labels

    e = export_labels(study, out, how=how, db_url=db_url, steps=steps, replay_phantoms=replay)
    console.print(f"{e.n_levels} consensus levels of {e.n_cases} scans -> {e.labels}; level positions -> "
                  f"{e.levels}; fine-tune with: sscild train scoring --config {e.config}")
