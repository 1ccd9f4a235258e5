"""lm1b.model: structure, state carrying, losses, f-lm's objective, saving,
and the eval perplexity of lm1b/train.py against a float64 numpy model."""

import math
import os

import keras
import numpy as np
import pytest
from keras import ops

from lm1b import checkpointing
from lm1b import data
from lm1b import train
from lm1b.hparams import HParams
from lm1b.model import EMA_DECAY
from lm1b.model import LanguageModel
from lm1b.model import build_model_and_optimizers
from lm1b.model import build_optimizers
from lm1b.model import flm_gradients
from lm1b.model import split_variables
from tests.cells import reference as ref

TINY_CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "data", "tiny_corpus")
SMALL = "vocab_size=50,emb_size=8,state_size=16,projected_size=8,num_sampled=10,batch_size=3,num_steps=4"


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def _model(hpconfig, seed=0):
    keras.utils.set_random_seed(seed)
    model = LanguageModel(HParams.parse(hpconfig))
    model.build()
    return model


def _ids(shape, vocab=50, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype("int32")


def test_outputs_states_and_weight_shapes():
    model = _model(SMALL + ",num_layers=2")
    out, states = model(_ids((3, 4)), model.initial_state(3))
    assert tuple(out.shape) == (3, 4, 8)
    assert [[tuple(s.shape) for s in layer] for layer in states] == [[(3, 8), (3, 16)]] * 2
    shapes = {v.path.split("/", 1)[1]: tuple(v.shape) for v in model.trainable_variables}
    assert shapes["embedding/embeddings"] == (50, 8)
    assert shapes["softmax_w"] == (50, 8) and shapes["softmax_b"] == (50,)
    assert shapes["rnn_1/lstmp_cell/kernel"] == (8, 64)
    assert shapes["rnn_1/lstmp_cell/projection_kernel"] == (16, 8)
    assert len(model.lstm_variables) == 8


def test_initial_embedding_and_softmax_scale_follow_flm_shards():
    model = _model("vocab_size=4000,emb_size=16,state_size=8,projected_size=16,num_sampled=10,num_shards=8")
    limit = math.sqrt(3.0 / 500)  # rows per shard: 4000 / 8
    for weights in (model.embedding.embeddings, model.softmax_w):
        values = _np(weights)
        assert np.abs(values).max() <= limit
        assert np.abs(values).max() > 0.9 * limit


def test_carried_states_continue_the_sequence():
    """Two half batches with the state carried equal one whole batch (truncated BPTT)."""
    model = _model(SMALL + ",num_layers=2")
    x = _ids((3, 8))
    whole, whole_states = model(x, model.initial_state(3))
    first, states = model(x[:, :4], model.initial_state(3))
    second, states = model(x[:, 4:], states)
    np.testing.assert_allclose(_np(ops.concatenate([first, second], axis=1)), _np(whole), atol=1e-5)
    for got, want in zip(states, whole_states):
        np.testing.assert_allclose(_np(got[0]), _np(want[0]), atol=1e-5)
        np.testing.assert_allclose(_np(got[1]), _np(want[1]), atol=1e-5)


@pytest.mark.parametrize("keep_prob, differs", [(0.5, True), (1.0, False)])
def test_dropout_only_in_training(keep_prob, differs):
    model = _model(SMALL + f",keep_prob={keep_prob}")
    x, states = _ids((3, 4)), model.initial_state(3)
    eval_out = _np(model(x, states)[0])
    np.testing.assert_array_equal(eval_out, _np(model(x, states)[0]))
    train_out = _np(model(x, states, training=True)[0])
    assert (not np.allclose(train_out, eval_out)) == differs


@pytest.mark.parametrize("cell", ["", ",fact_size=4", ",num_of_groups=2:4"])
def test_unrolled_recurrence_computes_the_same_as_the_loop(cell):
    hpconfig = SMALL + ",num_layers=2,keep_prob=1" + cell
    looped, unrolled = _model(hpconfig), _model(hpconfig + ",unroll=true")
    assert [rnn.unroll for rnn in unrolled.rnns] == [True, True]
    assert [rnn.unroll for rnn in looped.rnns] == [False, False]
    unrolled.set_weights(looped.get_weights())
    x = _ids((3, 4))
    want, want_states = looped(x, looped.initial_state(3))
    got, got_states = unrolled(x, unrolled.initial_state(3))
    np.testing.assert_allclose(_np(got), _np(want), atol=1e-6)
    for got_layer, want_layer in zip(got_states, want_states):
        for got_state, want_state in zip(got_layer, want_layer):
            np.testing.assert_allclose(_np(got_state), _np(want_state), atol=1e-6)


def test_residual_adds_each_layer_input():
    model = _model(SMALL + ",use_residual=true,keep_prob=1")
    x, states = _ids((3, 4)), model.initial_state(3)
    embedded = model.embedding(x)
    rnn_out = model.rnns[0](embedded, initial_state=states[0])[0]
    np.testing.assert_allclose(_np(model(x, states)[0]), _np(rnn_out + embedded), atol=1e-6)


@pytest.mark.parametrize(
    "extra, layer_params",
    [
        # d = p = 8, n = 16, r = 4: the REFERENCE.md parameter formulas per layer.
        ("", 4 * 16 * (8 + 8) + 4 * 16 + 16 * 8),
        (",use_peepholes=true", 4 * 16 * (8 + 8) + 4 * 16 + 16 * 8 + 3 * 16),
        (",fact_size=4", 4 * (8 + 8) + 4 * 16 * 4 + 4 * 16 + 16 * 8),
        (",num_of_groups=2", 4 * 16 * (8 + 8) // 2 + 4 * 16 + 16 * 8),
    ],
)
def test_cell_variants_parameter_counts(extra, layer_params):
    model = _model(SMALL + ",num_layers=2" + extra)
    assert sum(math.prod(v.shape) for v in model.lstm_variables) == 2 * layer_params


def test_hierarchical_groups_per_layer():
    model = _model(SMALL + ",num_layers=2,num_of_groups=2:4")
    assert [rnn.cell.groups for rnn in model.rnns] == [2, 4]
    model = _model(SMALL + ",num_layers=2,num_of_groups=1:2")
    assert [type(rnn).__name__ for rnn in model.rnns] == ["LSTMP", "GLSTM"]


def test_loss_sums_weigh_real_tokens_only():
    model = _model(SMALL)
    x, y = _ids((3, 4)), _ids((3, 4), seed=1)
    w = np.ones((3, 4), "float32")
    w[2, 1:] = 0.0
    loss_sum, tokens, _ = model.loss_sums(x, y, w, model.initial_state(3))
    assert float(tokens) == 9.0
    # Changing a padded target changes nothing.
    y2 = y.copy()
    y2[2, 3] = (y2[2, 3] + 1) % 50
    loss_sum2, _, _ = model.loss_sums(x, y2, w, model.initial_state(3))
    assert float(loss_sum2) == pytest.approx(float(loss_sum), rel=1e-6)


def test_sampled_softmax_training_loss():
    model = _model(SMALL + ",keep_prob=1")
    x, y, w = _ids((3, 4)), _ids((3, 4), seed=1), np.ones((3, 4), "float32")
    states = model.initial_state(3)
    sampled = [float(model.loss_sums(x, y, w, states, training=True)[0]) for _ in range(2)]
    full = float(_model(SMALL.replace("num_sampled=10", "num_sampled=0") + ",keep_prob=1")
                 .loss_sums(x, y, w, states, training=True)[0])
    assert all(np.isfinite(sampled))
    assert sampled[0] != sampled[1]  # fresh candidates every call
    # Same weights (same seed): the sampled loss estimates the full one.
    assert sampled[0] != pytest.approx(full) and 0.3 * full < sampled[0] < 1.5 * full


def test_vocab_rows_gather_the_distinct_ids_in_order():
    model = _model(SMALL)
    x, y = _ids((3, 4)), _ids((3, 4), seed=1)
    rows = model.vocab_rows(x, y)
    emb_ids, sm_ids = (ops.convert_to_numpy(i) for i in (rows.embedding_ids, rows.softmax_ids))
    assert emb_ids.shape == (12,) and sm_ids.shape == (12 + 10,)
    for ids, want in ((emb_ids, x), (sm_ids, np.concatenate([y.ravel(), ops.convert_to_numpy(
            ops.take(rows.softmax_ids, rows.sampled_rows))]))):
        distinct = np.unique(want)
        np.testing.assert_array_equal(ids[: len(distinct)], distinct)
        assert (ids[len(distinct):] == 50).all()  # padded with V
    np.testing.assert_array_equal(emb_ids[ops.convert_to_numpy(rows.x_rows)], x.ravel())
    np.testing.assert_array_equal(sm_ids[ops.convert_to_numpy(rows.y_rows)], y.ravel())
    assert len(set(sm_ids[ops.convert_to_numpy(rows.sampled_rows)])) == 10
    np.testing.assert_array_equal(_np(rows.softmax_w), _np(model.softmax_w)[np.minimum(sm_ids, 49)])
    np.testing.assert_array_equal(_np(rows.embedding), _np(model.embedding.embeddings)[np.minimum(emb_ids, 49)])


def test_loss_through_vocab_rows_equals_the_dense_loss():
    """Same sampled classes (the sampler's seed state is rewound): reading
    E, W and b through the gathered rows changes nothing."""
    model = _model(SMALL + ",keep_prob=1,num_layers=2")
    x, y = _ids((3, 4)), _ids((3, 4), seed=1)
    w = np.ones((3, 4), "float32")
    w[1, 2:] = 0.0
    states = model.initial_state(3)
    seed_state = ops.convert_to_numpy(model.sampler_seed.state.value)
    rows = model.vocab_rows(x, y)
    sparse = model.loss_sums(x, y, w, states, training=True, rows=rows)
    model.sampler_seed.state.assign(seed_state)
    dense = model.loss_sums(x, y, w, states, training=True)
    assert float(sparse[0]) == pytest.approx(float(dense[0]), rel=1e-6)
    for a, b in zip(sparse[2], dense[2]):
        np.testing.assert_allclose(_np(a[0]), _np(b[0]), atol=1e-6)
    # The rows are what the loss reads: other values there change it.
    moved = rows._replace(softmax_w=rows.softmax_w + np.random.default_rng(0).normal(size=(22, 8)).astype("float32"))
    assert float(model.loss_sums(x, y, w, states, training=True, rows=moved)[0]) != pytest.approx(
        float(sparse[0]), rel=1e-3)
    with pytest.raises(ValueError, match="rows= is for training with the sampled softmax"):
        model.loss_sums(x, y, w, states, rows=rows)
    with pytest.raises(ValueError, match="vocab_rows needs num_sampled > 0"):
        _model(SMALL.replace("num_sampled=10", "num_sampled=0")).vocab_rows(x, y)


def test_float16_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="float16_rnn=True.*Set float16_rnn=false"):
        LanguageModel(HParams.parse(SMALL + ",float16_rnn=true"))


def test_config_round_trip_and_saved_model(tmp_path):
    model = _model(SMALL + ",num_layers=2,num_of_groups=2")
    clone = LanguageModel.from_config(model.get_config())
    clone.build()
    assert clone.hparams == model.hparams
    model.save_weights(str(tmp_path / "m.weights.h5"))
    clone.load_weights(str(tmp_path / "m.weights.h5"))
    x = _ids((3, 4))
    want = _np(model(x, model.initial_state(3))[0])
    np.testing.assert_array_equal(_np(clone(x, clone.initial_state(3))[0]), want)
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    np.testing.assert_array_equal(_np(loaded(x, loaded.initial_state(3))[0]), want)


@pytest.mark.parametrize("index, name", enumerate(["Adagrad", "SGD", "Adam", "RMSprop", "SGD"]))
def test_build_optimizers(index, name):
    hps = HParams.parse(SMALL + f",optimizer={index},loss_scale=2,max_grad_norm=3,learning_rate=0.5")
    lstm, other = build_optimizers(hps, gradient_copies=4)
    for optimizer in (lstm, other):
        assert type(optimizer).__name__ == name
        assert float(optimizer.learning_rate) == 0.5
        if name == "Adagrad":
            assert optimizer.initial_accumulator_value == 4.0
    assert lstm.global_clipnorm == 2 * 3 / 4 and other.global_clipnorm is None
    assert lstm.use_ema and lstm.ema_momentum == EMA_DECAY and not other.use_ema
    if index == 1:
        assert lstm.momentum == other.momentum == 0.9
    assert not build_optimizers(hps.override("average_params=false"))[0].use_ema


def test_flm_gradients_scale():
    model = _model(SMALL + ",loss_scale=2")
    grads = [ops.ones(v.shape) for v in model.trainable_variables]
    scaled = flm_gradients(model, grads, ops.convert_to_tensor(10.0))
    for v, g in zip(model.trainable_variables, scaled):
        factor = 2 * 4 / 10 * (3 if v is model.embedding.embeddings else 1)
        np.testing.assert_allclose(_np(g), factor)


def test_split_variables_covers_every_weight_once():
    model = _model(SMALL)
    lstm, other = split_variables(model)
    assert {id(v) for v in lstm} == {id(v) for v in model.lstm_variables}
    assert sorted(map(id, lstm + other)) == sorted(map(id, model.trainable_variables))


def _numpy_perplexity(weights, hps, batches):
    """Float64 forward pass with carried states; exp(Σ w·ℓ / Σ w)."""
    states = [(np.zeros((len(batches[0][0]), hps.projected_size)),
               np.zeros((len(batches[0][0]), hps.state_size)))] * hps.num_layers
    loss_sum = tokens = 0.0
    for x, y, w in batches:
        h = weights["embedding"][x]
        for i in range(hps.num_layers):
            k, rk, b, p = weights[f"rnn_{i}"]
            h, h_last, c_last = ref.run(ref.lstmp_affine(k, rk, b), h, *states[i], P=p)
            states[i] = (h_last, c_last)
        logits = h @ weights["softmax_w"].T + weights["softmax_b"]
        top = logits.max(-1, keepdims=True)
        log_z = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]
        target = np.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        loss_sum += ((log_z - target) * w).sum()
        tokens += w.sum()
    return math.exp(loss_sum / tokens), tokens


