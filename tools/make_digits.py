"""Write src/batchnorm/data/digits.npz, the demo's bundled data set.

The data are the UCI ML hand-written digits (8x8 images, pixel counts 0..16, 1797 samples), as
scikit-learn ships them in ``sklearn.datasets.load_digits``. scikit-learn is needed only to run
this script once; it is not a dependency of batchnorm. Run it in a throwaway environment:

    python3 -m venv /tmp/skenv && /tmp/skenv/bin/pip install scikit-learn numpy
    /tmp/skenv/bin/python tools/make_digits.py

The archive holds ``images`` (uint8, shape (1797, 8, 8)) and ``labels`` (uint8, shape (1797,)),
in scikit-learn's order. Its zip entries carry a fixed timestamp, so rerunning the script with the
same data writes the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "batchnorm" / "data" / "digits.npz"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a compressed .npz whose bytes depend only on the arrays (np.savez stamps the time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the .npz")
    args = parser.parse_args()

    digits = load_digits()
    images = digits.images
    if not (np.array_equal(images, np.round(images)) and images.min() >= 0 and images.max() <= 16):
        raise SystemExit("load_digits() no longer returns integer pixels in 0..16")
    arrays = {"images": images.astype(np.uint8), "labels": digits.target.astype(np.uint8)}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_npz(args.out, arrays)

    with np.load(args.out) as check:
        for name, array in arrays.items():
            if not np.array_equal(check[name], array):
                raise SystemExit(f"{args.out}: {name} did not read back equal")
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    counts = np.bincount(arrays["labels"], minlength=10).tolist()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {digest})")
    print(f"images {arrays['images'].shape} uint8, labels per class {counts}")


if __name__ == "__main__":
    main()
