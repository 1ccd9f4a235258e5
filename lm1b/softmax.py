"""Sampled softmax (training) and chunked full softmax (eval) losses.

Backend-agnostic: tensors go through ``keras.ops`` and ``keras.random`` only
(NumPy computes compile-time constants), so the same code runs under
``jax.jit`` and ``tf.function(jit_compile=True)``. TensorFlow's
``log_uniform_candidate_sampler`` has no XLA kernel (it rejects duplicates in a
loop whose trip count depends on the draws), hence our own sampler below.

Notation: V classes, B examples, S sampled classes, D the input size;
``weights`` W: V×D, ``biases`` b: V, ``inputs`` x: B×D, ``labels`` y: B.
"""

import functools
import math

import numpy as np
from keras import backend, ops, random


def log_uniform_candidate_sampler(true_classes, num_sampled, range_max, seed=None):
    """Draws ``num_sampled`` distinct classes from the log-uniform distribution.

    Class k in [0, range_max) has probability

        P(k) = (log(k + 2) - log(k + 1)) / log(range_max + 1),

    a Zipfian law that suits ids sorted by decreasing frequency.

    Scheme: sampling without replacement by Gumbel-top-k, i.e. the S largest
    keys log P(k) + G_k with G_k i.i.d. Gumbel(0, 1). The resulting set has the
    same distribution as TensorFlow's default (``unique=True``): draw i.i.d.
    from P and drop repeats until S classes are distinct. We chose it over
    i.i.d. draws with repeats (``unique=False``) because at V = 793470 and
    S = 8192 those repeat so much (the head word alone ~418 times) that only
    ~4590 distinct negatives remain, versus f-lm's 8192. It costs one uniform
    draw per class and a top-k over V per call, small next to the B×D×S
    logits matmul, and has a fixed shape, which XLA needs.

    Expected counts (the probability that class k is in the set): Gumbel-top-k
    is an exponential race, class k arriving at time E_k ~ Exp(P(k)), the set
    being the first S arrivals. With t* the time at which S arrivals are
    expected, solved from Σ_k (1 - exp(-t*·P(k))) = S,

        expected_count(k) = 1 - exp(-t*·P(k)),

    which sums to S. It is TensorFlow's -expm1(num_tries·log1p(-P(k))) with
    the random try count replaced by its fixed-point value; its error is
    O(1/S) relative (tests compare it with empirical frequencies).

    Args:
        true_classes: int tensor of any shape, the target classes.
        num_sampled: S, an int with 1 <= S < range_max.
        range_max: V, the number of classes.
        seed: as for ``keras.random``: an int, a ``keras.random.SeedGenerator``,
            or None for the global generator (not allowed under ``jax.jit``).

    Returns:
        (sampled_candidates, true_expected_count, sampled_expected_count):
        int32 [S] distinct ids; float32 with the shape of ``true_classes``;
        float32 [S].
    """
    _check_num_sampled(num_sampled, range_max, "range_max")
    ids = ops.arange(range_max, dtype="float32")
    # A tiny minval keeps log(u) finite; the Gumbel noise is -log(-log(u)).
    u = random.uniform((range_max,), minval=1e-30, maxval=1.0, dtype="float32", seed=seed)
    keys = ops.log(_log_uniform_prob(ids, range_max)) - ops.log(-ops.log(u))
    _, sampled = ops.top_k(keys, num_sampled)
    sampled = ops.cast(sampled, "int32")
    race_time = _race_time(num_sampled, range_max)

    def expected_count(classes):
        prob = _log_uniform_prob(ops.cast(classes, "float32"), range_max)
        return -ops.expm1(-race_time * prob)

    return sampled, expected_count(true_classes), expected_count(sampled)


