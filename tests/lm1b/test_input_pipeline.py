"""Tests for lm1b.input_pipeline: tf.data batches equal lm1b.data's; per-replica shards."""

import collections
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_text")

from lm1b import data, input_pipeline  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY = os.path.join(ROOT, "data", "tiny_corpus")
TINY_VOCAB = os.path.join(TINY, "1b_word_vocab.txt")
TINY_TRAIN = os.path.join(TINY, "training-monolingual.tokenized.shuffled", "news.en-*")
TINY_HELDOUT = os.path.join(TINY, "heldout-monolingual.tokenized.shuffled", "*")
FLM = os.path.join(TINY, "sources", "flm")


@pytest.fixture(scope="module")
def tiny_vocab():
    return data.Vocabulary.from_file(TINY_VOCAB)


def tf_batches(*args, take=None, **kwargs):
    dataset = input_pipeline.make_dataset(*args, **kwargs)
    if take is not None:
        dataset = dataset.take(take)
    return list(dataset.as_numpy_iterator())


def assert_same_batches(got, want):
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        for name, u, v in zip("xyw", a, b):
            assert u.dtype == v.dtype and u.shape == v.shape, (k, name)
            np.testing.assert_array_equal(u, v, err_msg=f"batch {k}, {name}")


def pairs(batches):
    counter = collections.Counter()
    for x, y, w in batches:
        counter.update(zip(x[w > 0].tolist(), y[w > 0].tolist()))
    return counter


@pytest.mark.parametrize(
    "pattern, batch_size, num_steps, lines_per_chunk",
    [
        (TINY_TRAIN, 16, 20, None),
        (TINY_TRAIN, 5, 7, 7),  # many chunks, each starting at another row
        (TINY_HELDOUT, 32, 10, 45),
        (TINY_HELDOUT, 1, 1, None),
    ],
)
def test_once_equals_numpy_in_deterministic_mode(
    tiny_vocab, pattern, batch_size, num_steps, lines_per_chunk, monkeypatch
):
    if lines_per_chunk:
        monkeypatch.setattr(input_pipeline, "_LINES_PER_CHUNK", lines_per_chunk)
    want = list(data.Dataset(tiny_vocab, pattern, True).iterate_once(batch_size, num_steps))
    got = tf_batches(tiny_vocab, pattern, batch_size, num_steps, deterministic=True)
    assert_same_batches(got, want)
    if batch_size > 1:
        assert (got[-1][2] == 0).any()  # the padded tail is there, with w = 0


def test_forever_equals_numpy_across_passes(tiny_vocab, monkeypatch):
    monkeypatch.setattr(input_pipeline, "_LINES_PER_CHUNK", 50)
    it = data.Dataset(tiny_vocab, TINY_HELDOUT, True).iterate_forever(8, 20)
    want = [next(it) for _ in range(90)]  # about four passes over the heldout set
    got = tf_batches(tiny_vocab, TINY_HELDOUT, 8, 20, forever=True, deterministic=True, take=90)
    assert_same_batches(got, want)


@pytest.mark.parametrize("num_shards", [3, 12])  # 10 files: by files, then by lines
def test_shards_equal_numpy_shards(tiny_vocab, num_shards):
    for k in (0, num_shards - 1):
        source = data.Dataset(tiny_vocab, TINY_TRAIN, True, shard_index=k, num_shards=num_shards)
        got = tf_batches(
            tiny_vocab, TINY_TRAIN, 4, 9, deterministic=True, shard_index=k, num_shards=num_shards
        )
        assert_same_batches(got, list(source.iterate_once(4, 9)))


def test_training_mode_shuffles_reproducibly_without_changing_content(tiny_vocab):
    plain = tf_batches(tiny_vocab, TINY_TRAIN, 8, 10, deterministic=True)
    first = tf_batches(tiny_vocab, TINY_TRAIN, 8, 10, seed=7)
    again = tf_batches(tiny_vocab, TINY_TRAIN, 8, 10, seed=7)
    other = tf_batches(tiny_vocab, TINY_TRAIN, 8, 10, seed=8)
    assert_same_batches(again, first)
    assert pairs(first) == pairs(other) == pairs(plain)
    x = [np.concatenate([b[0].ravel() for b in run]) for run in (plain, first, other)]
    assert not np.array_equal(x[0][:500], x[1][:500])
    assert not np.array_equal(x[1][:500], x[2][:500])


def test_unicode_whitespace_and_blank_lines_match_numpy(tmp_path):
    vocab_path = tmp_path / "vocab.txt"
    vocab_path.write_text("<S> 5\n<UNK> 1\na 3\nb 2\nc 1\n")
    vocab = data.Vocabulary.from_file(str(vocab_path))
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(
        "a b\r\n\n \t \na\x1cb c\nc\u3000a\xa0b\u2028c\n\x85\n"
        "\ufeffa b\nb  c   a\n".encode("utf-8")
    )
    (tmp_path / "empty.txt").write_bytes(b"")
    pattern = str(tmp_path / "*.txt")
    for shape in [(1, 3), (2, 4), (3, 2)]:
        want = list(data.Dataset(vocab, pattern, True).iterate_once(*shape))
        assert_same_batches(tf_batches(vocab, pattern, *shape, deterministic=True), want)


