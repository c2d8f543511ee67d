"""Reader study: experts score the Goh level slices (and rate heat maps) in a browser, blinded; agreement
statistics between them and against the tool; their consensus exported as training labels.

Modules, in the order a study lives through them:

- :mod:`.study`   ``create_study``: level slices (and neighbours) of analysed scans, de-identified, per-reader
  randomised order with repeats, access tokens.
- :mod:`.db`      SQLAlchemy models, engine (SQLite in WAL mode, or PostgreSQL by URL), Alembic migrations.
- :mod:`.answers` server-side validation of one answer (5 % steps, TOT between max(GG, RET) and GG + RET).
- :mod:`.app`     the FastAPI web app (``sscild review serve``).
- :mod:`.stats`   inter- and intra-reader agreement, readers and consensus against the tool (``agreement.html``).
- :mod:`.export`  consensus labels in the S-Net training layout (``data.dataset_csv``) and level positions.
"""
