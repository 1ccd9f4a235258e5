"""tf.data version of :class:`lm1b.data.Dataset`'s batches, and per-replica input.

This is the only lm1b module that imports TensorFlow. It yields the batches
of :mod:`lm1b.data` (same files, shards, row assignment, padding and dtypes):
in deterministic mode exactly the same ones, batch for batch; in training
mode the same kind of shuffle (files, then lines within each file) from
TensorFlow's random streams, so not the same order as numpy for one seed.

Pipeline: the shard's files -> whole file read and split into lines (then
line-sharded and shuffled) -> chunks of lines -> tensorflow-text's
WhitespaceTokenizer -> ids from a ``tf.lookup.StaticHashTable`` (unknown
words -> ``<UNK>``) -> a ``scan`` that appends each chunk's sentences to the
``batch_size`` persistent rows (sentence ``i`` to row ``i % batch_size``) and
cuts every batch that all rows can fill -> prefetch. Without ``forever`` a
final flush cuts the rest with zero padding and ``w = 0``.
"""

import re

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from lm1b import data

# Lines tokenized per step; large enough to amortise per-op overhead, small
# enough to bound memory. The batches do not depend on it.
_LINES_PER_CHUNK = 4096
# Unicode White_Space beyond ASCII, as an RE2 class.
_NON_ASCII_SPACE = (
    r"[\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
)


def make_dataset(
    vocab,
    file_pattern,
    batch_size,
    num_steps,
    *,
    forever=False,
    deterministic=False,
    shard_index=0,
    num_shards=1,
    seed=None,
    errors="strict",
):
    """Returns a ``tf.data.Dataset`` of ``(x, y, w)`` batches of one shard.

    Args:
        vocab: a :class:`lm1b.data.Vocabulary`.
        file_pattern, deterministic, shard_index, num_shards, seed, errors: as
            for :class:`lm1b.data.Dataset`. With ``errors="strict"`` a line
            of invalid UTF-8 stops iteration with an InvalidArgumentError
            naming the file and the line.
        batch_size: rows per batch.
        num_steps: time steps per batch.
        forever: False gives :meth:`lm1b.data.Dataset.iterate_once`'s batches
            (every pair once, padded tail); True gives
            :meth:`~lm1b.data.Dataset.iterate_forever`'s endless batches.

    Returns:
        A dataset of ``x`` int32, ``y`` int32 and ``w`` float32 tensors, each
        of static shape ``[batch_size, num_steps]``.

    Raises:
        ValueError: as :class:`lm1b.data.Dataset`, or if the shard has no
            sentence.
    """
    data.check_batch_shape(batch_size, num_steps)
    source = data.Dataset(
        vocab,
        file_pattern,
        deterministic,
        shard_index=shard_index,
        num_shards=num_shards,
        seed=seed,
        errors=errors,
    )
    return _batches(source, vocabulary_table(vocab), batch_size, num_steps, forever)


def distribute_dataset(
    strategy,
    vocab,
    file_pattern,
    global_batch_size,
    num_steps,
    *,
    forever=False,
    deterministic=False,
    seed=None,
    errors="strict",
):
    """Gives every replica of ``strategy`` its own shard and persistent rows.

    Uses ``strategy.distribute_datasets_from_function``. Replica ``j`` of
    input pipeline ``p`` (``InputContext.input_pipeline_id``) reads shard
    ``p * L + j`` of ``num_input_pipelines * L``, where L is the number of
    replicas per pipeline, with ``get_per_replica_batch_size`` rows. As
    tf.distribute hands a pipeline's consecutive elements to its replicas in
    turn, the pipeline interleaves its L shard datasets batch by batch, so
    each replica's batches continue its own rows.

    Without ``forever``, a replica whose shard is exhausted gets batches of
    zeros with ``w = 0`` until all replicas of its pipeline are, so that all
    replicas take the same number of steps; across several pipelines
    (multi-worker) the step counts may still differ.

    Args:
        strategy: a ``tf.distribute.Strategy``.
        global_batch_size: rows per step over all replicas; must be
            divisible by the number of replicas.
        vocab, file_pattern, num_steps, forever, deterministic, seed, errors:
            as for :func:`make_dataset`.

    Returns:
        A ``tf.distribute.DistributedDataset`` of per-replica ``(x, y, w)``.
    """
    table = vocabulary_table(vocab)

    def dataset_fn(context):
        batch_size = context.get_per_replica_batch_size(global_batch_size)
        data.check_batch_shape(batch_size, num_steps)
        local = context.num_replicas_in_sync // context.num_input_pipelines
        streams = []
        for j in range(local):
            source = data.Dataset(
                vocab,
                file_pattern,
                deterministic,
                shard_index=context.input_pipeline_id * local + j,
                num_shards=context.num_input_pipelines * local,
                seed=seed,
                errors=errors,
            )
            streams.append(
                _batches(source, table, batch_size, num_steps, forever)
            )
        if local == 1:
            return streams[0]
        if not forever:
            padding = tuple(
                tf.zeros([batch_size, num_steps], dtype)
                for dtype in (tf.int32, tf.int32, tf.float32)
            )
            tail = tf.data.Dataset.from_tensors(padding).repeat()
            streams = [stream.concatenate(tail) for stream in streams]
        zipped = tf.data.Dataset.zip(tuple(streams))
        if not forever:
            zipped = zipped.take_while(
                lambda *batches: tf.reduce_any([tf.reduce_any(w > 0) for _, _, w in batches])
            )
        # One element per replica, in replica order.
        return zipped.flat_map(
            lambda *batches: tf.data.Dataset.from_tensor_slices(
                tuple(tf.stack(parts) for parts in zip(*batches))
            )
        ).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


