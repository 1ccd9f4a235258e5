"""f-lm's LM1B data: the word vocabulary and the batch iterator (numpy only).

This module imports no TensorFlow, so every Keras backend can use it; the
tf.data version of the same batches is :mod:`lm1b.input_pipeline`.

Batches follow f-lm: ``batch_size`` persistent rows each carry their own stream
of sentences packed back to back, and every batch continues each row where the
previous batch stopped, so a recurrent state can be carried across batches.
A sentence with word ids ``w1 .. wn`` is ``<S> w1 .. wn <S>`` (f-lm uses
``<S>`` for both start and end). Its end ``<S>`` doubles as the next
sentence's start ``<S>``, which yields exactly the (x, y) pairs of f-lm and no
pair that crosses two sentences.

Row assignment (shared with the tf.data pipeline, so both give the same
batches): the sentences of the (sharded, optionally shuffled) sentence stream
are numbered 0, 1, 2, ... and sentence ``i`` goes to row ``i % batch_size``.
Row ``r`` is thus the token stream ``<S>, then ids + <S> of each of its
sentences``; batch ``k`` holds, for every row, its tokens ``k*num_steps``
through ``(k+1)*num_steps`` (inclusive): the first num_steps as x, the last
num_steps as y. This differs from f-lm, whose rows take the next sentence
whenever they run out, in the order rows are filled; round robin does not
depend on sentence lengths, so a vectorised tf.data implementation can match
it exactly. Rows drift apart in length like a random walk (about
``sqrt(sentences per row)`` times the spread of sentence lengths); the
iterators buffer that difference, a few thousand tokens per row on LM1B.
"""

import glob
import os
import re

import numpy as np

VOCAB_FILE = "1b_word_vocab.txt"
"""The vocabulary's file name in an LM1B-layout directory."""

_S = "<S>"
_UNK = "<UNK>"
DECODE_ERRORS = ("strict", "replace")
"""What a corpus reader does with invalid UTF-8: stop naming the file and
line, or read the bad bytes as U+FFFD."""
UTF8_FIX = ("Re-encode the file as UTF-8, or pass errors='replace' (lm1b/train.py: "
            "--data_errors=replace) to read bad bytes as U+FFFD.")
"""The advice that ends a strict reader's invalid-UTF-8 error."""
# Sentences are processed this many at a time; the batches do not depend on it.
_LINES_PER_CHUNK = 8192

# tensorflow-text's WhitespaceTokenizer splits on Unicode White_Space; Python's
# str.split() also splits on the information separators U+001C..U+001F. Files
# that contain them are split with the White_Space set, so both paths agree.
_INFO_SEPARATORS = re.compile("[\x1c-\x1f]")
# A valid vocabulary line: a word, whitespace, a non-negative integer count.
_VOCAB_LINE = re.compile(r"^[^\S\n]*(\S+)[^\S\n]+([0-9]+)[^\S\n]*$", re.MULTILINE)
_WHITE_SPACE = re.compile(
    "[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
)


