"""open_clip's CLIP BPE tokenizer without torch: rebuilt in Hugging Face ``tokenizers``
when a text tower is exported (and kept only if it gives open_clip's tokens for every probe
text), or open_clip's own loaded from its module alone.

A text query then needs neither torch nor open_clip's model code: the rebuilt tokenizer
opens in milliseconds beside the exported text tower.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from organizer.atomic import move_over
from organizer.resources import vocabulary_path

# The texts every exported text tower is checked on (with its vectors kept beside it).
PROBE_TEXTS = ("a photo of a dog.", "", "a photo of a small red car by the sea at night.")

FAST_TOKENIZER = "text-tokenizer.json"
_SOT, _EOT = "<start_of_text>", "<end_of_text>"


# Where the `regex` module (open_clip) and Oniguruma (tokenizers) agree on which characters
# are letters and digits: they follow different Unicode versions past the Latin blocks.
_FAST_MAX_CODEPOINT = 0x24F


class FastTokenizer:
    """open_clip's CLIP BPE tokenizer rebuilt in Hugging Face ``tokenizers`` (no torch; the
    export checks it gives open_clip's tokens, every Latin character included). Texts it
    might split otherwise (other scripts, a literal special token) are left to open_clip's."""

    def __init__(self, path: Path, context_length: int | None, sha256: str | None = None):
        from tokenizers import Tokenizer

        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"{path} is damaged")
        self._tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        self._context = context_length or 77
        self._sot = self._tokenizer.token_to_id(_SOT)
        self._eot = self._tokenizer.token_to_id(_EOT)

    def __call__(self, texts: list[str]) -> np.ndarray | None:
        cleaned = [_clean(text) for text in texts]
        if any(_SOT in text or _EOT in text for text in cleaned):
            return None
        if any(max(map(ord, text), default=0) > _FAST_MAX_CODEPOINT for text in cleaned):
            return None
        rows = np.zeros((len(texts), self._context), dtype=np.int64)
        for i, encoding in enumerate(self._tokenizer.encode_batch(cleaned)):
            ids = [self._sot, *encoding.ids[: self._context - 2], self._eot]
            rows[i, : len(ids)] = np.asarray(ids, dtype=np.int64)
        return rows


def _clean(text: str) -> str:
    """open_clip's default text cleaning: ftfy, HTML entities, whitespace, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def build_fast_tokenizer(tokenizer: Any, path: Path, probe: list[str]) -> str | None:
    """Write ``tokenizer`` (open_clip's SimpleTokenizer) as a ``tokenizers`` file and keep it
    only if it gives the same tokens for every probe text; its SHA-256 (None: not kept)."""
    try:
        return _try_fast_tokenizer(tokenizer, path, probe)
    except Exception:  # another tokenizer layout: open_clip's own then (it imports torch)
        return None


def _try_fast_tokenizer(tokenizer: Any, path: Path, probe: list[str]) -> str | None:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    ranks = sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])
    model = models.BPE(
        vocab=dict(tokenizer.encoder), merges=[pair for pair, _ in ranks], end_of_word_suffix="</w>"
    )
    fast = Tokenizer(model)
    pattern = "(?i)" + tokenizer.pat.pattern.replace(f"{_SOT}|{_EOT}|", "")  # open_clip's flag
    fast.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    fast.add_special_tokens([_SOT, _EOT])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        fast.save(tmp)
        rebuilt = FastTokenizer(Path(tmp), tokenizer.context_length)
        covered = [text for text in probe if rebuilt([text]) is not None]  # the rest: open_clip
        rows = rebuilt(covered)
        if rows is None or not np.array_equal(rows, tokenizer(covered).numpy()):
            return None
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        os.chmod(tmp, 0o644)
        move_over(Path(tmp), path)
        return digest
    finally:
        Path(tmp).unlink(missing_ok=True)


def tokenizer_probe() -> list[str]:
    """Texts the rebuilt tokenizer must split as open_clip does: the probe, every line of the
    naming vocabulary, and the hard cases (case, spacing, entities, accents, scripts, emoji,
    digits, contractions, a text longer than the context)."""
    hard = [
        "Café  DÉJÀ vu\tOK\n",
        "東京タワー 서울 москва عربى",
        "🐶🐱 dog&amp;cat &lt;b&gt; rock'n'roll it's I'M we'll they'd",
        "ﬁne ＦＵＬＬ width 12345 3.14 1,000,000 #hashtag @user",
        "a photo of " + "a very long caption " * 30,
    ]
    latin = [
        chr(c)
        for c in range(0x20, _FAST_MAX_CODEPOINT + 1)
        if chr(c).isprintable() and not chr(c).isspace()
    ]
    every_latin = [f"{c} a{c}b {c}{c}9 it'{c}" for c in latin]
    lines = vocabulary_path().read_text(encoding="utf-8").splitlines()
    return [*PROBE_TEXTS, *hard, *every_latin, *(line for line in lines if line.strip())]


_TOKENIZERS: dict[int | None, Any] = {}


def clip_tokenizer(context_length: int | None) -> Any:
    """open_clip's CLIP BPE tokenizer, loaded from its module alone: ``import open_clip`` would
    also import torchvision and every model (about 2 s a text query does not need)."""
    if context_length not in _TOKENIZERS:
        make: Any
        try:
            found: Any = importlib.util.find_spec("open_clip")
            path = Path(next(iter(found.submodule_search_locations))) / "tokenizer.py"
            spec: Any = importlib.util.spec_from_file_location(
                "organizer_open_clip_tokenizer", path
            )
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            make = module.SimpleTokenizer
        except Exception:  # another layout of open_clip: the usual, slower import
            from open_clip.tokenizer import SimpleTokenizer

            make = SimpleTokenizer
        kwargs = {"context_length": context_length} if context_length else {}
        _TOKENIZERS[context_length] = make(**kwargs)
    return _TOKENIZERS[context_length]
