"""
One cache for the stages of the long commands (the quickstart, python -m reproduction, Pea-KD's pipeline): a stage's
result is stored in its folder (stage.json) beside the settings that made it, and reused only for the same
settings. The quickstart's training stages, which resume, read and write the same file (quickstart.run_stage).
"""
import json
from pathlib import Path

from machinery.files import write_json


def cached(folder, settings: dict, compute, log=print):
    """compute() -> a JSON-able result, written to folder/stage.json with `settings`; the stored result
    instead when folder/stage.json holds the same settings (a finished stage is not computed again). Settings
    compare as JSON (a tuple equals the list it is written as). Interrupted, nothing is stored: the next call
    computes again."""
    folder, settings = Path(folder), json.loads(json.dumps(settings))
    before = stored(folder, settings)
    if before is not None:
        log(f"{folder.name}: already complete with the same settings, reused")
        return before
    result = compute()
    write_json({"settings": settings, "result": result}, folder / "stage.json")
    return result


def stored(folder, settings: dict):
    """The result folder/stage.json holds for these settings (compared as JSON), or None: also when the file
    is missing, damaged or of another shape (such a stage counts as not done)."""
    before, _ = read(folder)
    if before is None or before.get("settings") != json.loads(json.dumps(settings)):
        return None
    return before.get("result")


def read(folder) -> tuple:
    """(folder/stage.json as a dict, None), or (None, why) when it is missing or cannot be read (damaged, not
    a JSON object): such a stage is taken as one of unknown settings."""
    marker = Path(folder) / "stage.json"
    if not marker.is_file():
        return None, "missing"
    try:
        before = json.loads(marker.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError too
        return None, f"{marker} cannot be read ({' '.join(str(e).split())[:80]})"
    if not isinstance(before, dict):
        return None, f"{marker} holds a JSON {type(before).__name__}, not the object it writes"
    return before, None