class Vocabulary:
    """f-lm's word vocabulary: one ``word count`` line per word, ids in file order.

    Build with :meth:`from_file`. The file must contain ``<S>`` (sentence start
    and end) and ``<UNK>`` (every word not in the file). Ids sorted by
    decreasing count matter to the log-uniform candidate sampler of the
    sampled softmax; this class keeps the file's order whatever it is.

    Attributes:
        path: the file it was read from.
        tokens: list of the words, index = id.
        counts: int64 array of the counts, index = id.
    """

    def __init__(self, tokens, counts, path):
        """Wraps parsed columns; use :meth:`from_file` to read a vocabulary file."""
        self.path = path
        self.tokens = tokens
        self.counts = counts
        self._token_to_id = {token: i for i, token in enumerate(tokens)}
        if len(self._token_to_id) != len(tokens):
            _raise_duplicate(tokens, path)
        for special in (_S, _UNK):
            if special not in self._token_to_id:
                raise ValueError(
                    f"Vocabulary file {path!r} has no {special!r} line; f-lm needs "
                    f"both {_S!r} (sentence start and end) and {_UNK!r} (unknown "
                    f"words). Add a line '{special} <count>'."
                )
        self._s_id = self._token_to_id[_S]
        self._unk_id = self._token_to_id[_UNK]

    @classmethod
    def from_file(cls, path):
        """Reads a ``word count`` file such as LM1B's ``1b_word_vocab.txt``.

        A trailing empty line is allowed. Raises ValueError naming the file,
        the 1-based line number and the fix for invalid UTF-8, a line that is
        not ``word count`` with an integer count >= 0, a duplicated word, or a
        missing ``<S>`` / ``<UNK>``, or a file that does not exist.
        """
        if not os.path.isfile(path):
            raise ValueError(
                f"No vocabulary file {path!r}. The data directory must be in LM1B "
                f"layout: {VOCAB_FILE}, training-monolingual.tokenized.shuffled/ and "
                "heldout-monolingual.tokenized.shuffled/ (scripts/prepare_corpus.py "
                "builds one from text)."
            )
        with open(path, "rb") as f:
            data = f.read()
        text = _decode(data, path, "strict", "Re-encode the file as UTF-8.")
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        # One regex pass over the whole file is ~3x faster than splitting
        # 800K lines one by one; it matches every line iff the file is valid.
        matches = _VOCAB_LINE.findall(text)
        if len(matches) != len(lines):
            _raise_bad_vocab_line(lines, path)
        tokens = [token for token, _ in matches]
        counts = np.array([count for _, count in matches], dtype=np.int64)
        return cls(tokens, counts, path)

    @property
    def num_tokens(self):
        """Number of words, i.e. ids 0 .. num_tokens - 1."""
        return len(self.tokens)

    @property
    def s(self):
        """The sentence start and end token, ``<S>``."""
        return _S

    @property
    def s_id(self):
        """Id of ``<S>``."""
        return self._s_id

    @property
    def unk(self):
        """The unknown-word token, ``<UNK>``."""
        return _UNK

    @property
    def unk_id(self):
        """Id of ``<UNK>``, given to every word not in the vocabulary."""
        return self._unk_id

    def get_id(self, word):
        """Returns the id of ``word``, or :attr:`unk_id` if it is not in the vocabulary."""
        return self._token_to_id.get(word, self._unk_id)

    def get_token(self, id_):
        """Returns the word with id ``id_``; ValueError if it is out of range."""
        if not 0 <= id_ < len(self.tokens):
            raise ValueError(
                f"Token id {id_} is out of range for vocabulary {self.path!r} "
                f"with {len(self.tokens)} tokens (valid ids: 0..{len(self.tokens) - 1})."
            )
        return self.tokens[id_]


def check_vocab_size(vocab, expected):
    """Raises ValueError unless ``vocab`` has exactly ``expected`` tokens.

    Use it where a model's configured vocabulary size (f-lm's ``vocab_size``)
    meets the vocabulary file, so a mismatch fails before training starts.
    """
    if vocab.num_tokens != expected:
        raise ValueError(
            f"Vocabulary {vocab.path!r} has {vocab.num_tokens} tokens but "
            f"vocab_size={expected} is configured. Set vocab_size="
            f"{vocab.num_tokens}, or point to the vocabulary the model was "
            "built for."
        )


