"""Tests for scripts/prepare_corpus.py: LM1B layout, vocabulary, determinism, input modes."""

import collections
import filecmp
import importlib.util
import os
import subprocess
import sys

import pytest

from lm1b import data

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "scripts", "prepare_corpus.py")
TRAIN = "training-monolingual.tokenized.shuffled"
HELDOUT = "heldout-monolingual.tokenized.shuffled"


def load_script():
    spec = importlib.util.spec_from_file_location("prepare_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args, check=True):
    result = subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def read_dir(path):
    """Sentences of every file in a directory, as a Counter of lines."""
    lines = collections.Counter()
    for name in os.listdir(path):
        with open(os.path.join(path, name), encoding="utf-8") as f:
            lines.update(f.read().splitlines())
    return lines


def read_vocab(path):
    with open(path, encoding="utf-8") as f:
        return [(w, int(c)) for w, c in (line.split() for line in f)]


@pytest.fixture
def sentences_file(tmp_path):
    """400 distinct tokenized sentences with a Zipf-like word distribution."""
    words = [f"w{i}" for i in range(50)]
    lines = []
    for i in range(400):
        n = 3 + i % 7
        lines.append(" ".join(words[(i * (k + 3)) % (1 + i % 50)] for k in range(n)) + f" s{i}")
    path = tmp_path / "input.txt"
    path.write_text("\n".join(lines[:200]) + "\n\n   \n" + "\n".join(lines[200:]) + "\n")
    return path, lines


def test_layout_content_and_vocabulary(tmp_path, sentences_file):
    path, lines = sentences_file
    out = tmp_path / "out"
    result = run("--text", path, "--output_dir", out, "--heldout_fraction", 0.2)
    assert "lines/s" in result.stderr
    assert "train:" in result.stdout and "vocabulary:" in result.stdout
    train_files = sorted(os.listdir(out / TRAIN))
    heldout_files = sorted(os.listdir(out / HELDOUT))
    assert train_files == [f"news.en-{i:05d}-of-00100" for i in range(100)]
    assert heldout_files == [f"news.en.heldout-{i:05d}-of-00050" for i in range(50)]
    train, heldout = read_dir(out / TRAIN), read_dir(out / HELDOUT)
    assert train + heldout == collections.Counter(lines)  # each sentence exactly once
    assert 40 <= sum(heldout.values()) <= 120  # about 20% of 400

    vocab = read_vocab(out / "1b_word_vocab.txt")
    counts = collections.Counter(w for line in train.elements() for w in line.split())
    assert dict(vocab) == {
        **counts,
        "<S>": sum(train.values()),
        "</S>": sum(train.values()),
        "<UNK>": 0,
    }
    assert vocab == sorted(vocab, key=lambda wc: (-wc[1], wc[0]))
    loaded = data.Vocabulary.from_file(str(out / "1b_word_vocab.txt"))
    dataset = data.Dataset(loaded, str(out / TRAIN / "*"), deterministic=True)
    pairs = sum(float(w.sum()) for _, _, w in dataset.iterate_once(8, 5))
    assert pairs == sum(len(line.split()) + 1 for line in train.elements())


def test_an_empty_first_heldout_shard_is_warned_about(tmp_path, sentences_file):
    # --mode eval reads heldout shard 00000, so an empty one would give no perplexity.
    path, _ = sentences_file
    empty = run("--text", path, "--output_dir", tmp_path / "a", "--heldout_fraction", 0.001)
    assert os.path.getsize(tmp_path / "a" / HELDOUT / "news.en.heldout-00000-of-00050") == 0
    assert "warning: heldout shard 00000" in empty.stderr
    assert "--heldout_fraction" in empty.stderr
    full = run("--text", path, "--output_dir", tmp_path / "b", "--heldout_fraction", 0.2,
               "--num_heldout_shards", 1)
    assert os.path.getsize(tmp_path / "b" / HELDOUT / "news.en.heldout-00000-of-00001") > 0
    assert "warning" not in full.stderr


def test_same_inputs_and_seed_give_identical_output(tmp_path, sentences_file):
    path, _ = sentences_file
    args = ["--text", path, "--num_train_shards", 7, "--num_heldout_shards", 3]
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        run(*args, "--seed", seed, "--output_dir", tmp_path / name)
    for sub in (TRAIN, HELDOUT):
        names = sorted(os.listdir(tmp_path / "a" / sub))
        match, mismatch, errors = filecmp.cmpfiles(
            tmp_path / "a" / sub, tmp_path / "b" / sub, names, shallow=False
        )
        assert match == names and not mismatch and not errors
    assert filecmp.cmp(
        tmp_path / "a" / "1b_word_vocab.txt", tmp_path / "b" / "1b_word_vocab.txt", shallow=False
    )
    first = (tmp_path / "a" / TRAIN / "news.en-00000-of-00007").read_text()
    assert first != (tmp_path / "c" / TRAIN / "news.en-00000-of-00007").read_text()


def test_max_vocab_and_min_count_feed_unk(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("a a a b b c\na b d\na e e\n")
    run("--text", path, "--output_dir", tmp_path / "m", "--max_vocab", 5,
        "--heldout_fraction", 0, "--num_train_shards", 1, "--num_heldout_shards", 1)
    # a:5 b:3 e:2 c:1 d:1; room for 2 words besides <S> </S> <UNK>.
    assert read_vocab(tmp_path / "m" / "1b_word_vocab.txt") == [
        ("a", 5), ("<UNK>", 4), ("</S>", 3), ("<S>", 3), ("b", 3)
    ]
    run("--text", path, "--output_dir", tmp_path / "n", "--min_count", 2,
        "--heldout_fraction", 0, "--num_train_shards", 1, "--num_heldout_shards", 1)
    assert dict(read_vocab(tmp_path / "n" / "1b_word_vocab.txt")) == {
        "a": 5, "b": 3, "e": 2, "<S>": 3, "</S>": 3, "<UNK>": 2
    }


def test_raw_text_is_split_into_tokenized_sentences(tmp_path):
    path = tmp_path / "raw.txt"
    path.write_text(
        "Mr. Smith paid $2,000 for the U.S. Army's boat.\nIt didn't float! Did it?\n\n"
        '"No," said J. Doe -- twice...\n'
    )
    run("--raw", path, "--output_dir", tmp_path / "o", "--heldout_fraction", 0,
        "--num_train_shards", 1, "--num_heldout_shards", 1)
    assert read_dir(tmp_path / "o" / TRAIN) == collections.Counter([
        "Mr. Smith paid $ 2,000 for the U.S. Army 's boat .",
        "It didn 't float !",
        "Did it ?",
        '" No , " said J. Doe -- twice ...',
    ])


def test_tokenizer_and_sentence_splitter():
    script = load_script()
    assert script.tokenize("e.g. 3.5% of 1990s' 6-3 wins, can't.") == [
        "e.g.", "3.5", "%", "of", "1990s", "'", "6-3", "wins", ",", "can", "'t", "."
    ]
    assert script.split_sentences("The answer is no. He left. Dr. Who? Yes.") == [
        "The answer is no.", "He left.", "Dr. Who?", "Yes."
    ]


def test_ptb_layout(tmp_path):
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    (ptb / "ptb.train.txt").write_text(" the cat <unk> \n the dog \n")
    (ptb / "ptb.valid.txt").write_text(" a valid line \n another valid line \n")
    (ptb / "ptb.test.txt").write_text(" the test <unk> line \n")
    run("--ptb_dir", ptb, "--output_dir", tmp_path / "o", "--num_train_shards", 2,
        "--num_heldout_shards", 3)
    assert read_dir(tmp_path / "o" / TRAIN) == collections.Counter(["the cat <UNK>", "the dog"])
    held = tmp_path / "o" / HELDOUT
    assert (held / "news.en.heldout-00000-of-00003").read_text() == "the test <UNK> line\n"
    valid = (held / "news.en.heldout-00001-of-00003").read_text() + (
        held / "news.en.heldout-00002-of-00003"
    ).read_text()
    assert sorted(valid.splitlines()) == ["a valid line", "another valid line"]
    assert dict(read_vocab(tmp_path / "o" / "1b_word_vocab.txt"))["<UNK>"] == 1


def test_errors(tmp_path, sentences_file):
    path, _ = sentences_file
    out = tmp_path / "o"
    run("--text", path, "--output_dir", out)
    result = run("--text", path, "--output_dir", out, check=False)
    assert result.returncode != 0 and "already exists" in result.stderr
    result = run("--text", tmp_path / "missing.txt", "--output_dir", tmp_path / "x", check=False)
    assert result.returncode != 0 and "missing.txt' does not exist" in result.stderr
    result = run("--output_dir", tmp_path / "x", check=False)
    assert result.returncode != 0 and "give at least one input" in result.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbad \x92 line\n")
    result = run("--text", bad, "--output_dir", tmp_path / "y", check=False)
    assert result.returncode != 0 and "bad.txt', line 2 is not valid UTF-8" in result.stderr
    run("--text", bad, "--output_dir", tmp_path / "z", "--errors", "replace")
    assert "\ufffd" in dict(read_vocab(tmp_path / "z" / "1b_word_vocab.txt"))
