"""The open_clip embedder: short text batches give the model's own vectors, and the real
weights path (a tag resolved in the Hugging Face cache) works offline, end to end."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fakes import TINY_CONFIG, make_folder

TEXTS = [
    "a photo of a dog.",
    "x",
    "",
    "a photo of a small red car parked by the sea at night, seen from far away.",
    "a photo of a cat.",
]


def _reference(model, tokenizer, texts):
    import torch

    with torch.inference_mode():
        features = model.encode_text(tokenizer(texts)).float()
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def test_text_cut_after_the_end_token_gives_the_full_length_vectors():
    """The classic CLIP text tower is causal: cutting each batch after its longest prompt's
    end token leaves the pooled features as they are (prompts longer than the context too)."""
    import open_clip

    from organizer.embed import RandomWeightsWarning, openclip, request_spec

    with pytest.warns(RandomWeightsWarning):
        embedder = openclip.load(request_spec(str(TINY_CONFIG), "none"), "cpu", "fp32")
    tokens = embedder.tokenizer(TEXTS)
    lengths = openclip.pooled_length(embedder.model, tokens)
    assert lengths is not None and int(lengths.max()) == tokens.shape[1]  # the long one is cut
    assert int(lengths.min()) == 2  # "" is start + end
    texts = TEXTS * 30  # more than one batch
    got = embedder.embed_texts(texts)
    want = _reference(embedder.model, embedder.tokenizer, texts)
    assert got.shape == want.shape and got.dtype == np.float32
    assert float((got * want).sum(axis=1).min()) >= 0.99999
    assert embedder.embed_texts([]).shape == (0, embedder.dim)
    assert isinstance(embedder.model, open_clip.model.CLIP)


def test_other_text_towers_keep_the_full_length():
    import open_clip
    import torch

    from organizer.embed import openclip

    open_clip.add_model_config(TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model("tiny-clip", force_custom_text=True).eval()
    tokenizer = open_clip.get_tokenizer("tiny-clip")
    assert openclip.pooled_length(model, tokenizer(TEXTS)) is None
    embedder = openclip.OpenClipEmbedder.__new__(openclip.OpenClipEmbedder)
    embedder.model, embedder.tokenizer, embedder.device, embedder.dim = model, tokenizer, "cpu", 32
    got = embedder.embed_texts(TEXTS)
    want = _reference(model, tokenizer, TEXTS)
    assert float((got * want).sum(axis=1).min()) >= 0.99999


# -- the real weights path, offline -----------------------------------------------------------

# What open_clip resolves the default model's tag to: the real repository and file name.
HUB_REPO = "laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K"
HUB_FILE = "open_clip_model.safetensors"


def _fake_hub_cache(hf_home: Path) -> Path:
    """A Hugging Face cache holding seeded random weights of ViT-B-32-256 where the hub client
    would have put the downloaded checkpoint (blob named by its hash, snapshot link, ref)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = open_clip.get_pretrained_cfg("ViT-B-32-256", "datacomp_s34b_b86k")
    assert cfg["hf_hub"].rstrip("/") == HUB_REPO  # what this test fakes is what open_clip reads
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = open_clip.create_model("ViT-B-32-256")
    repo = hf_home / "hub" / f"models--{HUB_REPO.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    tmp = repo / "blobs" / "incoming"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    blob = tmp.rename(repo / "blobs" / digest)
    commit = "0" * 40
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / HUB_FILE).symlink_to(os.path.relpath(blob, snapshot))
    return blob


_SAYS_TORCH = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: 'torch' in sys.modules and print('torch imported', file=sys.stderr))\n"
    "runpy.run_module('organizer', run_name='__main__')\n"
)


