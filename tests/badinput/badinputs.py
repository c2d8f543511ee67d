"""Small generated inputs shared by the bad-input cases (``from badinputs import small_scan, dicom_series``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sscild.scan import CTScan


# --------------------------------------------------------------------------------------------
# small generated inputs shared by the cases
# --------------------------------------------------------------------------------------------
def small_scan(nz: int = 12, n: int = 32, spacing: tuple[float, float, float] = (2.5, 1.5, 1.5),
               seed: int = 0) -> CTScan:
    """A tiny chest-like CT (air around a 40 HU body holding two -850 HU 'lungs'), LPS, z toward the head."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    body = ((yy - c) / (0.42 * n)) ** 2 + ((xx - c) / (0.47 * n)) ** 2 <= 1
    lungs = (((yy - c) / (0.28 * n)) ** 2 + ((np.abs(xx - c) - 0.22 * n) / (0.16 * n)) ** 2) <= 1
    sl = np.where(lungs, -850, np.where(body, 40, -1000)).astype(np.int16)
    hu = np.repeat(sl[None], nz, axis=0) + rng.integers(-20, 21, (nz, n, n)).astype(np.int16)
    return CTScan(hu.astype(np.int16), spacing=spacing, origin=(-c * spacing[2], -c * spacing[1], -100.0))


def dicom_series(folder, scan: CTScan | None = None, **kw) -> "Path":
    """Write ``scan`` (default :func:`small_scan`) as a CT DICOM series in ``folder``; ``kw`` go to
    :func:`sscild.phantom.write_dicom_series` (``extra=`` tweaks each dataset)."""
    from sscild.phantom import write_dicom_series

    write_dicom_series(scan if scan is not None else small_scan(), folder, **kw)
    return Path(folder)


def add_localizer(folder, name: str = "a_scout.dcm") -> "Path":
    """Copy the first file of the series in ``folder`` as a coronal LOCALIZER image of the same series."""
    import pydicom

    ds = pydicom.dcmread(sorted(Path(folder).iterdir())[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(Path(folder) / name)
    return Path(folder) / name