class Dataset:
    """f-lm's LM1B batch iterator over the text files matching a glob pattern.

    Each file holds one whitespace-tokenized sentence per line; lines are
    separated by ``\\n``, and lines with no word (empty or only whitespace) are
    skipped, as are empty files. See the module docstring for how sentences
    are packed into ``batch_size`` persistent rows.

    Order: files are sorted by name. With ``deterministic=False`` (training)
    each pass shuffles the shard's files and, within each file, its lines,
    from ``numpy.random.default_rng(seed)`` created when iteration starts
    (``seed=None``: a fresh random seed). ``deterministic=True`` (evaluation)
    shuffles nothing.

    Sharding (one shard per replica or worker): with at least ``num_shards``
    files, shard ``k`` reads the files ``k, k + num_shards, ...`` of the sorted
    list; with fewer files, it reads every file but only its lines (0-based,
    counting blank lines) ``k, k + num_shards, ...``. Shards are disjoint and
    together cover the corpus.

    Args:
        vocab: a :class:`Vocabulary`.
        file_pattern: glob pattern of the text files, e.g.
            ``<datadir>/training-monolingual.tokenized.shuffled/*``.
        deterministic: False shuffles files and lines (training), True keeps
            the sorted file order and line order (evaluation).
        shard_index: which shard to read, in ``[0, num_shards)``.
        num_shards: number of disjoint shards the corpus is split into.
        seed: int seed of the shuffles, or None for a random one.
        errors: ``"strict"`` raises ValueError on invalid UTF-8, naming the
            file and line; ``"replace"`` decodes bad bytes as U+FFFD.

    Attributes:
        files: the sorted files this shard reads.
        line_shard: None when the shard owns whole files, else
            ``(shard_index, num_shards)``: the shard keeps the lines whose
            0-based number in their file is ``shard_index`` modulo
            ``num_shards``.
    """

    def __init__(
        self,
        vocab,
        file_pattern,
        deterministic=False,
        *,
        shard_index=0,
        num_shards=1,
        seed=None,
        errors="strict",
    ):
        """Lists and shards the files; see the class docstring for the arguments."""
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards={num_shards!r} must be an int >= 1.")
        if not isinstance(shard_index, int) or not 0 <= shard_index < num_shards:
            raise ValueError(
                f"shard_index={shard_index!r} must be an int in [0, "
                f"num_shards={num_shards})."
            )
        if errors not in DECODE_ERRORS:
            raise ValueError(f"errors={errors!r} must be one of {DECODE_ERRORS}.")
        all_files = sorted(p for p in glob.glob(file_pattern) if os.path.isfile(p))
        if not all_files:
            raise ValueError(
                f"File pattern {file_pattern!r} matches no files. Check the data "
                "directory, or build one with scripts/prepare_corpus.py."
            )
        self.vocab = vocab
        self.file_pattern = file_pattern
        self.deterministic = deterministic
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.seed = seed
        self.errors = errors
        if len(all_files) >= num_shards:
            self.files = all_files[shard_index::num_shards]
            self.line_shard = None
        else:
            self.files = all_files
            self.line_shard = (shard_index, num_shards)

    def iterate_once(self, batch_size, num_steps):
        """Yields ``(x, y, w)`` batches covering every (x, y) pair of the shard once.

        ``x`` and ``y`` are int32 ``[batch_size, num_steps]`` (y is the token
        after x), ``w`` is float32 1.0 on real targets and 0.0 on the padding
        (x = y = 0) that fills the rows after their sentences run out. Unlike
        f-lm, no leftover token is dropped. Raises ValueError if the shard
        has no sentence.
        """
        packer = _RowPacker(batch_size, num_steps, self.vocab.s_id)
        rng = np.random.default_rng(self.seed)
        for chunk in self._epoch_chunks(rng):
            yield from packer.add(chunk)
        if packer.num_sentences == 0:
            self._raise_empty()
        yield from packer.flush()

    def iterate_forever(self, batch_size, num_steps):
        """Yields ``(x, y, w)`` batches over endless passes, rows continuing across passes.

        Same layout as :meth:`iterate_once`, with ``w`` all ones (there is
        never any padding). Each pass reshuffles unless deterministic. Raises
        ValueError if the shard has no sentence.
        """
        packer = _RowPacker(batch_size, num_steps, self.vocab.s_id)
        rng = np.random.default_rng(self.seed)
        while True:
            before = packer.num_sentences
            for chunk in self._epoch_chunks(rng):
                yield from packer.add(chunk)
            if packer.num_sentences == before:
                self._raise_empty()

    def check_not_empty(self):
        """Raises ValueError unless the shard has at least one sentence.

        Reads only up to the first sentence, so it is cheap on a real corpus;
        :mod:`lm1b.input_pipeline` calls it because an endless tf.data
        pipeline over no sentence would never yield.
        """
        for path in self.files:
            with open(path, "rb") as f:
                for number, line in enumerate(f):
                    if self.line_shard and number % self.num_shards != self.shard_index:
                        continue
                    if _split_words(line.decode("utf-8", errors="replace")):
                        return
        self._raise_empty()

    def _raise_empty(self):
        fix = "use fewer shards, or check" if self.num_shards > 1 else "check"
        raise ValueError(
            f"Shard {self.shard_index} of {self.num_shards} of {self.file_pattern!r} "
            f"has no sentence (files: {len(self.files)}): {fix} that the files are "
            "not empty. A corpus from scripts/prepare_corpus.py that is small for "
            "its shard counts leaves some empty: rebuild it with a larger "
            "--heldout_fraction or fewer --num_heldout_shards / --num_train_shards."
        )

    def _epoch_chunks(self, rng):
        """Yields one pass over the shard as lists of int32 id arrays (ids + <S>)."""
        order = np.arange(len(self.files))
        if not self.deterministic:
            order = rng.permutation(order)
        for index in order:
            lines = self._read_lines(self.files[index])
            if not self.deterministic:
                lines = [lines[i] for i in rng.permutation(len(lines))]
            for start in range(0, len(lines), _LINES_PER_CHUNK):
                chunk = self._to_ids(lines[start : start + _LINES_PER_CHUNK])
                if chunk:
                    yield chunk

    def _read_lines(self, path):
        """Returns the shard's lines of ``path`` as lists of words, blank lines dropped."""
        with open(path, "rb") as f:
            data = f.read()
        text = _decode(
            data,
            path,
            self.errors,
            UTF8_FIX,
        )
        lines = text.split("\n")
        if self.line_shard is not None:
            index, count = self.line_shard
            lines = lines[index::count]
        split = _split_words if _INFO_SEPARATORS.search(text) else str.split
        words = (split(line) for line in lines)
        return [w for w in words if w]

    def _to_ids(self, sentences):
        """Maps lists of words to int32 id arrays, each followed by <S>."""
        get = self.vocab._token_to_id.get
        unk, s_id = self.vocab.unk_id, self.vocab.s_id
        return [
            np.array([get(w, unk) for w in words] + [s_id], dtype=np.int32)
            for words in sentences
        ]


