"""lm1b/export.py: the SavedModel's score and next_words against the Keras
model's own computation, edge inputs, serving from a fresh TensorFlow-only
process and saved_model_cli, and checkpoints from JAX."""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from lm1b import checkpointing
from lm1b import data
from lm1b import export
from lm1b.hparams import HParams
from lm1b.model import LanguageModel
from lm1b.model import build_optimizers
from lm1b.model import split_variables

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TINY = os.path.join(REPO, "data", "tiny_corpus")
VOCAB = os.path.join(TINY, export.VOCAB)
HELDOUT = os.path.join(TINY, "heldout-monolingual.tokenized.shuffled", "news.en.heldout-00000-of-00001")
SMALL = "vocab_size=1543,emb_size=16,state_size=32,projected_size=16,num_sampled=8,batch_size=2,num_steps=5"
LSTMP = SMALL + ",num_layers=2"
GLSTM = SMALL + ",num_layers=1,num_of_groups=2"
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")

tf_backend = pytest.mark.tf_backend


def write_checkpoint(logdir, hpconfig, steps, seed=0, lstm_std=0.5):
    """Saves ckpt-<steps> with lm1b.checkpointing: the embedding and softmax
    weights drawn from N(0, 0.5²) by numpy (so the distributions are peaked),
    the LSTM's from N(0, lstm_std²), then ``steps`` LSTM optimizer steps on
    seeded gradients (so the EMA differs from the weights). The numbers are
    the same on every backend."""
    hps = HParams.parse(hpconfig)
    model = LanguageModel(hps)
    model.build()
    rng = np.random.default_rng(seed)
    lstm = {id(v) for v in model.lstm_variables}
    for variable in model.trainable_variables:
        std = lstm_std if id(variable) in lstm else 0.5
        variable.assign(rng.normal(0, std, variable.shape).astype("float32"))
    optimizers = build_optimizers(hps)
    for optimizer, variables in zip(optimizers, split_variables(model)):
        optimizer.build(variables)
    for _ in range(steps):
        grads = [rng.normal(size=v.shape).astype("float32") for v in model.lstm_variables]
        optimizers[0].apply(grads, model.lstm_variables)
    os.makedirs(logdir, exist_ok=True)
    state = {"elapsed": 0.0, "hparams": hps.to_dict(), "backend": keras.backend.backend()}
    return checkpointing.save(logdir, steps, model, optimizers, state)


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env


