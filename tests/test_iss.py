"""ISS: component definitions, group lasso, ZeroOut, sparsity report and pruning.

The reference here defines every ISS component from first principles, as
boolean masks over the weights (`component_masks`), independently of the
reshapes that keras_flstm.iss uses.
"""

import importlib.util
import json
import os
import re

import keras
import numpy as np
import pytest
from keras import ops

from keras_flstm import FLSTM, GLSTM, LSTMP, FLSTMCell, GLSTMCell, LSTMPCell
from keras_flstm import iss

VOCAB, EMB, T = 11, 6, 5

CELLS = {"lstmp": (LSTMP, LSTMPCell), "flstm": (FLSTM, FLSTMCell), "glstm": (GLSTM, GLSTMCell)}

# Two-layer stacks Embedding -> RNN -> Dropout -> RNN -> Dense, as
# (kind, args, kwargs) per RNN layer; with the units killed in the prune
# tests and the units each layer must keep.
STACKS = {
    "lstmp_proj": [("lstmp", (8,), {"projection_units": 4, "use_peepholes": True}), ("lstmp", (6,), {"projection_units": 3})],
    "lstm": [("lstmp", (8,), {}), ("lstmp", (6,), {})],
    "flstm_proj": [("flstm", (8, 3), {"projection_units": 4}), ("flstm", (6, 2), {"projection_units": 2})],
    "flstm": [("flstm", (8, 3), {"use_peepholes": True}), ("flstm", (6, 2), {})],
    "glstm_proj": [("glstm", (8, 2), {"projection_units": 4, "use_peepholes": True}), ("glstm", (6, 2), {"projection_units": 4})],
    # The second G-LSTM (4 groups) reads the first's units in 4 slices.
    "glstm": [("glstm", (8, 2), {}), ("glstm", (8, 4), {})],
    # The LSTM's units feed a 2-group G-LSTM: they prune in 2 equal halves.
    "lstm_into_glstm": [("lstmp", (8,), {}), ("glstm", (6, 2), {"projection_units": 4})],
}
DEAD = {
    "lstmp_proj": ([1, 4, 6], [0, 5]),
    "lstm": ([1, 4, 6], [0, 5]),
    "flstm_proj": ([1, 4, 6], [0, 5]),
    "flstm": ([1, 4, 6], [0, 5]),
    # Groups {0..3}, {4..7} keep (3, 2) alive -> 3 each; {0,1,2}, {3,4,5} -> 2 each.
    "glstm_proj": ([1, 4, 6], [0, 5]),
    # Slices of 2 units: 1 alive in each -> 4; second layer likewise.
    "glstm": ([1, 2, 4, 6], [0, 3, 5, 6]),
    "lstm_into_glstm": ([1, 4, 6], [0, 5]),
}
KEPT = {
    "lstmp_proj": (5, 4),
    "lstm": (5, 4),
    "flstm_proj": (5, 4),
    "flstm": (5, 4),
    "glstm_proj": (6, 4),
    "glstm": (4, 4),
    "lstm_into_glstm": (6, 4),
}
stacks = pytest.mark.parametrize("stack", STACKS)


def rnn(kind, fused, args, kwargs, **layer_kwargs):
    layer_cls, cell_cls = CELLS[kind]
    # Weights are set right after; zeros initialise fast under JAX (no
    # per-shape compile of the orthogonal initializer).
    kwargs = {**kwargs, **{f"{w}_initializer": "zeros" for w in ("kernel", "recurrent", "projection")}}
    if kind == "flstm":
        kwargs["factor_initializer"] = "zeros"
    if fused:
        return layer_cls(*args, **kwargs, **layer_kwargs)
    return keras.layers.RNN(cell_cls(*args, **kwargs), **layer_kwargs)


