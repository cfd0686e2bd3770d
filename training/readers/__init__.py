"""Dataset readers: one module per format, all yielding :class:`model.types.Sample`.

A dataset is named on the command line as ``FORMAT:PATH[:RANGE]``, e.g.
``mall:../shared/data/mall:1-800``, ``shanghaitech:../shared/data/shanghaitech_b/train_data``,
``kaggle:data/`` (images.npy + labels.npy), ``generic:my_camera/`` (see
:mod:`training.readers.generic`). RANGE selects 1-based items, inclusive
(``801-2000``), optionally every K-th (``10-400/10``). Terms joined by commas add up, and a
term starting with ``~`` takes items away: ``1-400,~10-400/10`` (or just ``~10-400/10``) is
everything except every 10th item, the training side of a ``10-400/10`` hold-out.
"""

from __future__ import annotations

from pathlib import Path

from crowdcount.training.readers.base import DatasetError, Kernel, Reader, Subset

_RANGE_CHARS = set("0123456789-/,~ ")


def _range_term(term: str, text: str, length: int) -> range:
    try:
        span, _, step = term.partition("/")
        first, _, last = span.partition("-")
        lo, hi, k = int(first), int(last or first), int(step or 1)
    except ValueError:
        raise DatasetError(
            f"bad range {text!r}: use FIRST-LAST[/STEP], 1-based, joined by ',' "
            "and '~' to exclude"
        ) from None
    if not 1 <= lo <= hi <= length or k < 1:
        raise DatasetError(f"range {text!r} outside 1-{length}")
    return range(lo - 1, hi, k)


def parse_range(text: str, length: int) -> list[int]:
    """'801-2000', '5', '10-400/10' (every 10th), '1-400,~10-400/10' (all but every 10th) or
    '~10-400/10' (the same: a leading exclusion starts from everything); 1-based, inclusive
    -> sorted 0-based indices."""
    terms = [t.strip() for t in text.split(",")]
    chosen: set[int] = set(range(length)) if terms[0].startswith("~") else set()
    for term in terms:
        if term.startswith("~"):
            chosen -= set(_range_term(term[1:], text, length))
        else:
            chosen |= set(_range_term(term, text, length))
    if not chosen:
        raise DatasetError(f"range {text!r} selects no items")
    return sorted(chosen)


def open_dataset(spec: str) -> Reader:
    """Open ``FORMAT:PATH[:RANGE]`` (``empty:``, ``median:FORMAT:...`` and
    ``background:FORMAT:...``: scenes without people, see ``readers/empty.py``)."""
    fmt, sep, rest = spec.partition(":")
    if not sep:
        raise DatasetError(f"dataset {spec!r}: expected FORMAT:PATH[:RANGE]")
    if fmt in ("median", "background"):  # kinds made from another dataset: median:mall:...
        from crowdcount.training.readers.empty import HeadFreeCrops, MedianReader

        inner = open_dataset(rest)
        return MedianReader(inner, rest) if fmt == "median" else HeadFreeCrops(inner, rest)
    path, rng = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and tail and _RANGE_CHARS.issuperset(tail) and any(c.isdigit() for c in tail):
        path, rng = head, tail
    root = Path(path)
    if fmt == "mall":
        from crowdcount.training.readers.mall import MallReader

        reader: Reader = MallReader(root)
    elif fmt == "shanghaitech":
        from crowdcount.training.readers.shanghaitech import ShanghaiTechReader

        reader = ShanghaiTechReader(root)
    elif fmt == "kaggle":
        from crowdcount.training.readers.kaggle import KaggleReader

        reader = KaggleReader(root)
    elif fmt == "generic":
        from crowdcount.training.readers.generic import GenericReader

        reader = GenericReader(root)
    elif fmt == "empty":
        from crowdcount.training.readers.empty import MedianView, SyntheticEmpty

        reader = SyntheticEmpty() if path == "synthetic" else MedianView(root)
    else:
        raise DatasetError(f"unknown dataset format {fmt!r}: mall, shanghaitech, kaggle, "
                           "generic, empty, median, background")
    return Subset(reader, parse_range(rng, len(reader))) if rng else reader


__all__ = ["DatasetError", "Kernel", "Reader", "Subset", "open_dataset", "parse_range"]
