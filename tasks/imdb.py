"""
IMDb (Maas et al. 2011): movie reviews labelled positive or negative, in the aclImdb layout or its release tarball.
"""
import tarfile
from pathlib import Path

import numpy as np

from tasks.glue import Example


def read_imdb(path, split) -> list:
    """IMDb reviews of `split` ("train" or "test") in the aclImdb layout, split/pos/*.txt (label 1) and
    split/neg/*.txt (label 0), <br /> tags become spaces. `path`: the aclImdb folder, a folder holding it, the
    release tarball (read as it is, never extracted), or a folder holding one tarball. In a fixed random
    order (seed 0, from the file names), so that the first N (--eval_limit) are a balanced subset, the same
    everywhere. A missing or partial layout: one line naming what is missing."""
    path = Path(path)
    tarballs = sorted(path.glob("*.tar.gz")) if path.is_dir() else []
    if path.is_dir() and not (path / split).is_dir() and (path / "aclImdb").is_dir():
        path = path / "aclImdb"
    elif path.is_dir() and not (path / split).is_dir() and len(tarballs) == 1:
        path = tarballs[0]
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        texts = _imdb_tarball(path, split)
    elif (path / split).is_dir():
        texts = {label: [(f.name, f.read_bytes()) for f in sorted((path / split / sub).glob("*.txt"))]
                 for label, sub in ((0, "neg"), (1, "pos"))}
    else:
        raise FileNotFoundError(f"{path}: no {split}/ folder of the aclImdb layout (split/pos/*.txt, "
                                f"split/neg/*.txt), no aclImdb/ inside and no single .tar.gz of it")
    out = []
    for label, sub in ((0, "neg"), (1, "pos")):
        if not texts[label]:
            raise FileNotFoundError(f"{path}: no reviews in {split}/{sub}/ (a partial aclImdb?)")
        out += [Example(raw.decode("utf-8").replace("<br />", " "), None, label) for _, raw in
                sorted(texts[label])]
    return [out[i] for i in np.random.default_rng(0).permutation(len(out))]


def _imdb_tarball(path, split) -> dict:
    """{0: [(name, bytes)], 1: [...]} of the tarball's */split/{neg,pos}/*.txt members, read in one pass."""
    texts = {0: [], 1: []}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                parts = member.name.split("/")
                if member.isfile() and len(parts) >= 3 and parts[-3] == split and parts[-1].endswith(".txt") \
                        and parts[-2] in ("neg", "pos"):
                    texts[int(parts[-2] == "pos")].append((parts[-1], tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable tarball ({e})") from None
    return texts
