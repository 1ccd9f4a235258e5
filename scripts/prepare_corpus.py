#!/usr/bin/env python3
"""Turns plain text into the LM1B directory layout that f-lm and lm1b.data read.

Output, under --output_dir:

    training-monolingual.tokenized.shuffled/news.en-NNNNN-of-TTTTT
    heldout-monolingual.tokenized.shuffled/news.en.heldout-NNNNN-of-HHHHH
    1b_word_vocab.txt

Every shard holds one whitespace-tokenized sentence per line, in random order.
The vocabulary has one "word count" line per word, counted on the training
shards, sorted by decreasing count (ties by word), so ids are frequency ranks
as the log-uniform sampler expects. It always contains <S> and </S> (count:
training sentences) and <UNK> (count: training words left out of the
vocabulary). f-lm evaluates on heldout shard 00000.

Inputs (any mix, read in the order given):
    --text FILE     one tokenized sentence per line (LM1B style);
    --raw FILE      running text: paragraphs (separated by blank lines) are
                    split into sentences and tokenized with a simple regex;
    --ptb_dir DIR   ptb.{train,valid,test}.txt: train goes to the training
                    shards, test to heldout shard 00000 and valid to the
                    other heldout shards; PTB's <unk> becomes <UNK>.
FILE may be "-" for standard input. Sentences of --text and --raw go to the
heldout shards with probability --heldout_fraction, else to a random training
shard. The output depends only on the inputs and --seed.

Example:
    python scripts/prepare_corpus.py --raw book.txt --output_dir /tmp/corpus
"""

import argparse
import collections
import os
import random
import re
import sys
import time

TRAIN_DIR = "training-monolingual.tokenized.shuffled"
HELDOUT_DIR = "heldout-monolingual.tokenized.shuffled"
VOCAB_FILE = "1b_word_vocab.txt"
SPECIALS = ("<S>", "</S>", "<UNK>")

# Words whose trailing period does not end a sentence.
_ABBREVIATIONS = (
    "mr mrs ms dr prof st jr sr capt col gen lt sgt rev vs etc inc ltd corp "
    "jan feb mar apr jun jul aug sep sept oct nov dec"
).split()
# Regex tokenizer for --raw, close to LM1B's tokenization: clitics split off
# ("don't" -> "don 't"), punctuation separate, hyphenated words, numbers such
# as 2,000 / 3.5 / 1:1, dotted abbreviations (U.S., Mr.) and initials kept
# whole.
_TOKEN = re.compile(
    r"""(?:[^\W\d_]\.){2,}
      | (?i:\b(?:ABBREVIATIONS)\.)
      | \b[A-Z]\.(?=\s+[A-Z])
      | \d+(?:[.,:/-]\d+)*(?!\w)
      | \w+(?:-\w+)*
      | (?i:'(?:s|t|re|ve|ll|d|m)\b)
      | \.{2,} | -{2,}
      | [^\w\s]""".replace("ABBREVIATIONS", "|".join(_ABBREVIATIONS)),
    re.VERBOSE,
)
# A sentence ends at . ! or ? (plus closing quotes or brackets) followed by
# whitespace and a capital letter, digit or opening quote.
_SENTENCE_END = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?=\s+["'\u201c\u2018(\[]*[A-Z0-9])""")
_LAST_WORD = re.compile(r"(\w+)\W*$")


def tokenize(text):
    """Splits running text into LM1B-style tokens."""
    return _TOKEN.findall(text)


def split_sentences(paragraph):
    """Splits a paragraph into sentences at ., ! and ?, except after abbreviations and initials."""
    sentences = []
    start = 0
    for match in _SENTENCE_END.finditer(paragraph):
        before = _LAST_WORD.search(paragraph[start : match.start()])
        word = before.group(1) if before else ""
        if paragraph[match.start()] == "." and (
            word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper())
        ):
            continue
        sentences.append(paragraph[start : match.end()].strip())
        start = match.end()
    sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


class Progress:
    """A one-line "\\r" counter of lines and lines/s on stderr."""

    def __init__(self, label):
        self._label = label
        self._start = self._shown = time.monotonic()
        self.lines = 0

    def tick(self):
        self.lines += 1
        now = time.monotonic()
        if now - self._shown >= 0.25:
            self._shown = now
            self._print(now)

    def done(self):
        self._print(time.monotonic())
        sys.stderr.write("\n")

    def _print(self, now):
        rate = self.lines / max(now - self._start, 1e-9)
        sys.stderr.write(f"\r{self._label}: {self.lines:,} lines, {rate:,.0f} lines/s")
        sys.stderr.flush()