def test_invalid_utf8(tmp_path):
    vocab = data.Vocabulary.from_file(os.path.join(FLM, "test_vocab.txt"))
    path = tmp_path / "bad.txt"
    path.write_bytes(b"the cat\n\nsat on th\xe9 mat\nand \xff\xfe left\n")
    message = r"Invalid UTF-8 in.*bad\.txt.*line.*3"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message) as info:
        tf_batches(vocab, str(path), 2, 3, deterministic=True)
    # What the trainer reports instead, without tf.data's context.
    clean = input_pipeline.invalid_utf8_message(info.value)
    assert clean == f"Invalid UTF-8 in {str(path)!r}, line 3. {data.UTF8_FIX}", clean
    assert input_pipeline.invalid_utf8_message(tf.errors.InvalidArgumentError(None, None, "other")) is None
    want = list(data.Dataset(vocab, str(path), True, errors="replace").iterate_once(2, 3))
    got = tf_batches(vocab, str(path), 2, 3, deterministic=True, errors="replace")
    assert_same_batches(got, want)


def test_bad_input_raises_before_iterating(tiny_vocab, tmp_path):
    with pytest.raises(ValueError, match="matches no files"):
        input_pipeline.make_dataset(tiny_vocab, str(tmp_path / "none*"), 2, 3)
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="has no sentence"):
        input_pipeline.make_dataset(tiny_vocab, str(tmp_path / "blank.txt"), 2, 3, forever=True)
    with pytest.raises(ValueError, match="batch_size=0 must be an int >= 1"):
        input_pipeline.make_dataset(tiny_vocab, TINY_TRAIN, 0, 3)


_DISTRIBUTE_CHECK = textwrap.dedent(
    """
    import sys

    import numpy as np
    import tensorflow as tf

    VOCAB, TRAIN, HELDOUT = sys.argv[1:]
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    from lm1b import data, input_pipeline

    vocab = data.Vocabulary.from_file(VOCAB)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2

    def per_replica(dataset, steps=None):
        out = [[], []]
        for step, batch in enumerate(dataset):
            if step == steps:
                break
            parts = [strategy.experimental_local_results(t) for t in batch]
            for r in range(2):
                out[r].append(tuple(p[r].numpy() for p in parts))
        return out

    def sentences(batches, s_id):
        found = []
        for r in range(batches[0][0].shape[0]):
            tokens = [int(batches[0][0][r, 0])]
            for _, y, w in batches:
                tokens += y[r][w[r] > 0].tolist()
            found += [tuple(s) for s in
                      np.split(np.array(tokens), np.flatnonzero(np.array(tokens) == s_id))
                      if len(s) > 1]
        return found

    for pattern in (TRAIN, HELDOUT):  # 10 files (split by files), 1 file (by lines)
        got = per_replica(input_pipeline.distribute_dataset(
            strategy, vocab, pattern, 12, 10, deterministic=True))
        assert len(got[0]) == len(got[1])
        seen = []
        for r in range(2):
            want = list(data.Dataset(vocab, pattern, True, shard_index=r, num_shards=2)
                        .iterate_once(6, 10))
            assert len(got[r]) >= len(want)
            for a, b in zip(got[r], want):
                for u, v in zip(a, b):
                    np.testing.assert_array_equal(u, v)
            for x, y, w in got[r][len(want):]:  # padding steps of the shorter shard
                assert not x.any() and not y.any() and not w.any()
            seen.append(sentences(got[r], vocab.s_id))
        assert not set(seen[0]) & set(seen[1]), "replicas share sentences"
        whole = sentences(list(data.Dataset(vocab, pattern, True).iterate_once(1, 10)),
                          vocab.s_id)
        assert sorted(seen[0] + seen[1]) == sorted(whole)

    got = per_replica(input_pipeline.distribute_dataset(
        strategy, vocab, TRAIN, 8, 20, forever=True, seed=3), steps=40)
    for r in range(2):
        for (_, y0, _), (x1, _, w1) in zip(got[r], got[r][1:]):
            np.testing.assert_array_equal(x1[:, 0], y0[:, -1])  # rows continue
            assert w1.all()
    print("DISTRIBUTE OK")
    """
)


def test_distribute_gives_each_replica_its_own_shard_and_rows():
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-c", _DISTRIBUTE_CHECK, TINY_VOCAB, TINY_TRAIN, TINY_HELDOUT],
        env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "DISTRIBUTE OK" in result.stdout, result.stderr[-4000:]