def check_batch_shape(batch_size, num_steps):
    """Raises ValueError unless ``batch_size`` and ``num_steps`` are ints >= 1."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1.")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be an int >= 1.")


class _RowPacker:
    """Packs sentences into persistent rows by round robin and cuts batches."""

    def __init__(self, batch_size, num_steps, s_id):
        check_batch_shape(batch_size, num_steps)
        self._batch_size = batch_size
        self._num_steps = num_steps
        # Every row starts with the first sentence's <S>; later sentences
        # start on their predecessor's end <S>.
        self._rows = [np.array([s_id], np.int32)] * batch_size
        self.num_sentences = 0

    def add(self, sentences):
        """Appends sentences (id arrays ending in <S>) and yields every complete batch."""
        b = self._batch_size
        first_row = self.num_sentences % b
        self.num_sentences += len(sentences)
        for r in range(b):
            # Row r gets sentences j with (first_row + j) % b == r, in order.
            mine = sentences[(r - first_row) % b :: b]
            if mine:
                self._rows[r] = np.concatenate([self._rows[r]] + mine)
        pairs = min(len(row) for row in self._rows) - 1
        yield from self._cut(pairs // self._num_steps)

    def flush(self):
        """Yields the remaining tokens as zero-padded batches with w = 0 on the padding."""
        pairs = max(len(row) for row in self._rows) - 1
        yield from self._cut(-(-pairs // self._num_steps))

    def _cut(self, num_batches):
        if num_batches == 0:
            return
        t = self._num_steps
        width = num_batches * t + 1
        tokens = np.zeros([self._batch_size, width], np.int32)
        pairs = np.empty([self._batch_size, 1], np.int64)
        for r, row in enumerate(self._rows):
            tokens[r, : len(row)] = row[:width]
            pairs[r] = len(row) - 1
            # Keep the last emitted token: it is the next batch's first x.
            self._rows[r] = row[width - 1 :]
        real = np.arange(width - 1) < pairs
        # A row's final <S> has no target: it is padding (x = 0) in x.
        inputs = np.where(real, tokens[:, :-1], 0)
        targets = tokens[:, 1:]
        weights = real.astype(np.float32)
        for k in range(num_batches):
            cols = slice(k * t, (k + 1) * t)
            yield (
                np.ascontiguousarray(inputs[:, cols]),
                np.ascontiguousarray(targets[:, cols]),
                np.ascontiguousarray(weights[:, cols]),
            )


def _split_words(line):
    return [w for w in _WHITE_SPACE.split(line) if w]


def _raise_bad_vocab_line(lines, path):
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(
                f"Vocabulary file {path!r}, line {number}: expected 'word count' "
                f"(two fields separated by whitespace), got {line!r}. Fix or "
                "remove that line."
            )
        if not (fields[1].isascii() and fields[1].isdigit()):
            raise ValueError(
                f"Vocabulary file {path!r}, line {number}: the count "
                f"{fields[1]!r} is not an integer >= 0. Write the word's corpus "
                "frequency there."
            )


def _decode(data, path, errors, fix):
    """Decodes UTF-8; on a bad byte raises ValueError naming the file, line and ``fix``."""
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"Invalid UTF-8 in {path!r}, line {line} (bytes "
            f"{data[e.start:e.end]!r}). {fix}"
        ) from None


def _raise_duplicate(tokens, path):
    seen = {}
    for number, token in enumerate(tokens, start=1):
        if token in seen:
            raise ValueError(
                f"Vocabulary file {path!r}, line {number}: {token!r} already "
                f"appears on line {seen[token]}. Keep one line per word."
            )
        seen[token] = number
