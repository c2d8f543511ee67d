"""Binary dilation, erosion and opening with a cross or a box structure, by shifted copies of the mask.

The results are those of ``scipy.ndimage.binary_dilation`` / ``binary_erosion`` / ``binary_opening`` with the
same structure (``border_value`` 0: beyond the array's edge is background), 10-20 times faster: scipy's binary
morphology visits the structure element by element for every voxel, while a cross or a box is a handful of
whole-array ``|`` or ``&`` of shifted views. ``tests/test_morph.py`` checks them against scipy.

``axes`` names the axes the structure reaches along (default: all); ``box=False`` is the cross (the centre and
its two neighbours along each of ``axes``: ``ndi.generate_binary_structure(ndim, 1)``, or for ``axes=(1, 2)`` of
a 3D mask the in-plane cross ``generate_binary_structure(2, 1)[None]``); ``box=True`` is the full 3 x ... x 3
box over ``axes`` (``np.ones((1, 3, 3))`` for ``axes=(1, 2)``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["dilate", "erode", "opening"]


def _axes(ndim: int, axes: Sequence[int] | None) -> tuple[int, ...]:
    return tuple(range(ndim)) if axes is None else tuple(a % ndim for a in axes)


def _views(ndim: int, axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(index of elements 1.., index of elements ..-1) along ``axis``."""
    hi, lo = [slice(None)] * ndim, [slice(None)] * ndim
    hi[axis], lo[axis] = slice(1, None), slice(None, -1)
    return tuple(hi), tuple(lo)


def _grow(out: np.ndarray, src: np.ndarray, axis: int) -> None:
    """``out |= src`` shifted by +1 and by -1 along ``axis``."""
    hi, lo = _views(src.ndim, axis)
    out[hi] |= src[lo]
    out[lo] |= src[hi]


def _shrink(out: np.ndarray, src: np.ndarray, axis: int) -> None:
    """``out &= src`` shifted by +1 and by -1 along ``axis``, beyond the edge counting as background."""
    hi, lo = _views(src.ndim, axis)
    out[hi] &= src[lo]
    out[lo] &= src[hi]
    edge: list = [slice(None)] * src.ndim
    for i in (0, -1):
        edge[axis] = i
        out[tuple(edge)] = False


def _step(m: np.ndarray, axes: tuple[int, ...], box: bool, grow: bool) -> np.ndarray:
    op = _grow if grow else _shrink
    out = m.copy()
    for ax in axes:
        # a box is separable (each axis in turn on the result so far); a cross takes each axis's neighbours of
        # the original mask
        op(out, out.copy() if box else m, ax)
    return out


def dilate(mask: np.ndarray, iterations: int = 1, *, axes: Sequence[int] | None = None, box: bool = False,
           within: np.ndarray | None = None) -> np.ndarray:
    """``ndi.binary_dilation(mask, structure, iterations, mask=within)`` for a cross or box ``structure``.

    With ``within``, as scipy's ``mask``: only its True elements change, at each iteration."""
    m0 = np.asarray(mask, bool)
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    ax = _axes(m0.ndim, axes)
    out = m0
    for _ in range(iterations):      # iterations >= 1: ``out`` is always a new array
        out = _step(out, ax, box, grow=True)
        if within is not None:
            out = np.where(within, out, m0)
    return out


def erode(mask: np.ndarray, iterations: int = 1, *, axes: Sequence[int] | None = None, box: bool = False
          ) -> np.ndarray:
    """``ndi.binary_erosion(mask, structure, iterations)`` for a cross or box ``structure``."""
    m = np.asarray(mask, bool)
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    ax = _axes(m.ndim, axes)
    for _ in range(iterations):
        m = _step(m, ax, box, grow=False)
    return m


def opening(mask: np.ndarray, iterations: int = 1, *, axes: Sequence[int] | None = None, box: bool = False
            ) -> np.ndarray:
    """``ndi.binary_opening(mask, structure, iterations)``: ``iterations`` erosions, then as many dilations."""
    return dilate(erode(mask, iterations, axes=axes, box=box), iterations, axes=axes, box=box)