def test_eval_perplexity_matches_numpy_with_ema(tmp_path):
    """train.py's eval_full: full softmax, carried states, EMA LSTM weights,
    exp(Σ w·ℓ / Σ w) over real tokens, against a float64 numpy model."""
    hps = HParams.parse(
        "vocab_size=1543,emb_size=8,state_size=16,projected_size=8,num_layers=2,"
        "batch_size=5,num_steps=7,num_gpus=2,num_sampled=16"
    )
    keras.utils.set_random_seed(3)
    model, optimizers = build_model_and_optimizers(hps)
    rng = np.random.default_rng(0)
    for _ in range(3):  # make the EMA differ from the weights
        grads = [rng.normal(size=v.shape).astype("float32") for v in model.lstm_variables]
        optimizers[0].apply(grads, model.lstm_variables)
    checkpointing.save(str(tmp_path), 3, model, optimizers,
                       {"elapsed": 1.0, "hparams": hps.to_dict()})

    averages = {v.path: _np(v) for v in optimizers[0].variables}
    ema = [averages[f"lstm_optimizer/{v.path.replace('/', '_')}_average"]
           for v in model.lstm_variables]
    assert not np.allclose(ema[0], _np(model.lstm_variables[0]))
    weights = {"embedding": _np(model.embedding.embeddings), "softmax_w": _np(model.softmax_w),
               "softmax_b": _np(model.softmax_b)}
    for i in range(2):
        weights[f"rnn_{i}"] = ema[4 * i: 4 * i + 4]  # kernel, recurrent, bias, projection
    vocab = data.Vocabulary.from_file(os.path.join(TINY_CORPUS, train.VOCAB))
    heldout = data.Dataset(vocab, os.path.join(TINY_CORPUS, train.HELDOUT_FILES), deterministic=True)
    batches = list(heldout.iterate_once(10, 7))  # 5 rows x 2 GPUs, as f-lm
    want, tokens = _numpy_perplexity(weights, hps, batches)

    record = train.run(train.Options(TINY_CORPUS, str(tmp_path), mode="eval_full"))
    assert record["tokens"] == tokens == 4489  # every real held-out target
    assert record["batches"] == len(batches) and record["step"] == 3
    assert record["perplexity"] == pytest.approx(want, rel=2e-5)
    assert 50 < want < 5000  # a real, non-degenerate check

    partial = train.run(train.Options(TINY_CORPUS, str(tmp_path), mode="eval", eval_steps=4))
    assert partial["batches"] == 4 and partial["tokens"] == 4 * 10 * 7 and not partial["full"]
    want_partial, _ = _numpy_perplexity(weights, hps, batches[:4])
    assert partial["perplexity"] == pytest.approx(want_partial, rel=2e-5)