def sampled_softmax_loss(weights, biases, labels, inputs, num_sampled, num_classes,
                         sampled_values=None, remove_accidental_hits=True, seed=None):
    """Per-example sampled softmax loss, as ``tf.nn.sampled_softmax_loss``
    with ``num_true=1``.

    With sampled classes s_1..s_S and expected counts Q (from
    ``sampled_values`` or :func:`log_uniform_candidate_sampler`):

        l_0 = x·W[y] + b[y] - log Q(y)
        l_j = x·W[s_j] + b[s_j] - log Q(s_j)        (j = 1..S)
        l_j = -FLOAT_MAX  where s_j == y             (accidental hits)
        loss = logsumexp(l_0, l_1, ..., l_S) - l_0
             = softplus(logsumexp(l_1, ..., l_S) - l_0)

    Logits are computed in float32 (float64 if inputs or weights are float64),
    whatever the input dtype: a logsumexp over 8192 terms in bfloat16 loses
    most of its digits. No gradient flows into the expected counts.

    Args:
        weights: [V, D] output embedding.
        biases: [V].
        labels: int [B] or [B, 1].
        inputs: [B, D].
        num_sampled: S, 1 <= S < V.
        num_classes: V; must match weights.
        sampled_values: optional (sampled [S], true_expected_count [B] or
            [B, 1], sampled_expected_count [S]) as returned by a sampler.
        remove_accidental_hits: mask sampled classes equal to the label.
        seed: for the sampler when ``sampled_values`` is None.

    Returns:
        [B] loss per example, in the compute dtype.
    """
    labels, dtype = _check_inputs(weights, biases, labels, inputs)
    if weights.shape[0] is not None and weights.shape[0] != num_classes:
        raise ValueError(
            f"num_classes={num_classes} must equal weights.shape[0]="
            f"{weights.shape[0]}."
        )
    _check_num_sampled(num_sampled, num_classes, "num_classes")
    if sampled_values is None:
        sampled_values = log_uniform_candidate_sampler(labels, num_sampled, num_classes, seed)
    sampled, true_count, sampled_count = _check_sampled_values(
        sampled_values, num_sampled, labels.shape[0]
    )

    x = ops.cast(inputs, dtype)
    true_w = ops.cast(ops.take(weights, labels, axis=0), dtype)
    true_b = ops.cast(ops.take(biases, labels, axis=0), dtype)
    true_logits = ops.sum(x * true_w, axis=-1) + true_b - _log_count(true_count, dtype)

    sampled_w = ops.cast(ops.take(weights, sampled, axis=0), dtype)
    sampled_b = ops.cast(ops.take(biases, sampled, axis=0), dtype)
    sampled_logits = ops.matmul(x, ops.transpose(sampled_w)) + sampled_b
    sampled_logits = sampled_logits - _log_count(sampled_count, dtype)
    if remove_accidental_hits:
        hits = ops.equal(labels[:, None], ops.cast(sampled, labels.dtype)[None, :])
        sampled_logits = ops.where(hits, np.finfo(dtype).min, sampled_logits)

    # logsumexp(l_0, ..., l_S) - l_0 = softplus(logsumexp(l_1..l_S) - l_0):
    # no B×(S+1) concatenation of the logits, an extra pass over them that
    # took 0.2 ms of BIGLSTM's 13 ms training step on an H200.
    return ops.softplus(ops.logsumexp(sampled_logits, axis=1) - true_logits)


def full_softmax_loss(weights, biases, labels, inputs, chunk_size=8192):
    """Per-example cross-entropy over all V classes, for evaluation.

        loss = logsumexp_k (x·W[k] + b[k]) - (x·W[y] + b[y])

    The vocabulary is processed in chunks of ``chunk_size`` rows so that only
    B×chunk_size logits exist at a time (793K classes × 5120 tokens would be
    16 GB in float32). The logsumexp streams over chunks: with running max m
    and sum s, a chunk of logits z updates

        m' = max(m, max_j z_j),    s' = s·exp(m - m') + Σ_j exp(z_j - m'),

    and logsumexp = m + log(s) at the end. Full chunks run in
    ``keras.ops.fori_loop`` (one compiled body, any V); a remainder chunk of
    V mod chunk_size rows runs once after it. Computes in float32 (float64 if
    inputs or weights are float64).

    Args:
        weights: [V, D] with static V.
        biases: [V].
        labels: int [B] or [B, 1].
        inputs: [B, D].
        chunk_size: rows of W per chunk, an int >= 1.

    Returns:
        [B] loss per example, in the compute dtype.
    """
    labels, dtype = _check_inputs(weights, biases, labels, inputs)
    num_classes, dim = weights.shape
    if num_classes is None:
        raise ValueError("full_softmax_loss needs a static weights.shape[0].")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}.")
    x = ops.cast(inputs, dtype)

    def chunk_logits(start, size):
        w = ops.cast(ops.slice(weights, (start, 0), (size, dim)), dtype)
        b = ops.cast(ops.slice(biases, (start,), (size,)), dtype)
        return ops.matmul(x, ops.transpose(w)) + b

    def update(carry, logits):
        running_max, running_sum = carry
        new_max = ops.maximum(running_max, ops.max(logits, axis=1))
        running_sum = running_sum * ops.exp(running_max - new_max) + ops.sum(
            ops.exp(logits - new_max[:, None]), axis=1
        )
        return new_max, running_sum

    # Starting from the lowest finite value (not -inf) keeps exp(m - m') at 0
    # rather than NaN on the first chunk.
    carry = (ops.full_like(x[:, 0], np.finfo(dtype).min), ops.zeros_like(x[:, 0]))
    num_full, remainder = divmod(num_classes, chunk_size)
    if num_full:
        carry = ops.fori_loop(
            0, num_full,
            lambda i, c: update(c, chunk_logits(i * chunk_size, chunk_size)),
            carry,
        )
    if remainder:
        carry = update(carry, chunk_logits(num_full * chunk_size, remainder))
    running_max, running_sum = carry

    true_w = ops.cast(ops.take(weights, labels, axis=0), dtype)
    true_b = ops.cast(ops.take(biases, labels, axis=0), dtype)
    true_logits = ops.sum(x * true_w, axis=-1) + true_b
    return running_max + ops.log(running_sum) - true_logits


