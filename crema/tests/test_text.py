"""The optional text path: aclImdb layout, tokeniser, vocabulary, models, and an end-to-end run (README, Text)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crema.eval import main as eval_main
from crema.eval import parse_args as eval_args
from crema.text import TextBiLSTM, TextCNN, Vocabulary, encode, load_acl_imdb, tokenize, write_synthetic_acl_imdb
from crema.train import main, parse_args


def test_tokenizer_and_vocabulary():
    assert tokenize("A <br />GREAT film!! It's not bad") == ["a", "great", "film", "!", "!", "it's", "not", "bad"]
    vocab = Vocabulary.build(["b a a", "c a b", "d"], size=4, min_freq=1)
    assert vocab.itos == ["<pad>", "<unk>", "a", "b"]  # a (3) > b (2) > c = d (1, cut by size)
    ids = encode(["a b c", ""], vocab, max_len=4)
    assert ids.tolist() == [[2, 3, 1, 0], [1, 0, 0, 0]]
    assert Vocabulary.build(["b a a", "c a b"], size=10, min_freq=2).itos == ["<pad>", "<unk>", "a", "b"]


def test_synthetic_corpus_is_in_the_aclimdb_layout(tmp_path):
    root = write_synthetic_acl_imdb(tmp_path, train_size=20, test_size=10, seed=0)
    assert len(list((root / "aclImdb" / "train" / "pos").glob("*_*.txt"))) == 10
    train = load_acl_imdb(root, "train")
    assert len(train) == 20 and train.labels.tolist() == [0] * 10 + [1] * 10
    ratings = [int(Path(f).stem.split("_")[1]) for f in train.files]
    assert all(r <= 4 for r in ratings[:10]) and all(r >= 7 for r in ratings[10:])
    again = write_synthetic_acl_imdb(tmp_path, train_size=20, test_size=10, seed=0)
    assert load_acl_imdb(again, "train").texts == train.texts  # cached, deterministic


def test_missing_or_broken_imdb_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="aclImdb"):
        load_acl_imdb(tmp_path, "train")
    write_synthetic_acl_imdb(tmp_path, train_size=4, test_size=2)
    (tmp_path / "aclImdb" / "train" / "neg" / "0_1.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(ValueError, match="0_1.txt"):
        load_acl_imdb(tmp_path, "train")


@pytest.mark.parametrize("cls", [TextBiLSTM, TextCNN])
def test_text_models_ignore_padding(cls):
    torch.manual_seed(0)
    model = cls(vocab_size=30, num_classes=2).eval()
    x = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0]])
    longer = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    logits, feats = model(x, return_features=True)
    assert logits.shape == (1, 2) and feats.shape == (1, model.num_features)
    if cls is TextBiLSTM:  # packed sequences: padding length does not matter
        assert torch.allclose(model(longer), logits, atol=1e-6)


def test_text_path_trains_and_evaluates_end_to_end(tmp_path):
    cfg = parse_args(
        [
            "-c",
            str(Path(__file__).resolve().parents[1] / "configs" / "imdb_synthetic.yaml"),
            "--output_dir",
            str(tmp_path / "run"),
            "--data.synthetic_train_size",
            "800",
            "--data.synthetic_test_size",
            "400",
            "--data.max_len",
            "64",
            "--model.arch",
            "text_cnn",
            "--optim.epochs",
            "8",
            "--method.warmup_epochs",
            "4",
            "--method.memory_length",
            "2",
            "--tensorboard",
            "false",
        ]
    )
    metrics = main(cfg)
    assert metrics["test_acc_last"] > 75.0  # chance is 50 %
    assert metrics["clean_n"] > 0 and metrics["clean_precision"] > metrics["noisy_label_acc"]
    result = eval_main(eval_args(["--checkpoint", str(tmp_path / "run" / "last.pt")]))
    assert result["test_acc"] == pytest.approx(metrics["test_acc_last"])
