"""f-lm's language model and its training objective, backend-agnostic.

Only ``keras`` layers, ``keras.ops`` and ``keras.random``: the same model
trains under TensorFlow (``tf.distribute``) and JAX, and its weights file
loads on either backend.

Notation (f-lm's hparams): V = vocab_size, d = emb_size, n = state_size,
p = projected_size, B rows per replica, T = num_steps, L = num_layers,
keep = keep_prob; x, y, w: int, int, float [B, T] (w = 1 on real targets,
0 on padding).

Forward pass (f-lm's ``LM._forward``)::

    e     = dropout(E[x])                         E: V×d
    hᵢ    = dropout(RNNᵢ(hᵢ₋₁; stateᵢ) [+ hᵢ₋₁])   h₀ = e; i = 1..L; "+": use_residual
    ℓ_t   = -log softmax(h_L,t · Wᵀ + b)[y_t]     W: V×p, b: V

RNNᵢ is an LSTMP, F-LSTM (fact_size) or G-LSTM (hparams.groups_for_layer(i))
layer. Every layer's state (h, c) goes in and comes out explicitly, so the
trainer can carry it from batch to batch (truncated BPTT). Training uses the
sampled softmax (num_sampled > 0) or the full one; evaluation always the full
softmax, without dropout.
"""

import math
from typing import NamedTuple

import keras
from keras import ops

from keras_flstm import FLSTM
from keras_flstm import GLSTM
from keras_flstm import LSTMP
from lm1b import softmax
from lm1b.hparams import HParams

EMA_DECAY = 0.999
"""f-lm's decay of the moving average of the LSTM weights (average_params)."""

_OPTIMIZERS = (
    lambda lr, s, **kw: keras.optimizers.Adagrad(lr, initial_accumulator_value=s * s, **kw),
    lambda lr, s, **kw: keras.optimizers.SGD(lr, momentum=0.9, **kw),
    lambda lr, s, **kw: keras.optimizers.Adam(lr, **kw),
    lambda lr, s, **kw: keras.optimizers.RMSprop(lr, **kw),
    lambda lr, s, **kw: keras.optimizers.SGD(lr, **kw),
)


class VocabRows(NamedTuple):
    """The rows of E, W and b that one training batch reads, as arrays of their own.

    A batch of B·T tokens reads at most B·T rows of E and B·T + S rows of W
    and b, out of V. A loss computed from these rows has the same value as
    one computed from the whole matrices, and its gradient holds just those
    rows: a trainer that differentiates with respect to them (JaxRunner)
    never builds the dense V×d gradients, and its optimizer touches only
    these rows. See :meth:`LanguageModel.vocab_rows`.

    Fields (Ue = B·T, Us = B·T + S; ids sorted, padded at the end with V):
        embedding_ids: int [Ue], the distinct ids of x.
        softmax_ids: int [Us], the distinct ids of y and the sampled classes.
        x_rows, y_rows, sampled_rows: where x, y and the sampled classes sit
            in embedding_ids and softmax_ids.
        expected_counts: the sampler's (true_expected_count [B·T],
            sampled_expected_count [S]).
        embedding: E[embedding_ids] [Ue, d] (a padding row repeats row V-1).
        softmax_w: W[softmax_ids] [Us, p].
        softmax_b: b[softmax_ids] [Us].

    The loss reads the tables only through x_rows, y_rows and sampled_rows,
    so a trainer may pass other tables that they index: JaxRunner passes
    each device's tokens' rows of E ([B·T, d], in the compute dtype) with
    x_rows = 0..B·T-1, to take E's gradient per token.
    """

    embedding_ids: object
    softmax_ids: object
    x_rows: object
    y_rows: object
    sampled_rows: object
    expected_counts: tuple
    embedding: object
    softmax_w: object
    softmax_b: object