def _log_uniform_prob(classes, range_max):
    # log1p(1/(k+1)) equals log(k+2) - log(k+1) without the cancellation that
    # loses most digits in float32 for large k.
    return ops.log1p(1.0 / (classes + 1.0)) / math.log(range_max + 1.0)


@functools.lru_cache(maxsize=None)
def _race_time(num_sampled, range_max):
    """t* with Σ_k (1 - exp(-t*·P(k))) = S, solved once per (S, V) in float64.

    A Python float from static arguments, so it is a compile-time constant.
    """
    prob = np.log1p(1.0 / np.arange(1, range_max + 1, dtype=np.float64))
    prob /= np.log(range_max + 1.0)

    def expected_distinct(t):
        return -np.expm1(-t * prob).sum()

    # expected_distinct(t) <= t·ΣP = t, so t* >= S; double until bracketed.
    low, high = 0.0, float(num_sampled)
    while expected_distinct(high) < num_sampled:
        low, high = high, 2.0 * high
    for _ in range(64):
        mid = 0.5 * (low + high)
        if expected_distinct(mid) < num_sampled:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def _log_count(count, dtype):
    return ops.log(ops.stop_gradient(ops.cast(ops.reshape(count, (-1,)), dtype)))


def _check_num_sampled(num_sampled, num_classes, name):
    if isinstance(num_sampled, bool) or not isinstance(num_sampled, int):
        raise ValueError(f"num_sampled must be an int, got {num_sampled!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"{name} must be an int >= 2, got {num_classes!r}.")
    if not 1 <= num_sampled < num_classes:
        raise ValueError(
            f"num_sampled={num_sampled} must be in [1, {name}={num_classes}); "
            f"for the loss over all classes use full_softmax_loss."
        )


def _check_inputs(weights, biases, labels, inputs):
    """Checks static shapes and dtypes; returns labels as [B] and the compute dtype."""
    labels = ops.convert_to_tensor(labels)
    if len(weights.shape) != 2:
        raise ValueError(f"weights must be [num_classes, dim], got shape {tuple(weights.shape)}.")
    if tuple(biases.shape) != (weights.shape[0],):
        raise ValueError(
            f"biases must be [num_classes]={[weights.shape[0]]} to match weights, "
            f"got shape {tuple(biases.shape)}."
        )
    if len(inputs.shape) != 2 or inputs.shape[1] != weights.shape[1]:
        raise ValueError(
            f"inputs must be [batch, dim] with dim = weights.shape[1] = "
            f"{weights.shape[1]}, got shape {tuple(inputs.shape)}."
        )
    if not (len(labels.shape) == 1 or (len(labels.shape) == 2 and labels.shape[1] == 1)):
        raise ValueError(f"labels must be [batch] or [batch, 1], got shape {tuple(labels.shape)}.")
    if "int" not in backend.standardize_dtype(labels.dtype):
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}.")
    labels = ops.reshape(labels, (-1,))
    if None not in (labels.shape[0], inputs.shape[0]) and labels.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"labels have {labels.shape[0]} examples but inputs have {inputs.shape[0]}."
        )
    wide = {backend.standardize_dtype(t.dtype) for t in (weights, inputs)}
    return labels, "float64" if "float64" in wide else "float32"


def _check_sampled_values(sampled_values, num_sampled, batch):
    if not isinstance(sampled_values, (tuple, list)) or len(sampled_values) != 3:
        raise ValueError(
            "sampled_values must be (sampled_candidates, true_expected_count, "
            "sampled_expected_count), as returned by log_uniform_candidate_sampler."
        )
    sampled, true_count, sampled_count = (ops.convert_to_tensor(v) for v in sampled_values)
    for name, value in (("sampled_candidates", sampled), ("sampled_expected_count", sampled_count)):
        if tuple(value.shape) != (num_sampled,):
            raise ValueError(
                f"{name} must have shape ({num_sampled},) for num_sampled="
                f"{num_sampled}, got {tuple(value.shape)}."
            )
    size = math.prod(true_count.shape) if None not in true_count.shape else None
    if None not in (size, batch) and size != batch:
        raise ValueError(
            f"true_expected_count must have one entry per example ({batch}), "
            f"got shape {tuple(true_count.shape)}."
        )
    return sampled, true_count, sampled_count