def _run(args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _reference_model(ckpt, ema=True):
    """A Keras model with the checkpoint's weights, the LSTM weights replaced by
    their moving average read straight from optimizers.npz (not through
    lm1b.export)."""
    state = checkpointing.read_state(ckpt)
    model = LanguageModel(HParams.from_dict(state["hparams"]))
    model.build()
    model.load_weights(os.path.join(ckpt, "model.weights.h5"))
    if ema:
        paths = state["optimizer_variables"]["lstm_optimizer"]
        with np.load(os.path.join(ckpt, "optimizers.npz")) as arrays:
            saved = {path: arrays[f"lstm_optimizer/{i}"] for i, path in enumerate(paths)}
        for v in model.lstm_variables:
            # Paths start with the model's name, which differs between processes.
            suffix = "_" + v.path.split("/", 1)[1].replace("/", "_") + "_average"
            [average] = [value for path, value in saved.items() if path.endswith(suffix)]
            v.assign(average)
    return model


def _ids(vocab, words):
    return [vocab.get_id(w) for w in words]


def _reference_log_prob(model, vocab, words):
    """-loss_sums of <S> words -> words <S>: the model's own full-softmax loss,
    the whole sentence in one call."""
    ids = _ids(vocab, words)
    x = np.array([[vocab.s_id] + ids], np.int32)
    y = np.array([ids + [vocab.s_id]], np.int32)
    loss, _, _ = model.loss_sums(x, y, np.ones(x.shape, np.float32), model.initial_state(1))
    return -float(keras.ops.convert_to_numpy(loss))


def _reference_next(model, vocab, words, top_k, call=None):
    """(words, probs) of the top_k next words, float64 softmax of the model's
    output; ``call`` runs the model (default: eagerly)."""
    x = np.array([[vocab.s_id] + _ids(vocab, words)], np.int32)
    h, _ = (call or model)(x, model.initial_state(1))
    h = keras.ops.convert_to_numpy(h)[0, -1].astype(np.float64)
    logits = keras.ops.convert_to_numpy(model.softmax_w).astype(np.float64) @ h
    logits += keras.ops.convert_to_numpy(model.softmax_b)
    log_p = logits - logits.max() - math.log(np.exp(logits - logits.max()).sum())
    order = np.argsort(-logits, kind="stable")[:top_k]
    return [vocab.tokens[i] for i in order], np.exp(log_p[order])


def _heldout(count):
    with open(HELDOUT, encoding="utf-8") as f:
        return [line.split() for line in f.read().split("\n")[:count]]


def _score(served, sentences):
    import tensorflow as tf

    out = served.signatures["score"](sentences=tf.constant(sentences, tf.string))
    return {k: v.numpy() for k, v in out.items()}


def _next(served, prefixes):
    import tensorflow as tf

    out = served.signatures["next_words"](prefix=tf.constant(prefixes, tf.string))
    return [w.decode() for w in out["words"].numpy().ravel()], out["probs"].numpy()


@pytest.fixture(scope="module")
def vocab():
    return data.Vocabulary.from_file(VOCAB)


@pytest.fixture(scope="module")
def lstmp(tmp_path_factory):
    """The LSTMP checkpoint (EMA after 2 steps), exported through the command line."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("lstmp")
    ckpt = write_checkpoint(str(root / "logdir"), LSTMP, steps=2)
    _run([sys.executable, os.path.join(REPO, "lm1b", "export.py"), "--logdir", str(root / "logdir"),
          "--datadir", TINY, "--export_dir", str(root / "export" / "1")],
         env=_env(KERAS_BACKEND="tensorflow"), cwd=str(root))
    return ckpt, str(root / "export" / "1"), tf.saved_model.load(str(root / "export" / "1"))


@pytest.fixture(scope="module")
def glstm(tmp_path_factory):
    """A G-LSTM checkpoint whose optimizer took no step (so no EMA yet),
    exported with top_k = V (next_words gives the whole distribution)."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("glstm")
    ckpt = write_checkpoint(str(root / "logdir"), GLSTM, steps=0, seed=1)
    (root / "export").mkdir()  # an empty directory may exist
    export.export(ckpt, VOCAB, str(root / "export"), top_k=1543)
    return ckpt, tf.saved_model.load(str(root / "export"))


@tf_backend
def test_export_directory_is_complete_and_readable(glstm):
    ckpt, _ = glstm
    root = os.path.dirname(os.path.dirname(ckpt))
    assert sorted(os.listdir(root)) == ["export", "logdir"]  # no temporary left
    export_dir = os.path.join(root, "export")
    assert {"saved_model.pb", "variables"} <= set(os.listdir(export_dir))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(export_dir).st_mode & 0o777 == 0o777 & ~umask


@tf_backend
def test_score_equals_the_models_own_loss_with_ema(lstmp, vocab):
    ckpt, _, served = lstmp
    sentences = _heldout(6) + [["zzzunknown", "And", "God"]]
    got = _score(served, [" ".join(words) for words in sentences])
    model = _reference_model(ckpt)
    want = np.array([_reference_log_prob(model, vocab, words) for words in sentences])
    np.testing.assert_allclose(got["log_prob"], want, rtol=1e-5, atol=1e-4)
    lengths = np.array([len(words) + 1 for words in sentences])
    np.testing.assert_array_equal(got["num_tokens"], lengths)
    np.testing.assert_allclose(got["perplexity"], np.exp(-want / lengths), rtol=1e-4)
    assert max(lengths) > 3 * 5  # several windows of num_steps = 5
    # The EMA, not the raw weights, is what matches.
    raw = _reference_model(ckpt, ema=False)
    assert abs(_reference_log_prob(raw, vocab, sentences[0]) - want[0]) > 0.1


@tf_backend
def test_next_words_equal_the_models_softmax(lstmp, vocab):
    ckpt, _, served = lstmp
    prefixes = [[], ["And"], _heldout(1)[0][:12], ["zzzunknown"]]
    words, probs = _next(served, [" ".join(p) for p in prefixes])
    assert probs.shape == (4, 10)
    model = _reference_model(ckpt)
    for row, prefix in enumerate(prefixes):
        want_words, want_probs = _reference_next(model, vocab, prefix, 10)
        assert words[10 * row: 10 * row + 10] == want_words
        np.testing.assert_allclose(probs[row], want_probs, rtol=1e-4, atol=1e-7)
    assert np.all(np.diff(probs, axis=1) <= 0)


@tf_backend
def test_glstm_without_ema_steps_uses_the_weights(glstm, vocab):
    """No optimizer step yet: Keras has not filled the average in, so the
    export must use the weights themselves."""
    ckpt, served = glstm
    sentences = _heldout(3)
    got = _score(served, [" ".join(words) for words in sentences])["log_prob"]
    model = _reference_model(ckpt, ema=False)
    want = [_reference_log_prob(model, vocab, words) for words in sentences]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@tf_backend
def test_one_word_score_is_next_words_chained(glstm, vocab):
    """exp(score(w)) = P(w | <S>) · P(<S> | <S> w), both from next_words."""
    _, served = glstm
    words, probs = _next(served, [""])
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    p_first = dict(zip(words, probs[0]))
    candidates = [words[0], words[1], "God", "light", "<UNK>"]
    ends, end_probs = _next(served, candidates)
    for i, word in enumerate(candidates):
        p_end = dict(zip(ends[1543 * i: 1543 * (i + 1)], end_probs[i]))[vocab.s]
        got = _score(served, [word])
        assert got["num_tokens"][0] == 2
        assert math.exp(got["log_prob"][0]) == pytest.approx(p_first[word] * p_end, rel=1e-4)


@tf_backend
def test_edge_inputs(lstmp, vocab):
    ckpt, _, served = lstmp
    model = _reference_model(ckpt)
    unk = vocab.unk

    def ref(words):
        return _reference_log_prob(model, vocab, words)

    cases = [
        ("", []),
        (" \t\n ", []),
        ("And\u3000God\u00a0said\u2003,", ["And", "God", "said", ","]),  # multi-byte spaces
        ("日本語 テキスト 🙂 e\u0301", [unk] * 4),  # non-Latin, emoji, combining mark
        ("God \x00 light", ["God", unk, "light"]),
        ("God\x1flight", [unk]),  # U+001F is not Unicode White_Space
    ]
    got = _score(served, [text for text, _ in cases])
    want = [ref(words) for _, words in cases]
    np.testing.assert_allclose(got["log_prob"], want, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got["num_tokens"], [len(words) + 1 for _, words in cases])
    # Invalid UTF-8 is read as U+FFFD, an unknown word.
    got = _score(served, [b"God \xff\xfe light", "God zzz light"])["log_prob"]
    np.testing.assert_allclose(got, ref(["God", unk, "light"]), rtol=1e-5, atol=1e-4)
    # An empty batch.
    empty = _score(served, [])
    assert all(v.shape == (0,) for v in empty.values())
    words, probs = _next(served, [])
    assert probs.shape == (0, 10) and words == []
    words, _ = _next(served, ["日本語 \xff", "And\u3000God"])
    assert words[:10] == _reference_next(model, vocab, [unk, unk], 10)[0]
    assert words[10:] == _reference_next(model, vocab, ["And", "God"], 10)[0]


@pytest.fixture(scope="module")
def lstmp_contracting(tmp_path_factory):
    """An LSTMP checkpoint whose recurrence forgets small differences, exported.

    With the other fixtures' N(0, 0.5²) LSTM weights the recurrence is
    chaotic: a 1e-6 change of the initial state changes h by O(1) within 100
    steps, so over thousands of steps two float32 computations agree only
    where their kernels round alike (the served graph and a tf.function did
    on one CPU and not on another). With N(0, 0.2²) such a change decays
    (below 1e-7 after 20 steps), so a mismatch is a real one; the test
    checks that this still holds for the weights it serves.
    """
    import tensorflow as tf

    root = tmp_path_factory.mktemp("lstmp_contracting")
    ckpt = write_checkpoint(str(root / "logdir"), LSTMP, steps=2, lstm_std=0.2)
    export.export(ckpt, VOCAB, str(root / "export"))
    return ckpt, tf.saved_model.load(str(root / "export"))


@tf_backend
def test_long_inputs_and_batches_do_not_interact(lstmp_contracting, vocab):
    """5,000 words in windows of num_steps: the same log-probability as the
    whole sequence in one model call; short rows batched with it unchanged."""
    import tensorflow as tf

    ckpt, served = lstmp_contracting
    rng = np.random.default_rng(0)
    long = [vocab.tokens[i] for i in rng.integers(0, vocab.num_tokens, 5000)]
    model = _reference_model(ckpt)
    # The comparison below is only meaningful if the recurrence forgets a
    # rounding-sized difference of its state (see the fixture).
    prefix = np.array([[vocab.s_id] + _ids(vocab, long[:100])], np.int32)
    states = model.initial_state(1)
    nudged = tf.nest.map_structure(lambda s: s + 1e-6, states)
    drift = np.abs(np.asarray(model(prefix, states)[0]) - np.asarray(model(prefix, nudged)[0]))[0, -1].max()
    assert drift < 1e-6, f"the served LSTM does not forget a 1e-6 nudge of its state ({drift:.1e} after 100 steps)"
    short = _heldout(2)
    got = _score(served, [" ".join(long)] + [" ".join(w) for w in short])
    ids = _ids(vocab, long)
    x = np.array([[vocab.s_id] + ids], np.int32)
    y = np.array([ids + [vocab.s_id]], np.int32)
    loss = tf.function(model.loss_sums)(x, y, tf.ones(x.shape), model.initial_state(1))[0]
    want = [-float(loss)] + [_reference_log_prob(model, vocab, w) for w in short]
    assert got["num_tokens"][0] == 5001
    np.testing.assert_allclose(got["log_prob"], want, rtol=1e-5, atol=1e-4)
    alone = _score(served, [" ".join(w) for w in short])["log_prob"]
    np.testing.assert_allclose(got["log_prob"][1:], alone, rtol=1e-6)
    words, _ = _next(served, [" ".join(long)])
    assert words == _reference_next(model, vocab, long, 10, call=tf.function(model))[0]


@tf_backend
def test_serving_from_a_fresh_tensorflow_only_process(lstmp, tmp_path):
    """tf.saved_model.load with only tensorflow and tensorflow_text imported."""
    _, export_dir, served = lstmp
    sentences = ["And God said , Let there be light", "", "日本語 \u3000 light"]
    script = f"""
import json, sys
import tensorflow as tf
import tensorflow_text  # registers the tokenizer's ops
served = tf.saved_model.load({export_dir!r})
score = served.signatures["score"](sentences=tf.constant({sentences!r}))
nxt = served.signatures["next_words"](prefix=tf.constant(["And God", ""]))
print(json.dumps({{
    "log_prob": score["log_prob"].numpy().tolist(),
    "num_tokens": score["num_tokens"].numpy().tolist(),
    "words": [[w.decode() for w in row] for row in nxt["words"].numpy()],
    "probs": nxt["probs"].numpy().tolist(),
    "signatures": sorted(served.signatures),
    "lm1b_imported": any(m.split(".")[0] in ("lm1b", "keras_flstm") for m in sys.modules),
}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    out = json.loads(_run([sys.executable, "-c", script], env=env, cwd=str(tmp_path)).stdout.splitlines()[-1])
    assert out["signatures"] == ["next_words", "score", "serving_default"]
    assert not out["lm1b_imported"]
    want = _score(served, sentences)
    np.testing.assert_allclose(out["log_prob"], want["log_prob"], rtol=1e-6)
    assert out["num_tokens"] == want["num_tokens"].tolist() == [9, 1, 3]
    words, probs = _next(served, ["And God", ""])
    assert [w for row in out["words"] for w in row] == words
    np.testing.assert_allclose(out["probs"], probs, rtol=1e-6)


@tf_backend
def test_saved_model_cli_run(lstmp, tmp_path):
    """docs/serving.md's two ways: the saved_model_cli command with
    tensorflow-text's op libraries in a tensorflow-plugins directory, and
    saved_model_cli's entry point after importing tensorflow_text."""
    import tensorflow_text

    _, export_dir, served = lstmp
    plugins = tmp_path / "site-packages" / "tensorflow-plugins"
    plugins.mkdir(parents=True)
    ops_dir = os.path.join(os.path.dirname(tensorflow_text.__file__), "python", "ops")
    for name in os.listdir(ops_dir):
        if name.endswith(".so"):
            os.symlink(os.path.join(ops_dir, name), plugins / name)
    sentences = ["And God said , Let there be light", "", "日本語 light"]
    _run([SAVED_MODEL_CLI, "run", "--dir", export_dir, "--tag_set", "serve",
          "--signature_def", "score", "--input_exprs", f"sentences={sentences!r}",
          "--outdir", str(tmp_path / "score")],
         env=_env(PYTHONPATH=str(tmp_path / "site-packages")))
    want = _score(served, sentences)
    for key in ("log_prob", "num_tokens", "perplexity"):
        np.testing.assert_allclose(np.load(tmp_path / "score" / f"{key}.npy"), want[key], rtol=1e-6)

    entry = ("import sys, tensorflow_text; from tensorflow.python.tools.saved_model_cli "
             "import main; sys.argv[0] = 'saved_model_cli'; main()")
    _run([sys.executable, "-c", entry, "run", "--dir", export_dir, "--tag_set", "serve",
          "--signature_def", "next_words", "--input_exprs", "prefix=['And God', '']",
          "--outdir", str(tmp_path / "next")], env=_env())
    words, probs = _next(served, ["And God", ""])
    got_words = np.load(tmp_path / "next" / "words.npy", allow_pickle=True)
    assert [w.decode() for w in got_words.ravel()] == words
    np.testing.assert_allclose(np.load(tmp_path / "next" / "probs.npy"), probs, rtol=1e-6)


@tf_backend
def test_jax_checkpoint_serves_like_the_tensorflow_one(lstmp, tmp_path, vocab):
    """The same weights and optimizer steps, checkpointed on JAX, export and
    serve as the TensorFlow checkpoint does."""
    import tensorflow as tf

    _, _, served_tf = lstmp
    logdir = str(tmp_path / "jax")
    code = (f"import sys; sys.path[:0] = [{REPO!r}, {HERE!r}]; import test_export; "
            f"test_export.write_checkpoint({logdir!r}, {LSTMP!r}, steps=2)")
    _run([sys.executable, "-c", code], env=_env(KERAS_BACKEND="jax"))
    ckpt = checkpointing.latest(logdir)
    assert checkpointing.read_state(ckpt)["backend"] == "jax"
    export.export(ckpt, VOCAB, str(tmp_path / "export"))
    served_jax = tf.saved_model.load(str(tmp_path / "export"))
    sentences = [" ".join(words) for words in _heldout(4)] + ["", "日本語"]
    got, want = _score(served_jax, sentences), _score(served_tf, sentences)
    # The EMA is computed on each backend, so the weights agree to float32 rounding.
    np.testing.assert_allclose(got["log_prob"], want["log_prob"], rtol=1e-4)
    np.testing.assert_array_equal(got["num_tokens"], want["num_tokens"])
    prefixes = ["", "And God", sentences[0]]
    (words_jax, probs_jax), (words_tf, probs_tf) = _next(served_jax, prefixes), _next(served_tf, prefixes)
    assert words_jax == words_tf
    np.testing.assert_allclose(probs_jax, probs_tf, rtol=1e-4)


def test_export_needs_the_tensorflow_backend(tmp_path, monkeypatch):
    if keras.backend.backend() == "tensorflow":
        monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="KERAS_BACKEND='jax'.*Rerun with KERAS_BACKEND=tensorflow"):
        export.export(str(tmp_path), VOCAB, str(tmp_path / "export"))