@keras.saving.register_keras_serializable(package="lm1b")
class LanguageModel(keras.Model):
    """f-lm's LSTM language model (see the module docstring for the equations).

    Args:
        hparams: an :class:`lm1b.hparams.HParams`, or its ``to_dict()``.

    Weights: ``embedding`` (V×d), the L recurrent layers ``rnn_0`` ..,
    ``softmax_w`` (V×p) and ``softmax_b`` (V). E and W start uniform in
    ±sqrt(3 / ceil(V / num_shards)): TF1's uniform_unit_scaling of f-lm's
    ``num_shards`` row shards (we keep each matrix whole). b starts at 0
    (f-lm's Glorot bound sqrt(3/V) is ~0.002 on LM1B). The recurrent layers
    keep keras_flstm's initializers and forget bias 1.
    """

    def __init__(self, hparams, **kwargs):
        super().__init__(**kwargs)
        if isinstance(hparams, dict):
            hparams = HParams.from_dict(hparams)
        for key in ("float16_rnn", "float16_non_rnn"):
            if getattr(hparams, key):
                raise ValueError(
                    f"{key}=True is not supported by lm1b.model: it computes in "
                    f"float32. Set {key}=false."
                )
        self.hparams = hparams
        hps = hparams
        rate = 1.0 - hps.keep_prob
        self.embedding = keras.layers.Embedding(
            hps.vocab_size, hps.emb_size,
            embeddings_initializer=_shard_uniform(hps), name="embedding",
        )
        # One dropout after the embedding, one after every layer.
        self.dropouts = [
            keras.layers.Dropout(rate, name=f"dropout_{i}")
            for i in range(hps.num_layers + 1)
        ]
        self.rnns = [_recurrent_layer(hps, i) for i in range(hps.num_layers)]
        self.sampler_seed = keras.random.SeedGenerator(name="sampler_seed")

    def build(self, input_shape=None):
        """Creates all weights; ``input_shape`` is ignored (x is [B, T])."""
        hps = self.hparams
        self.embedding.build((None, None))
        size = hps.emb_size
        for rnn in self.rnns:
            rnn.build((None, None, size))
            size = hps.projected_size
        self.softmax_w = self.add_weight(
            shape=(hps.vocab_size, hps.projected_size),
            initializer=_shard_uniform(hps), name="softmax_w",
        )
        self.softmax_b = self.add_weight(
            shape=(hps.vocab_size,), initializer="zeros", name="softmax_b"
        )
        self.built = True

    @property
    def lstm_variables(self):
        """The recurrent layers' trainable weights: f-lm clips and averages these."""
        return [v for rnn in self.rnns for v in rnn.trainable_variables]

    def train_flops_per_word(self):
        """The GEMM FLOPs of one training word, forward and backward (2 per multiply-add).

            6·Σ|K| + 6·p·S       (sampled softmax; 6·p·V with the full one)

        K runs over the recurrent layers' weight matrices (W_x, W_h, W1, W2,
        P; grouped ones count their k blocks): each multiplies every token
        once forward, once for the input gradient and once for its own
        gradient. The sampled softmax multiplies h by the S sampled rows of W,
        shared by the batch. Not counted: elementwise work (gates, the true
        class's logit, the optimizers) and the sampler. Model FLOP/s is this
        times words/s.
        """
        hps = self.hparams
        matrices = sum(math.prod(w.shape) for w in self.lstm_variables if len(w.shape) >= 2)
        classes = hps.num_sampled or hps.vocab_size
        return 6 * matrices + 6 * hps.projected_size * classes

    def initial_state(self, batch_size):
        """Zero states, one ``[h (B×p), c (B×n)]`` per layer."""
        hps = self.hparams
        return [
            [ops.zeros((batch_size, hps.projected_size)), ops.zeros((batch_size, hps.state_size))]
            for _ in range(hps.num_layers)
        ]

    def call(self, x, states, training=False, embedded=None):
        """Returns the last layer's outputs [B, T, p] and the new states.

        Args:
            x: int [B, T] word ids.
            states: one ``[h, c]`` per layer, as :meth:`initial_state`.
            training: apply dropout.
            embedded: optional E[x] [B, T, d], computed by the caller
                (:meth:`loss_sums` reads it from :class:`VocabRows`).
        """
        if embedded is None:
            embedded = self.embedding(x)
        h = self.dropouts[0](embedded, training=training)
        new_states = []
        for rnn, dropout, state in zip(self.rnns, self.dropouts[1:], states):
            out, h_last, c_last = rnn(h, initial_state=list(state), training=training)
            if self.hparams.use_residual:
                out = out + h
            h = dropout(out, training=training)
            new_states.append([h_last, c_last])
        return h, new_states

    def vocab_rows(self, x, y):
        """Draws the sampled classes (from ``sampler_seed``, as :meth:`loss_sums`
        does) and gathers the rows of E, W and b that a training batch reads.

        Args:
            x, y: int [B, T] inputs and targets.

        Returns:
            A :class:`VocabRows`, for ``loss_sums(..., training=True, rows=...)``.
        """
        hps = self.hparams
        if not hps.num_sampled:
            raise ValueError("vocab_rows needs num_sampled > 0: the full softmax reads every row of W.")
        x = ops.reshape(x, (-1,))
        labels = ops.reshape(y, (-1,))
        sampled, true_count, sampled_count = softmax.log_uniform_candidate_sampler(
            labels, hps.num_sampled, hps.vocab_size, seed=self.sampler_seed)
        targets = ops.concatenate([labels, ops.cast(sampled, labels.dtype)], axis=0)
        # Sorted, padded with V: a fixed size, as XLA needs.
        embedding_ids, x_rows = ops.unique(
            x, size=x.shape[0], fill_value=hps.vocab_size, return_inverse=True)
        softmax_ids, target_rows = ops.unique(
            targets, size=targets.shape[0], fill_value=hps.vocab_size, return_inverse=True)

        def gather(table, ids):
            return ops.take(table, ops.minimum(ids, hps.vocab_size - 1), axis=0)

        return VocabRows(
            embedding_ids, softmax_ids, x_rows,
            target_rows[: labels.shape[0]], target_rows[labels.shape[0]:], (true_count, sampled_count),
            gather(self.embedding.embeddings, embedding_ids),
            gather(self.softmax_w, softmax_ids), gather(self.softmax_b, softmax_ids),
        )

    def loss_sums(self, x, y, w, states, training=False, rows=None):
        """Summed softmax cross-entropy over the real tokens of one batch.

            loss_sum = Σ_t w_t·ℓ_t,   tokens = Σ_t w_t

        With ``training`` (dropout on), ℓ is the sampled softmax loss when
        num_sampled > 0 (candidates from ``sampler_seed``), else the full
        softmax; without, always the full softmax (chunked over V).

        ``rows`` (training with num_sampled > 0 only): this batch's
        :meth:`vocab_rows`. The loss then reads E, W and b through them only,
        and its sampled classes are the ones drawn there: the sampled
        softmax over the Us gathered rows, with each row's expected count,
        is the same loss as over all V.

        Returns:
            (loss_sum, tokens, new_states); the mean loss is loss_sum / tokens.
        """
        hps = self.hparams
        if rows is not None and not (training and hps.num_sampled):
            raise ValueError("rows= is for training with the sampled softmax (num_sampled > 0).")
        embedded = None
        if rows is not None:
            # Gathered here, not in call(): Keras would cast the rows passed to
            # call() to the compute dtype first, and the gradient of a word
            # repeated in the batch would then be summed in bfloat16.
            embedded = ops.cast(ops.take(rows.embedding, ops.reshape(rows.x_rows, ops.shape(x)), axis=0),
                                self.embedding.compute_dtype)
        h, new_states = self(x, states, training=training, embedded=embedded)
        h = ops.reshape(h, (-1, hps.projected_size))
        labels = ops.reshape(y, (-1,))
        weights = ops.cast(ops.reshape(w, (-1,)), "float32")
        softmax_w = ops.convert_to_tensor(self.softmax_w)
        softmax_b = ops.convert_to_tensor(self.softmax_b)
        if rows is not None:
            losses = softmax.sampled_softmax_loss(
                rows.softmax_w, rows.softmax_b, rows.y_rows, h,
                hps.num_sampled, rows.softmax_w.shape[0],
                sampled_values=(rows.sampled_rows, *rows.expected_counts),
            )
        elif training and hps.num_sampled:
            losses = softmax.sampled_softmax_loss(
                softmax_w, softmax_b, labels, h,
                hps.num_sampled, hps.vocab_size, seed=self.sampler_seed,
            )
        else:
            losses = softmax.full_softmax_loss(softmax_w, softmax_b, labels, h)
        return ops.sum(losses * weights), ops.sum(weights), new_states

    def get_config(self):
        return {**super().get_config(), "hparams": self.hparams.to_dict()}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def build_optimizers(hparams, gradient_copies=1):
    """f-lm's optimizer, as two Keras optimizers: (lstm, other).

    ``lstm`` updates :attr:`LanguageModel.lstm_variables`: it clips their
    gradients to the global norm loss_scale·max_grad_norm and, with
    average_params, keeps their moving average (decay 0.999, Keras
    ``use_ema``). ``other`` updates the embedding and softmax, unclipped.
    Both are ``hparams.optimizer`` (0 Adagrad with initial accumulator
    loss_scale², 1 Momentum 0.9, 2 Adam, 3 RMSProp, 4 SGD) at learning_rate;
    Adagrad and RMSProp keep a per-weight state, so splitting the weights
    over two instances changes nothing.

    Args:
        hparams: the HParams.
        gradient_copies: how many identical copies of the LSTM gradient, each
            divided by this number, the optimizer sums before applying it.
            Keras's TensorFlow optimizer clips each replica's gradient and
            then sums over the replicas of a ``tf.distribute`` strategy; the
            trainer hands every replica the all-reduced gradient g / R, and
            clip(g / R, c / R) summed over R replicas is clip(g, c).
    """
    make = _OPTIMIZERS[hparams.optimizer]
    lstm = make(
        hparams.learning_rate, hparams.loss_scale,
        global_clipnorm=hparams.loss_scale * hparams.max_grad_norm / gradient_copies,
        use_ema=hparams.average_params, ema_momentum=EMA_DECAY,
        name="lstm_optimizer",
    )
    other = make(hparams.learning_rate, hparams.loss_scale, name="other_optimizer")
    return lstm, other