def read_lines(path, progress, errors):
    """Yields the lines of a UTF-8 file ("-": stdin) without their newline."""
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        for number, raw in enumerate(stream, start=1):
            progress.tick()
            try:
                yield raw.decode("utf-8", errors=errors).rstrip("\r\n")
            except UnicodeDecodeError:
                sys.exit(
                    f"error: {path!r}, line {number} is not valid UTF-8; convert "
                    "the file (e.g. iconv -f latin1 -t utf-8) or pass --errors "
                    "replace to read bad bytes as U+FFFD."
                )
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def text_sentences(path, progress, errors):
    """Yields the word lists of a one-sentence-per-line file."""
    for line in read_lines(path, progress, errors):
        words = line.split()
        if words:
            yield words


def raw_sentences(path, progress, errors):
    """Yields the word lists of running text, paragraph by paragraph."""
    paragraph = []
    for line in read_lines(path, progress, errors):
        if line.strip():
            paragraph.append(line.strip())
            continue
        yield from _paragraph_sentences(paragraph)
        paragraph = []
    yield from _paragraph_sentences(paragraph)


def _paragraph_sentences(lines):
    for sentence in split_sentences(" ".join(lines)):
        words = tokenize(sentence)
        if words:
            yield words


def ptb_sentences(path, progress, errors):
    """Yields the word lists of a PTB file, with <unk> renamed <UNK>."""
    for words in text_sentences(path, progress, errors):
        yield ["<UNK>" if w == "<unk>" else w for w in words]


class ShardWriter:
    """Writes sentences to the training and heldout shard files and counts training words."""

    def __init__(self, output_dir, num_train, num_heldout):
        self.train_paths = [
            os.path.join(output_dir, TRAIN_DIR, f"news.en-{i:05d}-of-{num_train:05d}")
            for i in range(num_train)
        ]
        self.heldout_paths = [
            os.path.join(
                output_dir, HELDOUT_DIR, f"news.en.heldout-{i:05d}-of-{num_heldout:05d}"
            )
            for i in range(num_heldout)
        ]
        for path in self.train_paths + self.heldout_paths:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self._train = [open(p, "w", encoding="utf-8") for p in self.train_paths]
        self._heldout = [open(p, "w", encoding="utf-8") for p in self.heldout_paths]
        self.counts = collections.Counter()
        self.train_sentences = self.train_words = 0
        self.heldout_sentences = self.heldout_words = 0
        self.heldout_per_shard = [0] * num_heldout

    def train(self, shard, words):
        self._train[shard].write(" ".join(words) + "\n")
        self.counts.update(words)
        self.train_sentences += 1
        self.train_words += len(words)

    def heldout(self, shard, words):
        self._heldout[shard].write(" ".join(words) + "\n")
        self.heldout_sentences += 1
        self.heldout_per_shard[shard] += 1
        self.heldout_words += len(words)

    def close(self):
        for f in self._train + self._heldout:
            f.close()


