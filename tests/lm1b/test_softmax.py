"""lm1b.softmax against independent references.

- sampled_softmax_loss: tf.nn.sampled_softmax_loss fed the same sampled
  values (TensorFlow is installed on both backend runs), and its gradients.
- log_uniform_candidate_sampler: empirical inclusion frequencies over many
  seeded draws, against our expected counts and against TF's own
  ``unique=True`` sampler.
- full_softmax_loss: a float64 numpy cross-entropy over all classes.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from lm1b.softmax import (
    full_softmax_loss,
    log_uniform_candidate_sampler,
    sampled_softmax_loss,
)

V, D, B, S = 1000, 16, 48, 64


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _problem(dtype, seed=0, num_classes=V):
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(num_classes, D)).astype(dtype)
    biases = rng.normal(size=num_classes).astype(dtype)
    inputs = rng.normal(size=(B, D)).astype(dtype)
    # Frequent (small) ids, so TF's sampler draws many of the labels too.
    labels = rng.integers(0, min(40, num_classes), size=(B, 1)).astype("int64")
    return weights, biases, labels, inputs


def _tf_sampled_values(labels, seed, num_classes=V, num_sampled=S):
    # In eager mode an op seed's draws also depend on the global seed and on
    # how many seeded ops ran before (other tests seed Keras/TF): reset both.
    tf.random.set_seed(seed)
    values = tf.random.log_uniform_candidate_sampler(
        true_classes=tf.constant(labels, tf.int64), num_true=1,
        num_sampled=num_sampled, unique=True, range_max=num_classes, seed=seed,
    )
    return tuple(v.numpy() for v in values)


def _tf_reference(weights, biases, labels, inputs, sampled_values, remove_accidental_hits=True):
    # TF wants the expected counts in the inputs' dtype.
    sampled, true_count, sampled_count = sampled_values
    sampled_values = (sampled, true_count.astype(inputs.dtype), sampled_count.astype(inputs.dtype))
    return tf.nn.sampled_softmax_loss(
        tf.constant(weights), tf.constant(biases), tf.constant(labels, tf.int64),
        tf.constant(inputs), S, weights.shape[0], sampled_values=sampled_values,
        remove_accidental_hits=remove_accidental_hits,
    ).numpy()


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
@pytest.mark.parametrize("remove_accidental_hits", [True, False])
def test_sampled_loss_matches_tf(dtype, tol, remove_accidental_hits):
    weights, biases, labels, inputs = _problem(dtype)
    sampled_values = _tf_sampled_values(labels, seed=1)
    hits = labels == sampled_values[0][None, :]
    assert hits.any(axis=1).sum() > B // 2, "the check needs accidental hits"
    expected = _tf_reference(weights, biases, labels, inputs, sampled_values, remove_accidental_hits)
    got = sampled_softmax_loss(weights, biases, labels, inputs, S, V,
                               sampled_values=sampled_values,
                               remove_accidental_hits=remove_accidental_hits)
    assert keras.backend.standardize_dtype(got.dtype) == dtype
    np.testing.assert_allclose(_np(got), expected, rtol=tol, atol=tol)


def test_sampled_loss_with_own_sampler_matches_tf():
    weights, biases, labels, inputs = _problem("float64", seed=2)
    sampled_values = tuple(_np(v) for v in log_uniform_candidate_sampler(labels, S, V, seed=5))
    expected = _tf_reference(weights, biases, labels, inputs, sampled_values)
    flat_labels = labels[:, 0]  # [B] labels are accepted as well as [B, 1]
    got = sampled_softmax_loss(weights, biases, flat_labels, inputs, S, V,
                               sampled_values=sampled_values)
    np.testing.assert_allclose(_np(got), expected, rtol=1e-10)


def test_accidental_hit_is_removed_from_the_softmax():
    # Hand-built case, float64 numpy reference: example 0's label 3 is sampled
    # at position 1, so that sampled logit must not enter its logsumexp.
    weights, biases, _, inputs = _problem("float64", seed=3)
    labels = np.array([[3]] + [[10]] * (B - 1))
    sampled = np.arange(2, 2 + S)
    sampled[1] = 3
    sampled[0] = 900
    true_count = np.full((B, 1), 0.5)
    sampled_count = np.linspace(0.1, 0.9, S)
    logits_true = np.sum(inputs * weights[labels[:, 0]], 1) + biases[labels[:, 0]] - np.log(0.5)
    logits_sampled = inputs @ weights[sampled].T + biases[sampled] - np.log(sampled_count)
    logits_sampled[labels[:, 0, None] == sampled[None, :]] = -np.inf
    all_logits = np.concatenate([logits_true[:, None], logits_sampled], 1)
    top = all_logits.max(1)
    expected = top + np.log(np.exp(all_logits - top[:, None]).sum(1)) - logits_true
    got = sampled_softmax_loss(weights, biases, labels, inputs, S, V,
                               sampled_values=(sampled, true_count, sampled_count))
    np.testing.assert_allclose(_np(got), expected, rtol=1e-12)


def test_sampled_loss_survives_large_logits():
    # exp(±100) overflows or vanishes in float32: the true logit far above the
    # sampled ones (loss ~ 0) and far below them (loss ~ the gap) must both
    # stay finite and match TF's concatenated logsumexp.
    # One label for every row, so shifting its bias moves only the true
    # logits (if it is also sampled, it is an accidental hit in every row).
    weights, biases, labels, inputs = _problem("float32", seed=8)
    labels[:] = 7
    sampled_values = _tf_sampled_values(labels, seed=3)
    for shift, loss_range in ((100.0, (0.0, 1e-30)), (-100.0, (80.0, 130.0))):
        shifted = biases.copy()
        shifted[7] += shift
        expected = _tf_reference(weights, shifted, labels, inputs, sampled_values)
        got = _np(sampled_softmax_loss(weights, shifted, labels, inputs, S, V,
                                       sampled_values=sampled_values))
        assert np.all(np.isfinite(got))
        assert loss_range[0] <= expected.min() and expected.max() <= loss_range[1]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("true_gap", [None, 100.0, -100.0])
def test_sampled_gradients_match_tf(true_gap):
    weights, biases, labels, inputs = _problem("float64", seed=4)
    if true_gap is not None:
        # As in the large-logit test: one label, its logit far from the rest.
        labels[:] = 7
        biases[7] += true_gap
    sampled_values = _tf_sampled_values(labels, seed=2)
    with tf.GradientTape() as tape:
        tensors = [tf.constant(a) for a in (weights, biases, inputs)]
        tape.watch(tensors)
        loss = tf.reduce_sum(tf.nn.sampled_softmax_loss(
            tensors[0], tensors[1], tf.constant(labels), tensors[2], S, V,
            sampled_values=tuple(v.astype(weights.dtype) if v.dtype.kind == "f" else v
                                 for v in sampled_values)))
    expected = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, tensors)]

    def total_loss(w, b, x):
        return ops.sum(sampled_softmax_loss(w, b, labels, x, S, V, sampled_values=sampled_values))

    for got, want in zip(_gradients(total_loss, (weights, biases, inputs)), expected):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def _gradients(fn, args):
    if keras.backend.backend() == "jax":
        import jax

        return [np.asarray(g) for g in jax.grad(fn, argnums=(0, 1, 2))(*args)]
    with tf.GradientTape() as tape:
        tensors = [tf.constant(a) for a in args]
        tape.watch(tensors)
        loss = fn(*tensors)
    return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, tensors)]


def test_bfloat16_inputs_are_computed_in_float32():
    weights, biases, labels, inputs = _problem("float32", seed=5)
    sampled_values = _tf_sampled_values(labels, seed=3)
    inputs_bf16 = ops.cast(inputs, "bfloat16")
    rounded = _np(ops.cast(inputs_bf16, "float32"))
    got = sampled_softmax_loss(weights, biases, labels, inputs_bf16, S, V,
                               sampled_values=sampled_values)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    expected = _tf_reference(weights, biases, labels, rounded, sampled_values)
    np.testing.assert_allclose(_np(got), expected, rtol=1e-5, atol=1e-5)
    full = full_softmax_loss(weights, biases, labels, inputs_bf16, chunk_size=256)
    assert keras.backend.standardize_dtype(full.dtype) == "float32"
    np.testing.assert_allclose(
        _np(full), _numpy_full_softmax(weights, biases, labels, rounded), rtol=1e-5, atol=1e-5
    )


def test_sampler_output_shapes_and_distinct_ids():
    labels = np.array([[0], [5], [999]])
    sampled, true_count, sampled_count = log_uniform_candidate_sampler(labels, S, V, seed=1)
    sampled = _np(sampled)
    assert sampled.shape == (S,) and sampled.dtype == np.int32
    assert len(set(sampled.tolist())) == S
    assert sampled.min() >= 0 and sampled.max() < V
    assert _np(true_count).shape == (3, 1) and _np(sampled_count).shape == (S,)
    # Under a fixed seed the draw is reproducible; another seed changes it.
    again = _np(log_uniform_candidate_sampler(labels, S, V, seed=1)[0])
    other = _np(log_uniform_candidate_sampler(labels, S, V, seed=2)[0])
    np.testing.assert_array_equal(sampled, again)
    assert set(sampled.tolist()) != set(other.tolist())


def test_expected_counts_sum_to_num_sampled():
    # Inclusion probabilities of a fixed-size sample add up to its size.
    for num_classes, num_sampled in [(V, S), (50, 49), (793470, 8192)]:
        _, counts, _ = log_uniform_candidate_sampler(
            np.arange(num_classes), num_sampled, num_classes, seed=0)
        counts = _np(counts).astype(np.float64)
        assert counts.max() <= 1.0 and counts.min() > 0
        np.testing.assert_allclose(counts.sum(), num_sampled, rtol=1e-5)


DRAWS = 3000
SAMPLER_V, SAMPLER_S = 1000, 100


def _inclusion_frequencies(draw):
    counts = np.zeros(SAMPLER_V)
    for i in range(DRAWS):
        counts[draw(i)] += 1
    return counts / DRAWS


def _assert_binomial_agreement(freq, prob, variance):
    """Frequencies agree with probabilities within binomial noise.

    ``variance`` is per draw (p(1 - p) for one Bernoulli estimate). Where the
    normal approximation holds, z = (freq - prob)/sd must look
    standard normal (mean z² near 1, no |z| > 5). Elsewhere fewer than 5
    draws are expected to differ, and at most 10 may (Poisson tail < 1e-4).
    Seeds are fixed, so this cannot flake.
    """
    normal = DRAWS * variance >= 5
    z = (freq - prob)[normal] / np.sqrt(variance[normal] / DRAWS)
    assert normal.sum() > SAMPLER_V // 2
    assert 0.85 < np.mean(z**2) < 1.15, np.mean(z**2)
    assert np.abs(z).max() < 5, np.abs(z).max()
    assert np.all(np.abs(freq - prob)[~normal] * DRAWS <= 10)


@pytest.fixture(scope="module")
def our_frequencies():
    seeds = keras.random.SeedGenerator(1234)
    label = np.zeros((1, 1), "int32")
    return _inclusion_frequencies(
        lambda i: _np(log_uniform_candidate_sampler(label, SAMPLER_S, SAMPLER_V, seed=seeds)[0]))


def test_expected_counts_match_empirical_frequencies(our_frequencies):
    _, counts, _ = log_uniform_candidate_sampler(np.arange(SAMPLER_V), SAMPLER_S, SAMPLER_V, seed=0)
    counts = _np(counts).astype(np.float64)
    # Without replacement the head classes are nearly always in the set; the
    # with-replacement count S·P(k) would be 10 for k = 0.
    assert counts[0] > 0.999 and our_frequencies[0] == 1.0
    _assert_binomial_agreement(our_frequencies, counts, counts * (1 - counts))


def test_sample_distribution_matches_tf_unique_sampler(our_frequencies):
    label = np.zeros((1, 1), "int64")
    tf_frequencies = _inclusion_frequencies(
        lambda i: _tf_sampled_values(label, seed=i + 1, num_classes=SAMPLER_V,
                                     num_sampled=SAMPLER_S)[0])
    pooled = (our_frequencies + tf_frequencies) / 2
    # Two independent estimates: the difference has twice the variance.
    _assert_binomial_agreement(our_frequencies, tf_frequencies, 2 * pooled * (1 - pooled))


def _numpy_full_softmax(weights, biases, labels, inputs):
    logits = inputs.astype(np.float64) @ weights.astype(np.float64).T + biases
    top = logits.max(1)
    log_z = top + np.log(np.exp(logits - top[:, None]).sum(1))
    return log_z - logits[np.arange(len(labels)), np.reshape(labels, -1)]


@pytest.mark.parametrize("chunk_size", [300, 250, 1000, 4096, 1])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_full_softmax_matches_numpy(chunk_size, dtype, tol):
    # 300 leaves a remainder of 100 classes; 250 divides V; 4096 > V.
    num_classes = 1000 if chunk_size > 1 else 37
    weights, biases, labels, inputs = _problem(dtype, seed=6, num_classes=num_classes)
    labels[:5, 0] = num_classes - 1 - np.arange(5)  # labels in the remainder chunk
    got = full_softmax_loss(weights, biases, labels, inputs, chunk_size=chunk_size)
    assert keras.backend.standardize_dtype(got.dtype) == dtype
    np.testing.assert_allclose(
        _np(got), _numpy_full_softmax(weights, biases, labels, inputs), rtol=tol, atol=tol
    )


def test_full_softmax_survives_large_logits():
    # exp(1000) overflows; the streaming logsumexp must not.
    weights, biases, labels, inputs = _problem("float32", seed=7)
    biases = biases + 1000.0
    got = _np(full_softmax_loss(weights, biases, labels, inputs, chunk_size=300))
    assert np.all(np.isfinite(got))
    expected = _numpy_full_softmax(weights, biases, labels, inputs)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def _xla_compile(fn):
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return tf.function(fn, jit_compile=True)


def test_losses_compile_with_xla():
    weights, biases, labels, inputs = _problem("float32", seed=8)

    def step(w, b, y, x):
        values = log_uniform_candidate_sampler(y, S, V, seed=11)
        sampled = sampled_softmax_loss(w, b, y, x, S, V, sampled_values=values)
        default_sampler = sampled_softmax_loss(w, b, y, x, S, V, seed=12)
        full = full_softmax_loss(w, b, y, x, chunk_size=300)
        return values, sampled, default_sampler, full

    values, sampled, default_sampler, full = _xla_compile(step)(weights, biases, labels, inputs)
    values = tuple(_np(v) for v in values)
    assert len(set(values[0].tolist())) == S
    np.testing.assert_allclose(
        _np(sampled), _tf_reference(weights, biases, labels, inputs, values), rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(_np(default_sampler)))
    np.testing.assert_allclose(
        _np(full), _numpy_full_softmax(weights, biases, labels, inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    (dict(num_sampled=V), "num_sampled=1000 must be in [1, num_classes=1000)"),
    (dict(num_sampled=0), "num_sampled=0 must be in [1, num_classes=1000)"),
    (dict(num_sampled=8.0), "num_sampled must be an int, got 8.0"),
    (dict(num_classes=999), "num_classes=999 must equal weights.shape[0]=1000"),
    (dict(weights=np.zeros((V, D, 1))), "weights must be [num_classes, dim], got shape (1000, 16, 1)"),
    (dict(biases=np.zeros(V - 1)), "biases must be [num_classes]=[1000]"),
    (dict(inputs=np.zeros((B, D + 1))), "inputs must be [batch, dim] with dim = weights.shape[1] = 16"),
    (dict(labels=np.zeros((B, 2), "int32")), "labels must be [batch] or [batch, 1], got shape (48, 2)"),
    (dict(labels=np.zeros((B, 1), "float32")), "labels must be an integer tensor"),
    (dict(labels=np.zeros((B + 1, 1), "int32")), "labels have 49 examples but inputs have 48"),
    (dict(sampled_values=(np.arange(S),)), "sampled_values must be (sampled_candidates"),
    (dict(sampled_values=(np.arange(S - 1), np.ones(B), np.ones(S))),
     "sampled_candidates must have shape (64,) for num_sampled=64, got (63,)"),
    (dict(sampled_values=(np.arange(S), np.ones(B), np.ones(S + 1))),
     "sampled_expected_count must have shape (64,)"),
    (dict(sampled_values=(np.arange(S), np.ones(B - 1), np.ones(S))),
     "true_expected_count must have one entry per example (48), got shape (47,)"),
])
def test_sampled_loss_rejects_bad_arguments(change, message):
    weights, biases, labels, inputs = _problem("float32")
    args = dict(weights=weights, biases=biases, labels=labels, inputs=inputs,
                num_sampled=S, num_classes=V)
    args.update(change)
    with pytest.raises(ValueError) as error:
        sampled_softmax_loss(**args)
    assert message in str(error.value)


@pytest.mark.parametrize("num_sampled, range_max, message", [
    (10, 10, "num_sampled=10 must be in [1, range_max=10)"),
    (5, 1, "range_max must be an int >= 2, got 1"),
    (5, 10.0, "range_max must be an int >= 2, got 10.0"),
])
def test_sampler_rejects_bad_arguments(num_sampled, range_max, message):
    with pytest.raises(ValueError) as error:
        log_uniform_candidate_sampler(np.zeros((2, 1), "int32"), num_sampled, range_max)
    assert message in str(error.value)


@pytest.mark.parametrize("chunk_size", [0, 2.5, True])
def test_full_softmax_rejects_bad_chunk_size(chunk_size):
    weights, biases, labels, inputs = _problem("float32")
    with pytest.raises(ValueError, match=f"chunk_size must be an int >= 1, got {chunk_size!r}"):
        full_softmax_loss(weights, biases, labels, inputs, chunk_size=chunk_size)
