"""CREMA's optional text path (the paper's IMDB claim): the ``aclImdb`` layout, a tokeniser and small classifiers.

Nothing else in the package imports this module unless ``data.dataset`` is ``imdb`` or a text model is built.

* :func:`load_acl_imdb`: the official Large Movie Review Dataset layout (Maas et al. 2011)::

      <root>/aclImdb/train/pos/<id>_<rating>.txt   12 500 files (rating 7-10)
      <root>/aclImdb/train/neg/<id>_<rating>.txt   12 500 files (rating 1-4)
      <root>/aclImdb/test/pos/...  <root>/aclImdb/test/neg/...
      (train/unsup/, imdb.vocab, *.feat files are not needed)

  Labels: neg = 0, pos = 1. Files are read in sorted order (pos and neg interleaved by sort), so a dataset gives the
  same tensors on every machine.
* :func:`tokenize` / :class:`Vocabulary`: lower-case, ``<br />`` removed, words (letters, digits, apostrophes) and
  ``! ?`` as tokens; the vocabulary holds the ``size - 2`` most frequent training tokens seen at least ``min_freq``
  times (ties broken alphabetically), id 0 = padding, 1 = unknown.
* :func:`write_synthetic_acl_imdb`: a seeded corpus in the same layout for the embedded run and the tests.
* :class:`TextBiLSTM` (embedding + bidirectional LSTM, final states of both directions) and :class:`TextCNN`
  (Kim-style convolutions 3/4/5 with max-over-time pooling): both with ``forward_features`` / ``forward_head`` /
  ``forward(x, return_features=False)`` like the image backbones of :mod:`shared.noisy.models`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from shared.noisy.models import FeatureClassifier

__all__ = [
    "TextBiLSTM",
    "TextCNN",
    "TextSplit",
    "Vocabulary",
    "encode",
    "load_acl_imdb",
    "tokenize",
    "write_synthetic_acl_imdb",
]

_TOKEN = re.compile(r"[a-z0-9']+|[!?]")
_LAYOUT = (
    "<root>/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt  (the official aclImdb_v1.tar.gz unpacked; "
    "https://ai.stanford.edu/~amaas/data/sentiment/)"
)
_SYNTHETIC_MARKER = "_SYNTHETIC.json"
PAD, UNK = 0, 1


@dataclass
class TextSplit:
    """One split: the review texts and their labels (neg 0, pos 1)."""

    texts: list[str]
    labels: torch.Tensor
    files: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def load_acl_imdb(root: str | Path, split: str) -> TextSplit:
    """Read ``<root>/aclImdb/<split>/{neg,pos}/*.txt`` (``split``: ``train`` or ``test``).

    Raises ``FileNotFoundError`` naming the first missing folder (with the expected layout) and ``ValueError``
    naming a file that is not UTF-8 text or a folder without reviews.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = Path(root) / "aclImdb" / split
    texts, labels, files = [], [], []
    for label, polarity in enumerate(("neg", "pos")):
        folder = base / polarity
        if not folder.is_dir():
            raise FileNotFoundError(f"IMDB (aclImdb) not found: expected the folder {folder}. Layout: {_LAYOUT}")
        paths = sorted(folder.glob("*.txt"))
        if not paths:
            raise ValueError(f"{folder} holds no *.txt reviews. Layout: {_LAYOUT}")
        for path in paths:
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, OSError) as error:
                raise ValueError(f"could not read IMDB review {path}: {error}") from error
            labels.append(label)
            files.append(str(path.relative_to(base)))
    return TextSplit(texts, torch.tensor(labels, dtype=torch.int64), files)


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of a review (HTML line breaks removed)."""
    return _TOKEN.findall(text.lower().replace("<br />", " "))


class Vocabulary:
    """Token -> id map built from training texts: 0 = padding, 1 = unknown, then by frequency (ties: alphabetical)."""

    def __init__(self, tokens: Sequence[str]):
        self.itos = ["<pad>", "<unk>", *tokens]
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Sequence[str], size: int, min_freq: int = 1) -> Vocabulary:
        """The ``size - 2`` most frequent tokens of ``texts`` that occur at least ``min_freq`` times."""
        if size < 3:
            raise ValueError(f"vocabulary size must be >= 3 (padding, unknown, one token), got {size}")
        counts = Counter(token for text in texts for token in tokenize(text))
        ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls(ranked[: size - 2])

    def __len__(self) -> int:
        return len(self.itos)


def encode(texts: Sequence[str], vocab: Vocabulary, max_len: int) -> torch.Tensor:
    """``N x max_len`` int64 token ids (first ``max_len`` tokens, right-padded with 0; an empty review is one UNK)."""
    ids = np.zeros((len(texts), max_len), dtype=np.int64)
    for row, text in enumerate(texts):
        tokens = [vocab.stoi.get(t, UNK) for t in tokenize(text)[:max_len]] or [UNK]
        ids[row, : len(tokens)] = tokens
    return torch.from_numpy(ids)


# ------------------------------------------------------------------------------------------ synthetic corpus
_POSITIVE = [
    "great",
    "excellent",
    "wonderful",
    "superb",
    "brilliant",
    "moving",
    "delightful",
    "touching",
    "charming",
    "masterpiece",
    "beautiful",
    "funny",
    "enjoyable",
    "gripping",
    "stunning",
    "memorable",
    "fantastic",
    "powerful",
    "clever",
    "heartfelt",
]
_NEGATIVE = [
    "awful",
    "terrible",
    "boring",
    "dull",
    "horrible",
    "waste",
    "poor",
    "stupid",
    "bland",
    "tedious",
    "mess",
    "weak",
    "predictable",
    "annoying",
    "pointless",
    "clumsy",
    "lame",
    "forgettable",
    "painful",
    "ridiculous",
]
_NEUTRAL = [
    "the",
    "a",
    "movie",
    "film",
    "story",
    "plot",
    "actor",
    "actress",
    "director",
    "scene",
    "character",
    "script",
    "camera",
    "music",
    "ending",
    "the",
    "and",
    "of",
    "to",
    "in",
    "it",
    "this",
    "that",
    "was",
    "is",
    "with",
    "for",
    "as",
    "on",
    "his",
    "her",
    "they",
    "we",
    "saw",
    "watched",
    "cast",
    "role",
    "minutes",
    "hour",
    "screen",
    "time",
    "year",
    "series",
    "sequel",
    "drama",
    "comedy",
    "thriller",
    "dialogue",
    "set",
    "effects",
    "studio",
    "audience",
    "theater",
    "night",
    "friend",
]


def _review(rng: np.random.Generator, positive: bool) -> str:
    own, other = (_POSITIVE, _NEGATIVE) if positive else (_NEGATIVE, _POSITIVE)
    words = list(rng.choice(_NEUTRAL, size=int(rng.integers(20, 60))))
    # Sentiment words of both polarities: the review's own outnumber the others only on average, so some
    # reviews are ambiguous and the task is not trivially separable.
    cues = list(rng.choice(own, size=int(rng.poisson(3.0)) + 2)) + list(rng.choice(other, size=int(rng.poisson(1.5))))
    for cue in cues:
        words.insert(int(rng.integers(0, len(words) + 1)), cue)
    if rng.random() < 0.3:
        words.insert(int(rng.integers(0, len(words) + 1)), "<br /><br />")
    return " ".join(words).capitalize() + "."


def write_synthetic_acl_imdb(root: str | Path, train_size: int = 2000, test_size: int = 500, seed: int = 0) -> Path:
    """Write (or reuse) a seeded synthetic corpus in the ``aclImdb`` layout under ``root`` and return ``root``.

    Half of each split is positive (ratings 7-10), half negative (1-4); reviews are neutral filler with Poisson
    numbers of sentiment words of both polarities. Idempotent: a ``_SYNTHETIC.json`` marker with the arguments
    is written last; a matching call returns at once; a folder without the marker is never overwritten.
    """
    root = Path(root)
    params = {"generator": "crema.text", "version": 2, "train": train_size, "test": test_size, "seed": seed}
    target = root / "aclImdb"
    marker = target / _SYNTHETIC_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    if target.exists() and not marker.is_file():
        raise FileExistsError(f"{target} exists and is not a synthetic corpus (no {_SYNTHETIC_MARKER}); not touched")
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".aclImdb.tmp-", dir=root))
    for split_id, (split, size) in enumerate((("train", train_size), ("test", test_size))):
        for label, polarity in enumerate(("neg", "pos")):
            folder = scratch / split / polarity
            folder.mkdir(parents=True)
            for i in range(size // 2 + (label == 0) * (size % 2)):
                rng = np.random.default_rng([seed, split_id, label, i])
                rating = int(rng.integers(7, 11)) if label else int(rng.integers(1, 5))
                (folder / f"{i}_{rating}.txt").write_text(_review(rng, bool(label)), encoding="utf-8")
    (scratch / "imdb.vocab").write_text("\n".join(sorted(set(_POSITIVE + _NEGATIVE + _NEUTRAL))) + "\n")
    (scratch / _SYNTHETIC_MARKER).write_text(json.dumps(params))
    if target.exists():
        shutil.rmtree(target)
    os.replace(scratch, target)
    return root


# ------------------------------------------------------------------------------------------------- models
class TextBiLSTM(FeatureClassifier):
    """Embedding + one-layer bidirectional LSTM; features = the final hidden states of both directions (2 x hidden).

    Padding (id 0) is skipped with packed sequences, so a review's features do not depend on its padding.
    """

    def __init__(self, vocab_size: int, num_classes: int = 2, embed_dim: int = 64, hidden: int = 64, dropout=0.3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.num_features = 2 * hidden
        self.linear = nn.Linear(2 * hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        lengths = (x != PAD).sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.embedding(x), lengths, batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)
        return torch.cat([hidden[0], hidden[1]], dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(features))


class TextCNN(FeatureClassifier):
    """Embedding + 1-d convolutions (kernel sizes 3, 4, 5) with ReLU and max-over-time pooling (Kim, 2014)."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        embed_dim: int = 64,
        filters: int = 64,
        kernel_sizes: Sequence[int] = (3, 4, 5),
        dropout: float = 0.5,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, filters, k, padding=k - 1) for k in kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.num_features = filters * len(kernel_sizes)
        self.linear = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(x).transpose(1, 2)  # N x E x L
        return torch.cat([F.relu(conv(emb)).amax(dim=2) for conv in self.convs], dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(features))