def _organizer(*args: str, env: dict, says_torch: bool = False) -> subprocess.CompletedProcess:
    """``organizer ARGS`` in a new process (saying last on stderr if it imported torch)."""
    return subprocess.run(
        [sys.executable, *(["-c", _SAYS_TORCH] if says_torch else ["-m", "organizer"]), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_pretrained_tag_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    """`--pretrained TAG` resolves through the Hugging Face cache with HF_HUB_OFFLINE=1 alone
    (no ORGANIZER_OFFLINE, no network): the library records the tag and the file's hash, a
    changed file is refused, a damaged or missing one is a one-line error."""
    monkeypatch.delenv("ORGANIZER_OFFLINE")
    hf_home = Path(os.environ["HF_HOME"])
    blob = _fake_hub_cache(hf_home)
    digest = blob.name
    photos = tmp_path / "photos"
    make_folder(photos, 3)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cpu = {**env, "ORGANIZER_DEVICE": "cpu"}  # exports the towers, even where a GPU is

    lib = tmp_path / "lib"
    done = _organizer("-L", str(lib), "ingest", str(photos), "--json", env=cpu)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["embedded"] == 3
    status = json.loads(_organizer("-L", str(lib), "status", "--json", env=env).stdout)
    model = status["model"]
    assert (model["name"], model["pretrained"]) == ("ViT-B-32-256", "datacomp_s34b_b86k")
    assert model["weights_sha256"] == digest
    assert "random" not in done.stderr

    # Another new library finds the file the tag names (and hashes it) without torch, where
    # the first load found it, and opens the towers exported from it.
    lib_b = str(tmp_path / "lib-b")
    other = _organizer("-L", lib_b, "ingest", str(photos), "--json", env=cpu, says_torch=True)
    assert other.returncode == 0, other.stderr
    assert "torch imported" not in other.stderr
    status = json.loads(_organizer("-L", lib_b, "status", "--json", env=env).stdout)
    assert status["model"]["weights_sha256"] == digest

    # The same tag asked for again is the same model; a search loads it from the cache.
    asked = {**env, "ORGANIZER_PRETRAINED": "datacomp_s34b_b86k"}
    found = _organizer("-L", str(lib), "search", "a dog", "--json", env=asked)
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)["results"]) == 3

    # Other content under the same name (a new revision, a damaged file): refused, one line,
    # where the weights are read (torch). The tower exported for ONNX Runtime from the
    # recorded weights still answers queries: it is keyed by their hash, not the file.
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1000:] = bytes(1000)
    blob.write_bytes(bytes(data))
    again = _organizer("-L", str(lib), "search", "a dog", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["results"] == json.loads(found.stdout)["results"]
    torch_env = {**env, "ORGANIZER_RUNTIME": "torch"}
    changed = _organizer("-L", str(lib), "search", "a dog", env=torch_env)
    assert changed.returncode == 1
    assert changed.stderr.strip().count("\n") == 0, changed.stderr
    assert "not the ones this library was built with" in changed.stderr
    assert "Traceback" not in changed.stderr

    blob.write_bytes(b"not a safetensors file" * 10)
    damaged = _organizer("-L", str(tmp_path / "lib2"), "ingest", str(photos), env=env)
    assert damaged.returncode == 1 and "Traceback" not in damaged.stderr
    assert "error: cannot load ViT-B-32-256/datacomp_s34b_b86k" in damaged.stderr

    blob.unlink()
    missing = _organizer("-L", str(tmp_path / "lib3"), "ingest", str(photos), env=env)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "are not cached and downloads are off" in missing.stderr
    assert missing.stderr.strip().count("\n") == 0, missing.stderr


def test_a_tag_remembered_here_is_hashed_from_the_file_it_names_now(tmp_path, monkeypatch):
    """Where a tag's checkpoint was found is remembered; the hash is always of the file
    there now (not remembered), and a damaged entry or a missing file leaves the tag to
    open_clip (torch), which says what is wrong."""
    from organizer.embed import ModelSpec, remembered

    spec = ModelSpec("fake", "some-tag")
    assert remembered.pinned_tag(spec) is None
    checkpoint = tmp_path / "weights.bin"
    checkpoint.write_bytes(b"one")
    remembered.remember_checkpoint(spec, {"path": str(checkpoint)})
    assert remembered.pinned_tag(spec) == ModelSpec(
        "fake", "some-tag", hashlib.sha256(b"one").hexdigest()
    )
    checkpoint.write_bytes(b"two")
    assert remembered.pinned_tag(spec).weights_sha256 == hashlib.sha256(b"two").hexdigest()
    assert remembered.pinned_tag(ModelSpec("fake", "other-tag")) is None
    checkpoint.unlink()
    assert remembered.pinned_tag(spec) is None
    for where in ({"hf_hub": "x"}, {"hf_hub": [[1]]}, {"path": 5}, ["x"]):
        remembered._weights_file().write_text(json.dumps({remembered._key(spec): where}))
        assert remembered.pinned_tag(spec) is None
    remembered._weights_file().write_text('{"damaged')
    assert remembered.pinned_tag(spec) is None

    # A tag downloaded by URL: its file name in open_clip's folder under today's home.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".cache" / "clip").mkdir(parents=True)
    (tmp_path / "home" / ".cache" / "clip" / "vit.pt").write_bytes(b"three")
    remembered.remember_checkpoint(spec, {"clip_cache_file": "vit.pt"})
    assert remembered.pinned_tag(spec).weights_sha256 == hashlib.sha256(b"three").hexdigest()


def test_a_remembered_tag_hash_is_used_only_where_towers_were_exported_from_it(
    tmp_path, monkeypatch
):
    """A file found without torch that no exported tower came from (a stale or hand-edited
    entry, a new revision) is left to torch to settle: the library's hash is never a guess."""
    from organizer.choices import Device, Precision, Runtime
    from organizer.embed import remembered, request_spec
    from organizer.embed.backend.cache import model_dir
    from organizer.embed.backend.towers import Towers
    from organizer.embed.onnx import OnnxEmbedder
    from organizer.embed.runtime import Plan

    spec = request_spec(str(TINY_CONFIG), "some-tag")
    checkpoint = tmp_path / "weights.bin"
    checkpoint.write_bytes(b"weights")
    remembered.remember_checkpoint(spec, {"path": str(checkpoint)})
    pinned = remembered.pinned_tag(spec)
    exported_with = []
    monkeypatch.setattr(Towers, "_export", lambda self, name: exported_with.append(self.spec))
    monkeypatch.setenv("ORGANIZER_MODEL_CACHE", str(tmp_path / "models"))
    fp32 = Plan(Device.CPU, Precision.FP32, Runtime.ONNX, exported=True)

    assert OnnxEmbedder(spec, fp32)._image_tower() is None
    assert exported_with == [spec]  # no hash: torch finds the file and hashes it

    model_dir(pinned).mkdir(parents=True)
    (model_dir(pinned) / "image.json").write_text("{}")  # a tower exported from that file
    assert OnnxEmbedder(spec, fp32)._image_tower() is None
    assert exported_with[-1] == pinned


def test_two_processes_remembering_at_once_keep_every_entry(tmp_path):
    import time

    from organizer.embed import remembered

    file, go = tmp_path / "weights.json", tmp_path / "go"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from organizer.embed import ModelSpec, remembered\n"
        "remembered._weights_file = lambda: Path(sys.argv[1])\n"
        "Path(sys.argv[1] + '.' + sys.argv[2]).touch()\n"
        "while not Path(sys.argv[3]).exists():\n"
        "    time.sleep(0.001)\n"
        "for i in range(100):\n"
        "    remembered.remember_checkpoint(ModelSpec(sys.argv[2], str(i)), {'path': str(i)})\n"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(file), name, str(go)]) for name in "ab"
    ]
    while not all(Path(f"{file}.{name}").exists() for name in "ab"):
        time.sleep(0.01)
    go.touch()  # both write at once
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    assert len(remembered._entries(file)) == 200