def build(stack, fused=True, sequential=False, seed=0, dropout=0.3, mask_zero=False):
    """The stack with random N(0, 0.5) weights (biases and peepholes too)."""
    (k1, a1, kw1), (k2, a2, kw2) = STACKS[stack]
    layers = [
        keras.layers.Embedding(VOCAB, EMB, embeddings_initializer="zeros", mask_zero=mask_zero),
        rnn(k1, fused, a1, kw1, return_sequences=True),
        keras.layers.Dropout(dropout),
        rnn(k2, fused, a2, kw2, return_sequences=True),
        keras.layers.Dense(VOCAB, kernel_initializer="zeros"),
    ]
    inputs = keras.Input((T,), dtype="int32")
    if sequential:
        model = keras.Sequential([inputs, *layers])
    else:
        x = inputs
        for layer in layers:
            x = layer(x)
        model = keras.Model(inputs, x)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape) for w in model.weights])
    return model


def tokens(n=4, seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, (n, T)).astype("int32")


def rnn_layers(model):
    """(layer, consumer) for every RNN layer: the next RNN layer, else the Dense."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.RNN)]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    return list(zip(layers, layers[1:] + [dense]))


def component_masks(layer, consumer, k):
    """{id: (variable, bool mask)}: the entries of ISS component k of `layer`."""
    cell = layer.cell
    n, projected = cell.units, cell.projection_units is not None
    masks = {}

    def mark(variable, index):
        _, mask = masks.setdefault(id(variable), (variable, np.zeros(variable.shape, bool)))
        mask[index] = True

    gate_columns = [g * n + k for g in range(4)]
    if isinstance(cell, GLSTMCell):
        size = n // cell.groups
        group, local = divmod(k, size)
        for w in (cell.kernel, cell.recurrent_kernel):
            mark(w, (group, slice(None), [g * size + local for g in range(4)]))
        if not projected:
            mark(cell.recurrent_kernel, (group, local, slice(None)))
    elif isinstance(cell, FLSTMCell):
        mark(cell.factor_kernel, (slice(None), gate_columns))
        if not projected:
            mark(cell.recurrent_kernel, (k, slice(None)))
    else:
        mark(cell.kernel, (slice(None), gate_columns))
        mark(cell.recurrent_kernel, (slice(None), gate_columns))
        if not projected:
            mark(cell.recurrent_kernel, (k, slice(None)))
    mark(cell.bias, (gate_columns,))
    for peephole in cell.peepholes or ():
        mark(peephole, (k,))
    if projected:
        mark(cell.projection_kernel, (k, slice(None)))
    else:
        kernel = consumer.cell.kernel if isinstance(consumer, keras.layers.RNN) else consumer.kernel
        if len(kernel.shape) == 3:  # a G-LSTM reads its input in slices
            mark(kernel, (k // kernel.shape[1], k % kernel.shape[1], slice(None)))
        else:
            mark(kernel, (k, slice(None)))
    return masks


def reference_norms(model):
    """Per RNN layer, the float64 norm of every component."""
    norms = []
    for layer, consumer in rnn_layers(model):
        layer_norms = []
        for k in range(layer.cell.units):
            total = 0.0
            for variable, mask in component_masks(layer, consumer, k).values():
                total += np.sum(value(variable)[mask] ** 2)
            layer_norms.append(np.sqrt(total))
        norms.append(np.array(layer_norms))
    return norms


def value(variable):
    return np.asarray(ops.convert_to_numpy(variable), np.float64)


def set_entries(variable, mask, new):
    w = value(variable)
    w[mask] = new if np.isscalar(new) else new[mask]
    variable.assign(w.astype(variable.dtype))


def kill(model, dead_per_layer, scale=0.0):
    """Multiplies the components `dead_per_layer[i]` of RNN layer i by `scale`."""
    for (layer, consumer), dead in zip(rnn_layers(model), dead_per_layer):
        for k in dead:
            for variable, mask in component_masks(layer, consumer, k).values():
                set_entries(variable, mask, value(variable) * scale)


def units(model):
    return tuple(layer.cell.units for layer, _ in rnn_layers(model))


# --- component definitions -------------------------------------------------


@stacks
def test_zeroed_component_is_removed_and_any_part_keeps_it_alive(stack):
    model = build(stack, fused=stack.startswith("g"))
    pairs = rnn_layers(model)
    # Unit 5 is in the second group of every G-LSTM here.
    (layer, consumer) = pairs[0]
    masks = component_masks(layer, consumer, 5)
    original = {key: value(variable) for key, (variable, _) in masks.items()}
    for variable, mask in masks.values():
        set_entries(variable, mask, 0.0)
    report = iss.sparsity_report(model)
    assert report.layers[0].removed == (5,)
    assert report.layers[1].removed == ()
    assert len(report.layers[0].alive) == layer.cell.units - 1
    # One nonzero entry in any single part brings the component back.
    for key, (variable, mask) in masks.items():
        w = value(variable)
        first = tuple(np.argwhere(mask)[-1])
        w[first] = original[key][first]
        variable.assign(w.astype(variable.dtype))
        assert iss.sparsity_report(model).layers[0].removed == (), variable.path
        set_entries(variable, mask, 0.0)
    # Zeroing everything outside the component keeps it alive (and others
    # that share entries with it: W_h[j, gate columns of 5] is in both 5 and j
    # without projection).
    for variable, mask in masks.values():
        set_entries(variable, mask, original[id(variable)])
    for w in model.weights:
        keep = masks.get(id(w), (None, np.zeros(w.shape, bool)))[1]
        w.assign(np.where(keep, value(w), 0.0).astype(w.dtype))
    assert 5 in iss.sparsity_report(model).layers[0].alive


def test_report_structure_and_text():
    model = build("glstm_proj")
    kill(model, DEAD["glstm_proj"])
    report = iss.sparsity_report(model)
    first = report.as_dict()["layers"][0]
    assert first["units"] == 8 and first["cell"] == "GLSTMCell"
    assert first["removed"] == (1, 4, 6)
    assert first["alive_per_group"] == (3, 2)
    assert first["consumer"] is None  # projected: no rows outside the layer
    other = build("lstm_into_glstm")
    lstm = iss.sparsity_report(other).layers[0]
    assert lstm.consumer == rnn_layers(other)[1][0].name
    assert len(lstm.alive_per_group) == 2  # the G-LSTM consumer reads 2 slices
    text = str(report)
    assert rnn_layers(model)[0][0].name in text and "alive per group" in text


# --- group lasso -------------------------------------------------------------


@stacks
def test_penalty_matches_numpy(stack):
    model = build(stack, fused=stack.endswith("proj"))
    want = sum(norms.sum() for norms in reference_norms(model))
    np.testing.assert_allclose(float(iss.group_lasso(model)), want, rtol=1e-5)
    np.testing.assert_allclose(float(iss.GroupLasso(model, 0.25).penalty()), 0.25 * want, rtol=1e-5)


def _zero_data_loss(y_true, y_pred):
    return ops.mean(y_pred, axis=-1) * 0.0


def test_group_lasso_gradient_step_under_fit():
    """One SGD step on the penalty alone: w -= lr·λ·Σ_k w·[w ∈ c_k]/‖c_k‖."""
    model = build("lstm_into_glstm")
    before = {id(w): value(w) for w in model.weights}
    lr, strength = 0.5, 0.1
    want = {key: w.copy() for key, w in before.items()}
    for (layer, consumer), norms in zip(rnn_layers(model), reference_norms(model)):
        for k, norm in enumerate(norms):
            for variable, mask in component_masks(layer, consumer, k).values():
                want[id(variable)] -= lr * strength * np.where(mask, before[id(variable)], 0.0) / norm
    trainer = iss.GroupLasso(model, strength)
    trainer.compile(optimizer=keras.optimizers.SGD(lr), loss=_zero_data_loss)
    x = tokens()
    trainer.fit(x, x, batch_size=len(x), epochs=1, verbose=0)
    for w in model.weights:
        np.testing.assert_allclose(value(w), want[id(w)], atol=1e-6, err_msg=w.path)


def test_group_lasso_trains_with_fit():
    model = build("lstm", seed=2)
    model.set_weights([w * 0.3 for w in model.get_weights()])
    rng = np.random.default_rng(3)
    x = rng.integers(0, VOCAB, (32, T)).astype("int32")
    y = np.roll(x, -1, axis=1)
    start = float(iss.group_lasso(model))
    trainer = iss.GroupLasso(model, 0.02)
    trainer.compile(
        optimizer=keras.optimizers.SGD(0.5, global_clipnorm=5.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    first = trainer.evaluate(x, y, verbose=0, return_dict=True)
    history = trainer.fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[iss.ZeroOut(1e-3)])
    last = trainer.evaluate(x, y, verbose=0, return_dict=True)
    assert np.all(np.isfinite(history.history["loss"]))
    data_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x))
    np.testing.assert_allclose(last["loss"], float(data_loss), rtol=1e-5)  # no penalty
    assert last["loss"] < first["loss"]
    end = float(iss.group_lasso(model))
    assert end < start
    # Evaluation reports the penalty of the weights it evaluated.
    np.testing.assert_allclose([first["group_lasso"], last["group_lasso"]], [0.02 * start, 0.02 * end], rtol=1e-5)
    # The logged penalty is λ·Ω, averaged over the epoch's batches.
    logged = history.history["group_lasso"][-1]
    assert 0 < 0.02 * end <= logged * 1.05
    np.testing.assert_allclose(end, sum(n.sum() for n in reference_norms(model)), rtol=1e-5)


# --- ZeroOut -----------------------------------------------------------------


def _small_entries(model, seed=4):
    """Sets 30% of every weight to ±5e-5 (below the 1e-4 threshold)."""
    rng = np.random.default_rng(seed)
    masks = {}
    for w in model.weights:
        mask = rng.random(w.shape) < 0.3
        set_entries(w, mask, np.where(rng.random(w.shape) < 0.5, 5e-5, -5e-5))
        masks[id(w)] = mask
    return masks


def _fit(model, x, y, batch_size):
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[iss.ZeroOut(1e-4)])


def test_zero_out_zeroes_small_component_weights_only():
    model = build("flstm")
    masks = _small_entries(model)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=_zero_data_loss)
    x = tokens()
    _fit(model, x, x, len(x))
    first_rnn = rnn_layers(model)[0][0]
    embedding = [layer for layer in model.layers if isinstance(layer, keras.layers.Embedding)][0]
    untouched = {id(embedding.embeddings), id(first_rnn.cell.kernel), id(model.layers[-1].bias)}
    for w in model.weights:
        small = value(w)[masks[id(w)]]
        if id(w) in untouched:
            np.testing.assert_allclose(np.abs(small), 5e-5, rtol=1e-3, err_msg=w.path)
        else:
            assert np.all(small == 0), w.path
            assert np.all(value(w)[~masks[id(w)]] != 0), w.path


def test_zero_out_takes_effect_before_the_next_batch():
    """Two batches in one fit equal two fits of one batch each.

    Between fits the weights are always read back from the variables, so
    this fails if the trainer ran batch 2 on weights ZeroOut had not zeroed
    (JAX keeps its training state outside the variables during fit).
    """
    x = tokens(8, seed=5)
    y = np.roll(x, -1, axis=1)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = []
    for split in (False, True):
        model = build("lstm", seed=6, dropout=0.0)
        _small_entries(model)
        # Steps small enough that some ±5e-5 entries stay below 1e-4.
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss)
        if split:
            _fit(model, x[:4], y[:4], 4)
            _fit(model, x[4:], y[4:], 4)
        else:
            _fit(model, x, y, 4)
        results.append([value(w) for w in model.weights])
        # ZeroOut acted: the Dense kernel (a component part) has exact zeros.
        assert np.sum(value(model.layers[-1].kernel) == 0) > 0
    for one, two in zip(*results):
        np.testing.assert_allclose(one, two, atol=1e-7)


# --- prune -----------------------------------------------------------------


@stacks
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "rnn_cell"])
def test_prune_equals_zeroed_original(stack, fused):
    model = build(stack, fused=fused)
    kill(model, DEAD[stack])
    small = iss.prune(model)
    assert units(small) == KEPT[stack]
    assert isinstance(small, keras.Model) and not isinstance(small, keras.Sequential)
    assert iss.sparsity_report(small).layers[0].units == KEPT[stack][0]
    x = tokens()
    np.testing.assert_allclose(small(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("stack", ["lstm", "glstm"])
def test_masked_stack_from_embedding_mask_zero(stack):
    # Keras lists the mask as a second input of the RNN layers here; the
    # stack is still linear.
    model = build(stack, mask_zero=True)
    kill(model, DEAD[stack])
    report = iss.sparsity_report(model)
    assert [layer.removed for layer in report.layers] == [tuple(d) for d in DEAD[stack]]
    want = sum(n.sum() for n in reference_norms(model))
    np.testing.assert_allclose(float(iss.GroupLasso(model, 1.0).penalty()), want, rtol=1e-5)
    small = iss.prune(model)
    assert units(small) == KEPT[stack]
    x = tokens()
    x[:, -2:] = 0  # padded tails, masked out
    np.testing.assert_allclose(small(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("stack", ["lstm", "glstm_proj", "flstm"])
def test_prune_sequential(stack):
    model = build(stack, sequential=True)
    kill(model, DEAD[stack])
    small = iss.prune(model)
    assert isinstance(small, keras.Sequential)
    assert units(small) == KEPT[stack]
    x = tokens()
    np.testing.assert_allclose(small(x), model(x), atol=1e-5, rtol=0)


# Exact parameter counts, before and after pruning (units from KEPT).
PARAMS = {
    # emb 11·6; L1 4·8·(6+8)+32; L2 4·6·(8+6)+24; Dense 6·11+11 -> 66+480+360+77.
    # Pruned to (5, 4): 66 + (4·5·(6+5)+20) + (4·4·(5+4)+16) + (4·11+11).
    "lstm": (983, 66 + 240 + 160 + 55),
    # L1 W1x 6·3, W1h 8·3, W2 3·32, b 32, peepholes 24; L2 W1x 8·2, W1h 6·2,
    # W2 2·24, b 24; Dense 77. Pruned: L1 18+5·3+3·20+20+15; L2 5·2+4·2+2·16+16; Dense 55.
    "flstm": (66 + 194 + 100 + 77, 66 + 128 + 66 + 55),
    # L1 kernel 2·3·16, rec 2·2·16, b 32, peep 24, P 32; L2 kernel 2·2·12,
    # rec 2·2·12, b 24, P 24; Dense 4·11+11. Pruned L1 to 6: 72+48+24+18+24;
    # L2 to 4: 32+32+16+16.
    "glstm_proj": (66 + 248 + 144 + 55, 66 + 186 + 96 + 55),
}


@pytest.mark.parametrize("stack", PARAMS)
def test_pruned_parameter_counts(stack):
    model = build(stack)
    kill(model, DEAD[stack])
    before, after = PARAMS[stack]
    assert model.count_params() == before
    assert iss.prune(model).count_params() == after


def test_prune_threshold_removes_small_components():
    model = build("glstm_proj", fused=False)
    kill(model, DEAD["glstm_proj"], scale=1e-4)
    assert units(iss.prune(model)) == (8, 6)  # nothing is exactly zero
    small = iss.prune(model, threshold=1e-2)
    assert units(small) == KEPT["glstm_proj"]
    kill(model, DEAD["glstm_proj"])
    x = tokens()
    np.testing.assert_allclose(small(x), model(x), atol=1e-5, rtol=0)


def test_prune_keeps_the_strongest_units_of_each_group():
    model = build("glstm_proj")
    # Group 0 {0..3} keeps 3 survivors; group 1 {4..7} only 2 (5, 7), so it
    # also keeps its strongest dead unit: 4 (small) rather than 6 (zero).
    kill(model, ([1, 6], []))
    kill(model, ([4], []), scale=1e-3)
    small = iss.prune(model, threshold=1e-2)
    assert units(small) == (6, 6)
    np.testing.assert_allclose(reference_norms(small)[0], reference_norms(model)[0][[0, 2, 3, 4, 5, 7]], rtol=1e-5)
    x = tokens()
    np.testing.assert_allclose(small(x), model(x), atol=1e-5, rtol=0)


def test_prune_works_after_group_lasso_training():
    model = build("lstm", seed=7)
    # Entries of the DEAD components fall below ZeroOut's threshold at once.
    kill(model, DEAD["lstm"], scale=0.05)
    trainer = iss.GroupLasso(model, 0.01)
    trainer.compile(optimizer=keras.optimizers.SGD(0.5), loss=_zero_data_loss)
    x = tokens(8)
    trainer.fit(x, x, batch_size=4, epochs=2, verbose=0, callbacks=[iss.ZeroOut(0.05)])
    assert [layer.removed for layer in iss.sparsity_report(trainer).layers] == [(1, 4, 6), (0, 5)]
    small = iss.prune(trainer)
    assert units(small) == KEPT["lstm"]
    np.testing.assert_allclose(small(x), model(x), atol=1e-5, rtol=0)


# --- errors ----------------------------------------------------------------


def test_error_no_prunable_layer():
    model = keras.Sequential([keras.Input((T, 3)), keras.layers.LSTM(4), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no prunable layer.*LSTMPCell.*lstm"):
        iss.sparsity_report(model)
    with pytest.raises(ValueError, match="no prunable layer"):
        iss.GroupLasso(model, 0.1)


@pytest.mark.parametrize("threshold", [-1.0, "0.1", None])
def test_error_bad_prune_threshold(threshold):
    with pytest.raises(ValueError, match=re.escape(f">= 0, got threshold={threshold!r}")):
        iss.prune(build("lstm"), threshold=threshold)


def test_error_bad_strength_and_zero_out_threshold():
    with pytest.raises(ValueError, match="strength=-0.1.*0.00245"):
        iss.GroupLasso(build("lstm"), -0.1)
    with pytest.raises(ValueError, match="> 0, got threshold=0"):
        iss.ZeroOut(0)


def test_error_unprojected_output_layer():
    model = keras.Sequential([keras.Input((T, 3)), LSTMP(4, name="last")])
    with pytest.raises(ValueError, match="'last' has no projection.*model's output.*Add a Dense"):
        iss.group_lasso(model)


def test_error_unsupported_consumer():
    model = keras.Sequential(
        [keras.Input((T, 3)), LSTMP(4, return_sequences=True, name="lstm"), keras.layers.LayerNormalization(name="norm"), keras.layers.Dense(2)]
    )
    with pytest.raises(ValueError, match="'lstm'.*'norm' \\(LayerNormalization\\).*projection_units"):
        iss.prune(model)


def test_error_non_linear_topology():
    inputs = keras.Input((T, 4))
    a = LSTMP(4, projection_units=2, name="a")(inputs)
    b = LSTMP(4, name="b")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.Concatenate()([a, b]))
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="'b' has no projection.*linear stack"):
        iss.sparsity_report(model)
    projected = keras.Model(inputs, keras.layers.Add()([a, LSTMP(4, projection_units=2)(inputs)]))
    assert len(iss.sparsity_report(projected).layers) == 2  # no consumer needed
    with pytest.raises(ValueError, match="prune supports linear stacks"):
        iss.prune(projected)


def test_error_everything_pruned():
    model = build("lstm")
    kill(model, (range(8), []))
    with pytest.raises(ValueError, match="All 8 ISS components of layer .*Lower `threshold`"):
        iss.prune(model)


def test_error_unbuilt_model():
    with pytest.raises(ValueError, match="not built"):
        iss.prune(keras.Sequential([LSTMP(4, projection_units=2)]))


# --- scripts/iss_ptb.py ------------------------------------------------------

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def load_script():
    spec = importlib.util.spec_from_file_location("iss_ptb", os.path.join(ROOT, "scripts", "iss_ptb.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_ptb(folder, prefix="ptb."):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    for split, lines in (("train", 400), ("valid", 60), ("test", 60)):
        with open(os.path.join(folder, f"{prefix}{split}.txt"), "w") as f:
            for _ in range(lines):
                f.write(" " + " ".join(rng.choice(words, rng.integers(3, 12))) + " \n")


@pytest.mark.parametrize("prefix", ["ptb.", ""])
def test_script_reads_ptb_files(tmp_path, prefix):
    script = load_script()
    write_ptb(tmp_path, prefix)
    train, valid, test = script.load_splits(str(tmp_path))
    assert (len(train), len(valid), len(test)) == (400, 60, 60)
    vocab = script.build_vocab(train, max_vocab=10)
    assert len(vocab) == 10 and vocab["<unk>"] == 9 and "<eos>" in vocab
    ids = script.to_ids(valid, vocab)
    assert len(ids) == sum(len(words) + 1 for words in valid)  # one <eos> per line


def test_script_reads_lm1b_layout():
    script = load_script()
    train, valid, test = script.load_splits(os.path.join(ROOT, "data", "tiny_corpus"))
    assert len(train) == 1321  # docs/data.md
    assert len(valid) + len(test) == 139 and abs(len(valid) - len(test)) <= 1
    with pytest.raises(SystemExit, match="neither ptb"):
        script.load_splits(ROOT)


def test_script_batches_continue_each_row():
    script = load_script()
    ids = np.arange(1000, dtype=np.int32)
    x, y = script.batches(ids, batch_size=4, num_steps=7)
    # Row r of batch i+1 starts where row r of batch i ended; y is x shifted by one.
    np.testing.assert_array_equal(x[4:8, 0], x[0:4, -1] + 1)
    np.testing.assert_array_equal(y, x + 1)
    assert x.shape == (4 * ((250 - 1) // 7), 7)


def test_script_picks_the_biggest_cut_within_the_perplexity_budget():
    script = load_script()

    def run(strength, hidden, ppl):
        return {"strength": strength, "final": {"hidden": hidden, "valid_ppl": ppl}}

    runs = [run(1, [300, 300], 100.5), run(2, [200, 100], 100.9), run(3, [50, 50], 104.0)]
    assert script.pick(runs, 100.0, 0.01)["strength"] == 2
    assert script.pick(runs, 100.0, 0.05)["strength"] == 3
    assert script.pick(runs, 90.0, 0.01)["strength"] == 1  # none within: the lowest perplexity
    with pytest.raises(SystemExit):
        script.parse_args(["--data_dir", "x", "--out", "y", "--strength", "0.01,-1"])


def test_script_runs_end_to_end(tmp_path):
    script = load_script()
    write_ptb(tmp_path)
    out = tmp_path / "iss.json"
    script.main(
        ["--data_dir", str(tmp_path), "--out", str(out), "--hidden", "16", "--epochs", "1", "--max_steps", "3",
         "--num_steps", "5", "--batch_size", "4", "--timing_runs", "1", "--strength", "0.01,0.02",
         "--finetune_epochs", "1"]
    )
    result = json.load(open(out))
    assert result["backend"] == keras.backend.backend()
    assert result["iss"]["valid_ppl"] == result["pruned"]["valid_ppl"]
    assert [r["strength"] for r in result["iss_runs"]] == [0.01, 0.02]
    assert result["strength"] in (0.01, 0.02) and "finetuned" in result
    timing = result["inference"]["cpu" if keras.backend.backend() == "jax" else "default"]
    assert timing["speedup"] == pytest.approx(timing["baseline_ms"] / timing["pruned_ms"], rel=1e-2)
    # Vocabulary 30 words + <eos> + <unk>: embedding, 2 LSTMs of 16, softmax.
    assert result["baseline"]["params"] == 32 * 16 + 2 * (4 * 16 * (16 + 16) + 64) + 16 * 32 + 32
    for key in ("baseline", "iss", "pruned", "direct_design", "inference", "sparsity", "command", "machine"):
        assert key in result