@tf_backend
def test_errors_name_the_value_and_the_fix(lstmp, tmp_path):
    ckpt, _, _ = lstmp
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "saved_model.pb").write_text("")
    with pytest.raises(ValueError, match="exists and is not empty.*delete it"):
        export.export(ckpt, VOCAB, str(tmp_path / "full"))
    with pytest.raises(ValueError, match="top_k=0 must be an int in \\[1, 1543\\]"):
        export.export(ckpt, VOCAB, str(tmp_path / "a"), top_k=0)
    other_vocab = os.path.join(TINY, "sources", "flm", "test_vocab.txt")
    with pytest.raises(ValueError, match="has 1000 tokens but vocab_size=1543"):
        export.export(ckpt, other_vocab, str(tmp_path / "b"))
    with pytest.raises(ValueError, match="not a checkpoint directory.*ckpt-<step>"):
        export.export(str(tmp_path), VOCAB, str(tmp_path / "c"))
    assert sorted(os.listdir(tmp_path)) == ["full"]  # nothing half-written
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "lm1b", "export.py"), "--logdir", str(tmp_path / "none"),
         "--datadir", TINY, "--export_dir", str(tmp_path / "d")],
        capture_output=True, text=True, env=_env(),
    )
    assert result.returncode != 0
    assert "No checkpoint in --logdir=" in result.stderr and "--checkpoint" in result.stderr
