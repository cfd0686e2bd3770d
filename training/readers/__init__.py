"""Dataset readers: one module per format, all yielding :class:`model.types.Sample`.

A dataset is named on the command line as ``FORMAT:PATH[:RANGE]``, e.g.
``mall:../shared/data/mall:1-800``, ``shanghaitech:../shared/data/shanghaitech_b/train_data``,
``kaggle:data/`` (images.npy + labels.npy), ``generic:my_camera/`` (see
:mod:`training.readers.generic`). RANGE selects 1-based items, inclusive
(``801-2000``), optionally every K-th (``10-400/10``).
"""

from __future__ import annotations

from pathlib import Path

from crowdcount.training.readers.base import DatasetError, Kernel, Reader, Subset


def parse_range(text: str, length: int) -> list[int]:
    """'801-2000', '5' or '10-400/10' (every 10th) (1-based, inclusive) -> 0-based indices."""
    try:
        span, _, step = text.partition("/")
        first, _, last = span.partition("-")
        lo, hi, k = int(first), int(last or first), int(step or 1)
    except ValueError:
        raise DatasetError(f"bad range {text!r}: use FIRST-LAST[/STEP], 1-based") from None
    if not 1 <= lo <= hi <= length or k < 1:
        raise DatasetError(f"range {text!r} outside 1-{length}")
    return list(range(lo - 1, hi, k))


def open_dataset(spec: str) -> Reader:
    """Open ``FORMAT:PATH[:RANGE]``."""
    fmt, sep, rest = spec.partition(":")
    if not sep:
        raise DatasetError(f"dataset {spec!r}: expected FORMAT:PATH[:RANGE]")
    path, rng = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and tail and tail.replace("-", "").replace("/", "").isdigit():
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
    else:
        raise DatasetError(f"unknown dataset format {fmt!r}: mall, shanghaitech, kaggle, generic")
    return Subset(reader, parse_range(rng, len(reader))) if rng else reader


__all__ = ["DatasetError", "Kernel", "Reader", "Subset", "open_dataset", "parse_range"]