def shuffle_file(path, rng):
    """Shuffles the lines of a shard in place."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    rng.shuffle(lines)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def build_vocab(counts, num_sentences, max_vocab, min_count):
    """Returns (word, count) pairs sorted by count (desc) then word, with <S>, </S>, <UNK>."""
    words = [(w, c) for w, c in counts.items() if c >= min_count and w not in SPECIALS]
    words.sort(key=lambda wc: (-wc[1], wc[0]))
    if max_vocab is not None:
        words = words[: max_vocab - len(SPECIALS)]
    kept = sum(c for _, c in words)
    # Words already written as <UNK> (PTB) count towards <UNK> too.
    unknown = sum(c for w, c in counts.items() if w not in SPECIALS) - kept + counts["<UNK>"]
    entries = words + [("<S>", num_sentences), ("</S>", num_sentences), ("<UNK>", unknown)]
    entries.sort(key=lambda wc: (-wc[1], wc[0]))
    return entries


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", required=True, help="Directory to create the layout in.")
    parser.add_argument("--text", action="append", default=[], metavar="FILE",
                        help="One tokenized sentence per line (repeatable).")
    parser.add_argument("--raw", action="append", default=[], metavar="FILE",
                        help="Running text to split into sentences and tokenize (repeatable).")
    parser.add_argument("--ptb_dir", help="Directory with ptb.{train,valid,test}.txt.")
    parser.add_argument("--max_vocab", type=int, default=None,
                        help="Keep at most this many vocabulary entries, <S> </S> <UNK> included.")
    parser.add_argument("--min_count", type=int, default=1,
                        help="Leave out words seen fewer times in training (default 1).")
    parser.add_argument("--heldout_fraction", type=float, default=0.01,
                        help="Share of --text/--raw sentences held out (default 0.01, as LM1B).")
    parser.add_argument("--num_train_shards", type=int, default=100)
    parser.add_argument("--num_heldout_shards", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the shard assignment and shuffles.")
    parser.add_argument("--errors", choices=("strict", "replace"), default="strict",
                        help="Invalid UTF-8: stop with an error (default) or read it as U+FFFD.")
    args = parser.parse_args(argv)
    if not (args.text or args.raw or args.ptb_dir):
        parser.error("give at least one input: --text FILE, --raw FILE or --ptb_dir DIR")
    if args.max_vocab is not None and args.max_vocab < len(SPECIALS):
        parser.error(f"--max_vocab={args.max_vocab} must be >= {len(SPECIALS)} (<S>, </S>, <UNK>)")
    if args.min_count < 1:
        parser.error(f"--min_count={args.min_count} must be >= 1")
    if not 0 <= args.heldout_fraction < 1:
        parser.error(f"--heldout_fraction={args.heldout_fraction} must be in [0, 1)")
    if args.num_train_shards < 1:
        parser.error(f"--num_train_shards={args.num_train_shards} must be >= 1")
    min_heldout = 2 if args.ptb_dir else 1
    if args.num_heldout_shards < min_heldout:
        parser.error(
            f"--num_heldout_shards={args.num_heldout_shards} must be >= {min_heldout}"
            + (" with --ptb_dir (test in shard 0, valid in the others)" if args.ptb_dir else "")
        )
    for path in args.text + args.raw:
        if path != "-" and not os.path.isfile(path):
            parser.error(f"input file {path!r} does not exist")
    if args.ptb_dir:
        for split in ("train", "valid", "test"):
            path = os.path.join(args.ptb_dir, f"ptb.{split}.txt")
            if not os.path.isfile(path):
                parser.error(f"--ptb_dir: {path!r} does not exist")
    for name in (TRAIN_DIR, HELDOUT_DIR, VOCAB_FILE):
        if os.path.exists(os.path.join(args.output_dir, name)):
            parser.error(
                f"{os.path.join(args.output_dir, name)!r} already exists; remove it "
                "or choose another --output_dir"
            )
    return args


def main(argv=None):
    args = parse_args(argv)
    rng = random.Random(args.seed)
    writer = ShardWriter(args.output_dir, args.num_train_shards, args.num_heldout_shards)
    progress = Progress("reading")
    sources = [(path, text_sentences) for path in args.text]
    sources += [(path, raw_sentences) for path in args.raw]
    for path, sentences in sources:
        for words in sentences(path, progress, args.errors):
            if rng.random() < args.heldout_fraction:
                writer.heldout(rng.randrange(args.num_heldout_shards), words)
            else:
                writer.train(rng.randrange(args.num_train_shards), words)
    if args.ptb_dir:
        ptb = {s: os.path.join(args.ptb_dir, f"ptb.{s}.txt") for s in ("train", "valid", "test")}
        for words in ptb_sentences(ptb["train"], progress, args.errors):
            writer.train(rng.randrange(args.num_train_shards), words)
        for words in ptb_sentences(ptb["test"], progress, args.errors):
            writer.heldout(0, words)
        for words in ptb_sentences(ptb["valid"], progress, args.errors):
            writer.heldout(1 + rng.randrange(args.num_heldout_shards - 1), words)
    progress.done()
    writer.close()
    if writer.train_sentences == 0:
        sys.exit(
            "error: no training sentence in the inputs; give more text or lower "
            "--heldout_fraction"
        )

    # Shuffle each shard with its own seeded generator: LM1B's shards are
    # shuffled, and the result does not depend on the order of shards.
    for path in writer.train_paths + writer.heldout_paths:
        shuffle_file(path, random.Random(f"{args.seed}:{os.path.basename(path)}"))

    vocab = build_vocab(writer.counts, writer.train_sentences, args.max_vocab, args.min_count)
    with open(os.path.join(args.output_dir, VOCAB_FILE), "w", encoding="utf-8") as f:
        f.writelines(f"{word} {count}\n" for word, count in vocab)
    unk = dict(vocab)["<UNK>"]
    print(
        f"train: {writer.train_sentences:,} sentences, {writer.train_words:,} words "
        f"in {args.num_train_shards} shards\n"
        f"heldout: {writer.heldout_sentences:,} sentences, {writer.heldout_words:,} words "
        f"in {args.num_heldout_shards} shards\n"
        f"vocabulary: {len(vocab):,} entries; {unk:,} training words "
        f"({unk / max(writer.train_words, 1):.2%}) map to <UNK>\n"
        f"written to {args.output_dir}"
    )
    if writer.heldout_per_shard[0] == 0:
        print(
            "warning: heldout shard 00000, which lm1b/train.py --mode eval evaluates on, "
            f"is empty ({writer.heldout_sentences:,} heldout sentences in "
            f"{args.num_heldout_shards} shards). Rebuild with a larger --heldout_fraction "
            "or fewer --num_heldout_shards to evaluate on this corpus.",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
