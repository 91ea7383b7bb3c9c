"""organizer's seeded random ViT-B-32-256, written in the layout rclip 4 reads its model from.

    python bench/rclip_model.py DIR [--check-with /work/rclip-venv/bin/python]

Run it with organizer's venv; torch's ONNX exporter needs the `onnx` package there
(`pip install onnx`). bench/ingest.py --rclip calls it itself (into $ORGANIZER_BENCH_DATA).

Why: rclip 4 (our closest peer) runs open_clip's ViT-B-32-256 through ONNX Runtime and
downloads its ONNX files from Hugging Face on first use. The benchmarks have no network and
run random weights, so to time rclip on the same compute this writes the same architecture
with the very weights `organizer ingest --pretrained none` uses: the model is built by
organizer.embed.openclip.load (torch.manual_seed(0) in a forked RNG, then
open_clip.create_model(..., pretrained=None)), on the CPU, in fp32. Files written:

    DIR/ViT-B-32-256-datacomp_s34b_b86k/visual.onnx   image tower: "input", float32
        [N, 3, 256, 256] (normalised pixels) -> "output", float32 [N, 512] (not unit length)
    DIR/ViT-B-32-256-datacomp_s34b_b86k/textual.onnx  text tower: "input", int64 [N, 77]
        tokens -> "output", float32 [N, 512]
    DIR/tokenizer/bpe_simple_vocab_16e6.txt.gz        the CLIP BPE vocabulary, from open_clip
    DIR/LICENSE, OPENAI-CLIP-MIT.txt, README.md, THIRD_PARTY_NOTICES.md
        short placeholders: rclip downloads its model unless these exist too
    DIR/organizer-weights.txt                         fingerprint of the weights, written last

rclip finds its model (and keeps its database) in $RCLIP_DATADIR: point it at DIR, or, as
bench/ingest.py does, at a fresh directory of links to these files. The names are those of
rclip 4.0.x (its rclip/model_download.py); another version may look for others. Both towers
are exported fp32 (opset 18, batch axis dynamic), as rclip's own published ONNX files are
(its scripts/convert_model.py), so neither tool gets a cheaper model. --check-with runs the
files in ONNX Runtime with that Python (one that has onnxruntime, e.g. rclip's venv) and
compares them with torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MODEL = "ViT-B-32-256"
SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"
VISUAL, TEXTUAL = "visual.onnx", "textual.onnx"
VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
PLACEHOLDERS = ("LICENSE", "OPENAI-CLIP-MIT.txt", "README.md", "THIRD_PARTY_NOTICES.md")
FINGERPRINT = "organizer-weights.txt"
IMAGE_SIZE, CONTEXT = 256, 77


def load_seeded():
    """organizer's fp32 CPU embedder of MODEL with its seeded random weights."""
    import warnings

    from organizer.embed import ModelSpec
    from organizer.embed.openclip import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load(ModelSpec(MODEL, "none"), device="cpu", precision="fp32")