def build_model_and_optimizers(hparams, gradient_copies=1):
    """A built :class:`LanguageModel` and its built optimizers (lstm, other);
    see :func:`build_optimizers` for ``gradient_copies``."""
    model = LanguageModel(hparams)
    model.build()
    optimizers = build_optimizers(hparams, gradient_copies)
    for optimizer, variables in zip(optimizers, split_variables(model)):
        optimizer.build(variables)
    return model, optimizers


def split_indices(model):
    """(lstm, other): the positions in ``model.trainable_variables`` of the
    LSTM variables and of the rest, in order."""
    lstm_ids = {id(v) for v in model.lstm_variables}
    lstm = [i for i, v in enumerate(model.trainable_variables) if id(v) in lstm_ids]
    other = [i for i, v in enumerate(model.trainable_variables) if id(v) not in lstm_ids]
    return lstm, other


def split_variables(model):
    """(lstm, other): the model's trainable variables, as the two optimizers take them."""
    variables = model.trainable_variables
    return tuple([variables[i] for i in indices] for indices in split_indices(model))


def flm_gradients(model, grads, tokens):
    """Turns ∇(Σ w·ℓ) into the gradient f-lm applies.

    f-lm differentiates loss_scale · T · mean(ℓ) and multiplies the embedding
    gradient by the per-replica batch size B (``LM._backward``); averaged
    over its replicas that is, with N = Σ w over the global batch,

        g = (s·T / N) · ∇(Σ w·ℓ),    g_E = B · g_E.

    ``grads`` follows ``model.trainable_variables`` (an entry may also be
    the gradient of just the rows of that variable that a batch reads, as
    with :class:`VocabRows`); ``tokens`` is N.
    """
    hps = model.hparams
    scale = hps.loss_scale * hps.num_steps / ops.maximum(tokens, 1.0)
    embedding = model.embedding.embeddings
    return [
        g * (scale * hps.batch_size if v is embedding else scale)
        for g, v in zip(grads, model.trainable_variables)
    ]


def _shard_uniform(hps):
    shard_rows = math.ceil(hps.vocab_size / hps.num_shards)
    limit = math.sqrt(3.0 / shard_rows)
    return keras.initializers.RandomUniform(-limit, limit)


def _recurrent_layer(hps, layer):
    common = dict(
        projection_units=hps.projected_size,
        return_sequences=True,
        return_state=True,
        unroll=hps.unroll,
        name=f"rnn_{layer}",
    )
    if hps.cell_type == "flstm":
        return FLSTM(hps.state_size, hps.fact_size, **common)
    groups = hps.groups_for_layer(layer)
    if groups > 1:
        return GLSTM(hps.state_size, groups, **common)
    # Hierarchical configs may mix grouped and ungrouped layers.
    return LSTMP(hps.state_size, use_peepholes=hps.use_peepholes, **common)
