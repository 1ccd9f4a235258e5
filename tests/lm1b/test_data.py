"""Tests for lm1b.data: vocabulary parsing, batch layout, coverage, shuffling, sharding."""

import collections
import os
import time

import numpy as np
import pytest

from lm1b import data

FLM = os.path.join(
    os.path.dirname(__file__), "..", "..", "data", "tiny_corpus", "sources", "flm"
)
FLM_VOCAB = os.path.join(FLM, "test_vocab.txt")
FLM_SENTENCES = os.path.join(FLM, "test_sentences.txt")


def write(path, text, mode="w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        f.write(text)
    return str(path)


def reference_sentences(vocab, paths):
    """The deterministic sentence stream, computed the obvious way."""
    sentences = []
    for path in sorted(paths):
        with open(path, encoding="utf-8") as f:
            for line in f.read().split("\n"):
                if line.split():
                    sentences.append([vocab.get_id(w) for w in line.split()])
    return sentences


def reference_batches(sentences, s_id, batch_size, num_steps):
    """iterate_once's documented layout, built token by token."""
    rows = [[s_id] for _ in range(batch_size)]
    for i, sentence in enumerate(sentences):
        rows[i % batch_size] += sentence + [s_id]
    num_batches = max(-(-(len(r) - 1) // num_steps) for r in rows)
    batches = []
    for k in range(num_batches):
        x = np.zeros([batch_size, num_steps], np.int32)
        y = np.zeros_like(x)
        w = np.zeros([batch_size, num_steps], np.float32)
        for r, row in enumerate(rows):
            for t in range(num_steps):
                i = k * num_steps + t
                if i + 1 < len(row):
                    x[r, t], y[r, t], w[r, t] = row[i], row[i + 1], 1.0
        batches.append((x, y, w))
    return batches


def sentence_pairs(sentences, s_id):
    pairs = collections.Counter()
    for sentence in sentences:
        tokens = [s_id] + sentence + [s_id]
        pairs.update(zip(tokens[:-1], tokens[1:]))
    return pairs


def batch_pairs(batches):
    pairs = collections.Counter()
    for x, y, w in batches:
        mask = w > 0
        pairs.update(zip(x[mask].tolist(), y[mask].tolist()))
    return pairs


def rows_to_sentences(batches, s_id):
    """Recovers each row's sentences from a batch sequence (inverse of the packing)."""
    sentences = []
    batch_size = batches[0][0].shape[0]
    for r in range(batch_size):
        tokens = [int(batches[0][0][r, 0])]
        for _, y, w in batches:
            tokens += y[r][w[r] > 0].tolist()
        current = []
        for token in tokens[1:]:
            if token == s_id:
                sentences.append(tuple(current))
                current = []
            else:
                current.append(token)
    return sentences


@pytest.fixture(scope="module")
def flm_vocab():
    return data.Vocabulary.from_file(FLM_VOCAB)


@pytest.fixture
def corpus(tmp_path):
    """Five files of unique sentences over a 60-word vocabulary, plus blank lines."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    vocab_lines = ["<S> 100", "<UNK> 50"] + [f"{w} {60 - i}" for i, w in enumerate(words)]
    vocab_path = write(tmp_path / "vocab.txt", "\n".join(vocab_lines) + "\n")
    seen = set()
    for f in range(5):
        lines = []
        for _ in range(int(rng.integers(8, 20))):
            n = int(rng.integers(3, 12))
            # A few out-of-vocabulary words exercise <UNK>.
            sentence = " ".join(
                words[int(i)] if i < 60 else f"oov{i}" for i in rng.integers(0, 64, n)
            )
            if sentence in seen:
                continue
            seen.add(sentence)
            lines.append(sentence)
        lines.insert(3, "")
        lines.insert(5, "  \t ")
        write(tmp_path / "train" / f"news.en-{f:05d}-of-00005", "\n".join(lines) + "\n")
    write(tmp_path / "train" / "news.en-00009-of-00005-empty", "")
    vocab = data.Vocabulary.from_file(vocab_path)
    return vocab, str(tmp_path / "train" / "news.en-*")


# Vocabulary ------------------------------------------------------------------


def test_flm_test_vocab_numbers(flm_vocab):
    assert flm_vocab.num_tokens == 1000
    assert flm_vocab.s == "<S>" and flm_vocab.s_id == 2
    assert flm_vocab.unk == "<UNK>" and flm_vocab.unk_id == 38
    assert flm_vocab.get_id("the") == 0 and flm_vocab.get_token(0) == "the"
    assert flm_vocab.get_id("no-such-word-xyz") == 38
    assert flm_vocab.counts[0] == 35936573 and flm_vocab.counts.dtype == np.int64
    with pytest.raises(ValueError, match=r"Token id 1000 is out of range.*0\.\.999"):
        flm_vocab.get_token(1000)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("<S> 1\n<UNK> 2\nnew york 3\n", r"line 3: expected 'word count'.*'new york 3'"),
        ("<S> 1\n\n<UNK> 2\n", r"line 2: expected 'word count'"),
        ("<S> 1\n<UNK> 2\nthe\n", r"line 3: expected 'word count'.*'the'"),
        ("<S> 1\n<UNK> x2\n", r"line 2: the count 'x2' is not an integer"),
        ("<S> 1\n<UNK> -2\n", r"line 2: the count '-2' is not an integer"),
        ("<S> 1\nthe 5\n<UNK> 2\nthe 4\n", r"line 4: 'the' already appears on line 2"),
        ("the 1\n<UNK> 2\n", r"no '<S>' line.*Add a line '<S> <count>'"),
        ("the 1\n<S> 2\n", r"no '<UNK>' line.*Add a line '<UNK> <count>'"),
    ],
)
def test_vocab_errors_name_file_line_and_fix(tmp_path, text, pattern):
    path = write(tmp_path / "bad_vocab.txt", text)
    with pytest.raises(ValueError, match=pattern) as info:
        data.Vocabulary.from_file(path)
    assert "bad_vocab.txt" in str(info.value)


def test_a_missing_vocab_file_names_the_layout(tmp_path):
    with pytest.raises(ValueError, match=r"No vocabulary file '.*nothing\.txt'.*LM1B layout.*prepare_corpus"):
        data.Vocabulary.from_file(str(tmp_path / "nothing.txt"))


def test_vocab_invalid_utf8_names_line(tmp_path):
    path = write(tmp_path / "v.txt", b"<S> 1\n<UNK> 2\nb\xffd 3\n", "wb")
    with pytest.raises(ValueError, match=r"Invalid UTF-8 in .*v\.txt', line 3"):
        data.Vocabulary.from_file(path)


def test_vocab_accepts_crlf_tabs_and_no_final_newline(tmp_path):
    path = write(tmp_path / "v.txt", "<S>\t7\r\n  <UNK>  2 \r\nthe 1")
    vocab = data.Vocabulary.from_file(path)
    assert vocab.tokens == ["<S>", "<UNK>", "the"]
    assert vocab.counts.tolist() == [7, 2, 1]


def test_vocab_of_800k_lines_loads_fast(tmp_path):
    n = 800_000
    lines = ["<S> 9", "</S> 9", "<UNK> 9"] + [f"w{i}x {n - i}" for i in range(n - 3)]
    path = write(tmp_path / "big.txt", "\n".join(lines) + "\n")
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        vocab = data.Vocabulary.from_file(path)
        best = min(best, time.perf_counter() - start)
    assert vocab.num_tokens == n and vocab.get_id(f"w{n - 4}x") == n - 1
    assert best < 2.5, f"loading {n} lines took {best:.2f} s"


def test_check_vocab_size(flm_vocab):
    data.check_vocab_size(flm_vocab, 1000)
    with pytest.raises(ValueError, match=r"has 1000 tokens but vocab_size=793470.*vocab_size=1000"):
        data.check_vocab_size(flm_vocab, 793470)


# Batches ---------------------------------------------------------------------


@pytest.mark.parametrize("lines_per_chunk", [3, 8192])  # batches must not depend on it
@pytest.mark.parametrize("batch_size, num_steps", [(1, 1), (3, 5), (4, 7), (64, 20)])
def test_iterate_once_matches_reference_on_lm1b_sentences(
    flm_vocab, batch_size, num_steps, lines_per_chunk, monkeypatch
):
    monkeypatch.setattr(data, "_LINES_PER_CHUNK", lines_per_chunk)
    dataset = data.Dataset(flm_vocab, FLM_SENTENCES, deterministic=True)
    got = list(dataset.iterate_once(batch_size, num_steps))
    sentences = reference_sentences(flm_vocab, [FLM_SENTENCES])
    want = reference_batches(sentences, flm_vocab.s_id, batch_size, num_steps)
    assert len(got) == len(want)
    for (x, y, w), (rx, ry, rw) in zip(got, want):
        assert x.dtype == np.int32 and y.dtype == np.int32 and w.dtype == np.float32
        assert x.shape == y.shape == w.shape == (batch_size, num_steps)
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(w, rw)
    # Every (x, y) pair of every sentence exactly once, whatever the layout.
    assert batch_pairs(got) == sentence_pairs(sentences, flm_vocab.s_id)


def test_iterate_once_skips_blank_lines_and_empty_files(corpus):
    vocab, pattern = corpus
    dataset = data.Dataset(vocab, pattern, deterministic=True)
    files = sorted(dataset.files)
    assert len(files) == 6  # five corpus files and one empty file
    sentences = reference_sentences(vocab, files)
    got = list(dataset.iterate_once(3, 4))
    want = reference_batches(sentences, vocab.s_id, 3, 4)
    for a, b in zip(got, want, strict=True):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    assert vocab.unk_id in np.concatenate([x.ravel() for x, _, _ in got])


def test_iterate_forever_continues_rows_across_batches_and_passes(corpus, monkeypatch):
    monkeypatch.setattr(data, "_LINES_PER_CHUNK", 5)
    vocab, pattern = corpus
    dataset = data.Dataset(vocab, pattern, deterministic=True)
    sentences = reference_sentences(vocab, dataset.files)
    it = dataset.iterate_forever(4, 6)
    got = [next(it) for _ in range(60)]  # about three passes
    assert sum(len(s) + 1 for s in sentences) * 2 < 60 * 4 * 6
    want = reference_batches(sentences * 4, vocab.s_id, 4, 6)[:60]
    for (x, y, w), (rx, ry, _) in zip(got, want):
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
        assert (w == 1).all()
    for (_, y0, _), (x1, _, _) in zip(got, got[1:]):
        np.testing.assert_array_equal(x1[:, 0], y0[:, -1])


def test_shuffling_changes_order_not_content(corpus):
    vocab, pattern = corpus
    ordered = data.Dataset(vocab, pattern, deterministic=True)
    runs = {
        seed: list(data.Dataset(vocab, pattern, seed=seed).iterate_once(3, 4))
        for seed in (1, 2)
    }
    again = list(data.Dataset(vocab, pattern, seed=1).iterate_once(3, 4))
    plain = list(ordered.iterate_once(3, 4))

    def stream(batches):
        return np.concatenate([x.ravel() for x, _, _ in batches])

    np.testing.assert_array_equal(stream(again), stream(runs[1]))
    assert not np.array_equal(stream(runs[1]), stream(runs[2]))
    assert not np.array_equal(stream(runs[1]), stream(plain))
    want = sorted(rows_to_sentences(plain, vocab.s_id))
    for batches in runs.values():
        assert sorted(rows_to_sentences(batches, vocab.s_id)) == want
        assert batch_pairs(batches) == batch_pairs(plain)


def test_shuffling_permutes_lines_within_files(tmp_path):
    words = "".join(f"w{i} 1\n" for i in range(40))
    vocab_path = write(tmp_path / "v.txt", "<S> 1\n<UNK> 1\n" + words)
    vocab = data.Vocabulary.from_file(vocab_path)
    pattern = write(tmp_path / "one.txt", "".join(f"w{i}\n" for i in range(40)))
    (x, _, _), *_ = data.Dataset(vocab, pattern, seed=3).iterate_once(1, 80)
    order = [vocab.get_token(int(t)) for t in x[0] if t != vocab.s_id]
    assert sorted(order) == sorted(f"w{i}" for i in range(40))
    assert order != [f"w{i}" for i in range(40)]


@pytest.mark.parametrize("num_shards", [2, 3, 5, 8])
def test_shards_are_disjoint_and_cover_the_corpus(corpus, num_shards):
    # 6 files: 2, 3 and 5 shards split files, 8 shards split lines.
    vocab, pattern = corpus
    whole = sorted(
        tuple(s) for s in reference_sentences(vocab, data.Dataset(vocab, pattern).files)
    )
    union = []
    for k in range(num_shards):
        shard = data.Dataset(vocab, pattern, shard_index=k, num_shards=num_shards, seed=k)
        assert (shard.line_shard is None) == (num_shards <= 6)
        union += rows_to_sentences(list(shard.iterate_once(2, 5)), vocab.s_id)
    assert len(set(whole)) == len(whole)
    assert sorted(union) == whole


# Bad input -------------------------------------------------------------------


def test_pattern_matching_nothing_is_named(flm_vocab, tmp_path):
    pattern = str(tmp_path / "nothing-*")
    with pytest.raises(ValueError, match=r"File pattern '.*nothing-\*' matches no files"):
        data.Dataset(flm_vocab, pattern)


def test_empty_shard_raises(flm_vocab, tmp_path):
    write(tmp_path / "blank.txt", "\n  \n\n")
    dataset = data.Dataset(flm_vocab, str(tmp_path / "*.txt"))
    with pytest.raises(ValueError, match=r"Shard 0 of 1 .* has no sentence"):
        list(dataset.iterate_once(2, 3))
    with pytest.raises(ValueError, match="has no sentence"):
        next(dataset.iterate_forever(2, 3))


def test_invalid_utf8_names_file_and_line_unless_replaced(flm_vocab, tmp_path):
    path = write(tmp_path / "bad.txt", b"the cat\n\nsat on th\xe9 mat\n", "wb")
    with pytest.raises(ValueError, match=r"Invalid UTF-8 in .*bad\.txt', line 3.*errors='replace'"):
        list(data.Dataset(flm_vocab, path).iterate_once(1, 4))
    replaced = data.Dataset(flm_vocab, path, deterministic=True, errors="replace")
    ((x, _, w),) = replaced.iterate_once(1, 10)
    assert int(w.sum()) == 2 + 1 + 4 + 1
    assert x[0, 6] == flm_vocab.unk_id  # "th\ufffd" is not a word


def test_information_separators_do_not_split_words(tmp_path):
    vocab = data.Vocabulary.from_file(write(tmp_path / "v.txt", "<S> 1\n<UNK> 1\na 1\nb 1\n"))
    path = write(tmp_path / "c.txt", "a\x1cb a\u3000b\n")
    ((x, _, _),) = data.Dataset(vocab, path, deterministic=True).iterate_once(1, 4)
    # "a\x1cb" is one (unknown) word, U+3000 is a space: <S> <UNK> a b.
    assert x[0].tolist() == [vocab.s_id, vocab.unk_id, vocab.get_id("a"), vocab.get_id("b")]


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(shard_index=2, num_shards=2), r"shard_index=2 must be an int in \[0, num_shards=2\)"),
        (dict(num_shards=0), "num_shards=0 must be an int >= 1"),
        (dict(errors="ignore"), "errors='ignore' must be one of"),
    ],
)
def test_bad_dataset_arguments(flm_vocab, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        data.Dataset(flm_vocab, FLM_SENTENCES, **kwargs)


def test_bad_batch_shape(flm_vocab):
    dataset = data.Dataset(flm_vocab, FLM_SENTENCES)
    with pytest.raises(ValueError, match="batch_size=0 must be an int >= 1"):
        next(dataset.iterate_once(0, 4))
    with pytest.raises(ValueError, match="num_steps=-1 must be an int >= 1"):
        next(dataset.iterate_forever(2, -1))