def fingerprint(model) -> str:
    """SHA-256 over the model's parameters and buffers, in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _towers(model):
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = model

        def forward(self, pixels):
            return self.clip.encode_image(pixels)

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = model

        def forward(self, tokens):
            return self.clip.encode_text(tokens)

    return ImageTower().eval(), TextTower().eval()


def _export(module, example, path: Path) -> None:
    import torch

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel has no ONNX form
    try:
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=18,
            dynamo=False,
        )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def export(embedder, directory: Path) -> None:
    """Write the layout above into ``directory`` (replaced if it exists)."""
    import warnings

    import open_clip
    import torch

    if directory.exists():
        if any(directory.iterdir()) and not (directory / FINGERPRINT).is_file():
            sys.exit(f"{directory} is not empty and not an earlier export: not replacing it")
        shutil.rmtree(directory)
    (directory / SUBDIR).mkdir(parents=True)
    (directory / VOCAB).parent.mkdir(parents=True)
    image_tower, text_tower = _towers(embedder.model)
    pixels = torch.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE))
    tokens = embedder.tokenizer(["a photo"])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        _export(image_tower, pixels, directory / SUBDIR / VISUAL)
        _export(text_tower, tokens, directory / SUBDIR / TEXTUAL)
    if list(directory.glob(f"{SUBDIR}/*.data")):
        sys.exit("the exporter wrote external weight files, which rclip does not read")
    shutil.copyfile(Path(open_clip.__file__).parent / Path(VOCAB).name, directory / VOCAB)
    for name in PLACEHOLDERS:
        (directory / name).write_text(
            f"Placeholder written by organizer's bench/rclip_model.py: {MODEL} with seeded "
            "random weights, for benchmarks only.\n"
        )
    (directory / FINGERPRINT).write_text(fingerprint(embedder.model) + "\n")


def ensure(directory: Path, embedder=None) -> Path:
    """``directory`` holding the export of organizer's current seeded weights (re-exported when
    the fingerprint differs, e.g. after a torch or open_clip upgrade)."""
    embedder = embedder or load_seeded()
    marker = directory / FINGERPRINT
    if not marker.is_file() or marker.read_text().strip() != fingerprint(embedder.model):
        print(f"exporting seeded {MODEL} for rclip into {directory} ...", flush=True)
        export(embedder, directory)
    return directory


def link_datadir(model_dir: Path) -> Path:
    """A fresh rclip data directory (empty database) whose model files link to ``model_dir``."""
    datadir = Path(tempfile.mkdtemp(prefix="bench-rclip-"))
    for name in (SUBDIR, Path(VOCAB).parts[0], *PLACEHOLDERS):
        (datadir / name).symlink_to(model_dir.resolve() / name)
    return datadir


_ORT_SNIPPET = """
import sys, numpy as np, onnxruntime as ort
folder = sys.argv[1]
for name, tower in (("pixels", "visual.onnx"), ("tokens", "textual.onnx")):
    session = ort.InferenceSession(f"{folder}/model/{tower}", providers=["CPUExecutionProvider"])
    x = np.load(f"{folder}/{name}.npy")
    np.save(f"{folder}/{name}-out.npy", session.run(None, {"input": x})[0])
"""


def check(embedder, directory: Path, python: str) -> dict[str, float]:
    """Max abs difference and min cosine of the ONNX towers (run by ``python``) vs torch."""
    import torch

    work = Path(tempfile.mkdtemp(prefix="bench-rclip-check-"))
    (work / "model").symlink_to((directory / SUBDIR).resolve())
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((3, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    tokens = embedder.tokenizer(["a photo of a cat", "a dog", "a mountain lake at dawn"])
    np.save(work / "pixels.npy", pixels)
    np.save(work / "tokens.npy", tokens.numpy())
    subprocess.run([python, "-c", _ORT_SNIPPET, str(work)], check=True)
    with torch.inference_mode():
        expected = {
            "pixels": embedder.model.encode_image(torch.from_numpy(pixels)).numpy(),
            "tokens": embedder.model.encode_text(tokens).numpy(),
        }
    out = {}
    for name, want in expected.items():
        got = np.load(work / f"{name}-out.npy")
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        out[f"{name}_max_abs_diff"] = float(np.abs(got - want).max())
        out[f"{name}_cos_min"] = float(cos.min())
    shutil.rmtree(work)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument(
        "--check-with", metavar="PYTHON", help="a Python with onnxruntime, to check the files"
    )
    args = parser.parse_args()
    embedder = load_seeded()
    ensure(args.directory, embedder)
    print(f"{args.directory}: seeded {MODEL}, weights sha256 {fingerprint(embedder.model)[:16]}")
    if args.check_with:
        result = check(embedder, args.directory, args.check_with)
        print(json.dumps(result, indent=2))
        if min(result["pixels_cos_min"], result["tokens_cos_min"]) < 0.9999:
            sys.exit("the ONNX towers do not match torch")


if __name__ == "__main__":
    main()