def vocabulary_table(vocab):
    """Word -> id table; words not in the vocabulary map to <UNK>."""
    initializer = tf.lookup.KeyValueTensorInitializer(
        tf.constant(vocab.tokens, tf.string),
        tf.range(vocab.num_tokens, dtype=tf.int32),
    )
    return tf.lookup.StaticHashTable(initializer, default_value=vocab.unk_id)


def ascii_spaces(text):
    """Replaces non-ASCII Unicode spaces by " " before tokenizing.

    tensorflow-text 2.21's WhitespaceTokenizer leaves all but the last byte
    of a multi-byte space (e.g. U+00A0, U+3000) on the preceding word.
    """
    return tf.strings.regex_replace(text, _NON_ASCII_SPACE, " ")


def _batches(source, table, batch_size, num_steps, forever):
    """The batches of the shard described by ``source`` (a data.Dataset)."""
    source.check_not_empty()
    if source.seed is None:
        seed = int(np.random.default_rng().integers(2**31))
    else:
        seed = source.seed
    file_ids = tf.data.Dataset.range(len(source.files))
    if not source.deterministic:
        file_ids = file_ids.shuffle(len(source.files), seed, reshuffle_each_iteration=True)
    if forever:
        file_ids = file_ids.repeat()
    chunks = (
        file_ids.enumerate()
        .map(_line_reader(source, seed), num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
        .batch(_LINES_PER_CHUNK)
        .map(_sentence_encoder(table, source.vocab.s_id), num_parallel_calls=tf.data.AUTOTUNE)
    )
    if not forever:
        flush = (tf.zeros([0], tf.int32), tf.zeros([0], tf.int64), True)
        chunks = chunks.concatenate(tf.data.Dataset.from_tensors(flush))
    initial = (
        tf.fill([batch_size], tf.constant(source.vocab.s_id, tf.int32)),
        tf.ones([batch_size], tf.int64),
        tf.constant(0, tf.int64),
    )
    packed = chunks.scan(initial, _row_packer(batch_size, num_steps))
    return packed.unbatch().prefetch(tf.data.AUTOTUNE)


def invalid_utf8_message(error):
    """The message of :class:`lm1b.data.Dataset` for the invalid UTF-8 that
    ``error`` (a tf.errors.InvalidArgumentError from iterating a strict
    dataset) reports, without tf.data's context; None for any other error."""
    found = _ASSERTED_UTF8.search(error.message)
    if found is None:
        return None
    path, line = found.groups()
    return f"Invalid UTF-8 in {path!r}, line {line}. {data.UTF8_FIX}"


# What _line_reader's assertion puts in its error's message.
_ASSERTED_UTF8 = re.compile(r"\[Invalid UTF-8 in\] \[(.*?)\] \[line\] \[(\d+)\]")


def _line_reader(source, seed):
    """Returns ``(visit, file_id) -> lines``: a file's lines in this shard, maybe shuffled."""
    files = tf.constant(source.files, tf.string)

    def read_lines(visit, file_id):
        path = files[file_id]
        text = tf.io.read_file(path)
        # Whole-file string ops: one call per file instead of one per line.
        repaired = tf.strings.unicode_transcode(
            text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
        )
        if source.errors == "strict":
            valid = tf.equal(repaired, text)
            line = tf.cond(
                valid,
                lambda: tf.constant(0, tf.int64),
                lambda: _first_diff_line(text, repaired),
            )
            check = tf.debugging.Assert(
                valid,
                [
                    "Invalid UTF-8 in",
                    path,
                    "line",
                    line,
                    data.UTF8_FIX,
                ],
            )
            with tf.control_dependencies([check]):
                repaired = tf.identity(repaired)
        text = ascii_spaces(repaired)
        lines = tf.strings.split(text, "\n")
        if source.line_shard is not None:
            lines = lines[source.shard_index :: source.num_shards]
        if not source.deterministic:
            # A distinct, reproducible permutation for every visit of a file.
            lines = tf.random.experimental.stateless_shuffle(lines, seed=[seed, visit])
        return lines

    return read_lines


def _first_diff_line(text, repaired):
    """1-based number of the first line where ``text`` and ``repaired`` differ."""
    a = tf.strings.split(text, "\n")
    b = tf.strings.split(repaired, "\n")
    return tf.argmax(tf.cast(tf.not_equal(a, b), tf.int64), output_type=tf.int64) + 1


def _sentence_encoder(table, s_id):
    """Returns ``lines -> (flat ids, sentence lengths, False)``; blank lines dropped.

    Each sentence's ids are followed by ``<S>``; the False marks a chunk that
    is not the final flush.
    """
    tokenizer = tf_text.WhitespaceTokenizer()

    def encode(lines):
        words = tokenizer.tokenize(lines)
        words = tf.ragged.boolean_mask(words, words.row_lengths() > 0)
        ids = words.with_flat_values(table.lookup(words.flat_values))
        ends = tf.RaggedTensor.from_tensor(
            tf.fill([ids.nrows(), 1], tf.constant(s_id, tf.int32))
        )
        sentences = tf.concat([ids, ends], axis=1)
        return sentences.flat_values, sentences.row_lengths(), False

    return encode


def _row_packer(batch_size, num_steps):
    """Returns the ``scan`` step that appends a chunk to the rows and cuts batches.

    The state is the rows' pending tokens (flat values and lengths) and the
    row of the next sentence. Each step emits ``[n, batch_size, num_steps]``
    x, y and w: n is the number of batches every row can fill, or on the
    final flush the number needed to empty the longest row, zero-padded.
    """

    def pack(state, chunk):
        rows_flat, rows_len, next_row = state
        flat, lengths, last = chunk
        count = tf.size(lengths, out_type=tf.int64)
        # Pad the chunk with empty sentences before and after, so that its
        # sentence i sits at [i // batch_size, i % batch_size] of a grid whose
        # columns are the rows; reading the grid column by column gives each
        # row's new tokens in stream order, without a sort.
        rounds = (next_row + count + batch_size - 1) // batch_size
        padded = tf.concat(
            [
                tf.zeros([next_row], tf.int64),
                lengths,
                tf.zeros([rounds * batch_size - next_row - count], tf.int64),
            ],
            0,
        )
        grid = tf.RaggedTensor.from_row_lengths(flat, padded)
        column_order = tf.reshape(
            tf.transpose(tf.reshape(tf.range(rounds * batch_size), [rounds, batch_size])),
            [-1],
        )
        new = tf.RaggedTensor.from_row_lengths(
            tf.gather(grid, column_order).flat_values,
            tf.reduce_sum(tf.reshape(padded, [rounds, batch_size]), 0),
        )
        old = tf.RaggedTensor.from_row_lengths(rows_flat, rows_len)
        rows = tf.concat([old, new], axis=1)
        pairs = rows.row_lengths() - 1
        num_batches = tf.where(
            last,
            -(-tf.reduce_max(pairs) // num_steps),
            tf.reduce_min(pairs) // num_steps,
        )
        width = num_batches * num_steps + 1
        tokens = rows[:, :width].to_tensor(0, shape=[batch_size, None])
        tokens = tf.pad(tokens, [[0, 0], [0, width - tf.shape(tokens, tf.int64)[1]]])
        real = tf.range(width - 1)[tf.newaxis, :] < pairs[:, tf.newaxis]
        # A row's final <S> has no target: it is padding (x = 0) in x.
        x = tf.where(real, tokens[:, :-1], 0)
        y = tokens[:, 1:]
        w = tf.cast(real, tf.float32)

        def by_batch(t):
            return tf.transpose(tf.reshape(t, [batch_size, -1, num_steps]), [1, 0, 2])

        # Keep the last emitted token: it is the next batch's first x.
        rest = rows[:, width - 1 :]
        state = (rest.flat_values, rest.row_lengths(), (next_row + count) % batch_size)
        return state, (by_batch(x), by_batch(y), by_batch(w))

    return pack
