"""The backend-specific half of lm1b/train.py: devices, input and the step.

A runner builds the model and its two optimizers (lm1b.model) on the
backend's replicas, feeds global batches of batch_size · num_gpus rows and
runs one training step per batch, carrying the LSTM states of every replica
from batch to batch. Both compute, per step,

    N = Σ w over the global batch,   g = flm_gradients(∇ Σ w·ℓ, N),

clip the LSTM part of g by its global norm and apply it. TensorFlow is
imported only inside :class:`TFRunner`.
"""

import keras
import numpy as np

from lm1b import data
from lm1b.model import build_model_and_optimizers
from lm1b.model import VocabRows
from lm1b.model import build_optimizers
from lm1b.model import flm_gradients
from lm1b.model import split_indices

# Added to the first word of every seed state on TF replica r and JAX device
# r (times r), so that replicas draw their own dropout masks, as f-lm's towers
# do; on TF also their own sampled classes (JAX draws them once for the
# global batch, so that the sparse vocabulary rows are shared). Seeds are
# Keras's random ints below 1e9 (or the user's); a collision needs two of
# them to differ by a multiple of this prime.
_REPLICA_SEED_STRIDE = 1_000_003

# hparams.optimizer values whose update leaves a weight with zero gradient
# unchanged (Adagrad, SGD): for them, updating only the vocabulary rows a
# batch reads is exactly the dense update.
_ROW_WISE_OPTIMIZERS = (0, 4)


def stateless_call(model, trainable, non_trainable, fn):
    """Runs ``fn()`` with the model's variables reading the given values.

    Returns ``(fn(), new_non_trainable)``; the latter has the advanced
    random-seed states. Keras's ``StatelessScope`` is what ``stateless_call``
    and Keras's own JAX trainer use; unlike ``model.stateless_call`` it can
    wrap any method, here ``loss_sums``.
    """
    variables = model.trainable_variables + model.non_trainable_variables
    with keras.StatelessScope(state_mapping=list(zip(variables, trainable + non_trainable))) as scope:
        out = fn()
    return out, [scope.get_current_value(v) for v in model.non_trainable_variables]


def visible_gpus(backend):
    """Number of GPUs the backend sees (0 without)."""
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    import jax

    try:
        return len(jax.devices("gpu"))
    except RuntimeError:  # no GPU backend
        return 0


class TFRunner:
    """tf.distribute training: MirroredStrategy, or MultiWorkerMirroredStrategy
    when TF_CONFIG names more than one task.

    Each replica runs ``_gradients`` as one XLA computation, reading the
    weights as arguments (an XLA function that reads a variable placed on
    another logical CPU device fails, and arguments work on every device).
    Then, outside XLA in the replica context: the all-reduce of the loss and
    token sums and of the LSTM gradient (the clip needs its global norm),
    and the Keras optimizers, which sum the gradients over replicas.
    """

    sparse_vocab = False  # XLA computes the vocabulary gradients densely

    def __init__(self, hps):
        import tensorflow as tf

        self._tf = tf
        self.hps = hps
        self.strategy = _tf_strategy(hps.num_gpus)
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.is_chief = self.strategy.extended.should_checkpoint
        with self.strategy.scope():
            self.model, self.optimizers = build_model_and_optimizers(hps, gradient_copies=self.num_replicas)
        self._lstm, self._other = split_indices(self.model)
        self.states = self.strategy.experimental_distribute_values_from_function(
            lambda context: self.model.initial_state(hps.batch_size)
        )
        # No autograph: the step has no data-dependent Python control flow.
        self._gradients = tf.function(self._gradients, jit_compile=True, autograph=False)
        self._step = tf.function(
            lambda batch, states: self.strategy.run(self._replica_step, args=(*batch, states)),
            autograph=False,
        )

    @staticmethod
    def compile(fn):
        """``fn`` as one XLA computation (for single-device evaluation)."""
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, autograph=False)

    def batches(self, vocab, file_pattern, seed, errors="strict"):
        """Endless per-replica batches from lm1b.input_pipeline (tf.data).

        Invalid UTF-8 (with ``errors="strict"``) raises ValueError naming the
        file and line, as lm1b.data does, rather than tf.data's error."""
        from lm1b import input_pipeline

        batches = iter(input_pipeline.distribute_dataset(
            self.strategy, vocab, file_pattern, self.hps.batch_size * self.num_replicas,
            self.hps.num_steps, forever=True, seed=seed, errors=errors,
        ))
        while True:
            try:
                batch = next(batches)
            except self._tf.errors.InvalidArgumentError as e:
                message = input_pipeline.invalid_utf8_message(e)
                if message is None:
                    raise
                raise ValueError(message) from None
            yield batch

    def train_step(self, batch):
        """One step on a per-replica ``(x, y, w)``; returns global (Σ w·ℓ, Σ w)."""
        loss_sum, tokens, self.states = self._step(batch, self.states)
        first = self.strategy.experimental_local_results
        return first(loss_sum)[0], first(tokens)[0]

    def load(self):
        """Nothing to do: the step reads the variables."""

    def sync(self):
        """Nothing to do: the step updates the variables."""

    def _gradients(self, trainable, non_trainable, x, y, w, states, replica):
        tf = self._tf
        offset = tf.stack([tf.cast(replica, tf.int64) * _REPLICA_SEED_STRIDE, tf.constant(0, tf.int64)])
        non_trainable = [v + offset for v in non_trainable]  # all are seed states
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            (loss_sum, tokens, states), non_trainable = stateless_call(
                self.model, trainable, non_trainable,
                lambda: self.model.loss_sums(x, y, w, states, training=True),
            )
        # Dense, as XLA makes them anyway (f-lm's embedding gradient was sparse).
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss_sum, trainable)]
        return loss_sum, tokens, grads, states, [v - offset for v in non_trainable]

    def _replica_step(self, x, y, w, states):
        tf = self._tf
        context = tf.distribute.get_replica_context()
        model, (lstm_opt, other_opt) = self.model, self.optimizers
        loss_sum, tokens, grads, states, non_trainable = self._gradients(
            [tf.identity(v.value) for v in model.trainable_variables],
            [tf.identity(v.value) for v in model.non_trainable_variables],
            x, y, w, states, context.replica_id_in_sync_group,
        )
        for variable, value in zip(model.non_trainable_variables, non_trainable):
            variable.assign(value)
        loss_sum, tokens = context.all_reduce(tf.distribute.ReduceOp.SUM, [loss_sum, tokens])
        grads = flm_gradients(model, grads, tokens)
        lstm_grads = context.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in self._lstm])
        # g / R: the optimizer sums it over the replicas (build_optimizers).
        lstm_opt.apply([g / self.num_replicas for g in lstm_grads],
                       [model.trainable_variables[i] for i in self._lstm])
        other_opt.apply([grads[i] for i in self._other],
                        [model.trainable_variables[i] for i in self._other])
        return loss_sum, tokens, states


def _tf_strategy(num_gpus):
    import json
    import os

    import tensorflow as tf

    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if sum(len(tasks) for tasks in cluster.values()) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if num_gpus > len(gpus):
            raise ValueError(
                f"--num_gpus={num_gpus} but TensorFlow sees {len(gpus)} GPUs; "
                f"pass --num_gpus={len(gpus)} or fewer."
            )
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(num_gpus)])
    if num_gpus > 1:
        # No GPU: num_gpus logical CPU devices, so the multi-replica path runs.
        try:
            tf.config.set_logical_device_configuration(
                tf.config.list_physical_devices("CPU")[0],
                [tf.config.LogicalDeviceConfiguration()] * num_gpus,
            )
        except RuntimeError:
            pass  # TensorFlow is initialised already; checked below
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < num_gpus:
        raise ValueError(
            f"--num_gpus={num_gpus}: no GPU, and TensorFlow was initialised with "
            f"{len(cpus)} CPU device(s) before {num_gpus} logical ones could be "
            "made. Start a fresh process."
        )
    return tf.distribute.MirroredStrategy([d.name for d in cpus[:num_gpus]])


class JaxRunner:
    """keras.distribution.DataParallel training over local JAX devices.

    The whole step (forward, backward, both optimizers) is one ``jax.jit``
    function of the weight, optimizer and state arrays; the global batch and
    the LSTM states are sharded over the devices by rows. Each device
    computes the gradients of its rows (``jax.shard_map``), they are summed
    over the devices, and the update is applied. The arrays live in the
    runner between :meth:`load` and :meth:`sync`, not in the Keras variables
    (their buffers are donated to the step).

    Sharded LSTM update (ZeRO-1 style, Rajbhandari et al. 2020; on by
    default with several devices): each device keeps 1/R of every LSTM
    weight in float32, and of its optimizer state (Adagrad accumulator,
    EMA). A step all-gathers the weights in the compute dtype (what the
    layers would cast them to anyway, so the forward pass is unchanged),
    sums the gradients into the slices (sent in the compute dtype, summed
    in float32) and runs the optimizer on each device's slice alone.
    Against all-reducing the float32 gradient and updating every weight on
    every device, that moves half the bytes under bfloat16 and does 1/R of
    the optimizer work. The
    vocabulary tables stay replicated.

    Sparse vocabulary updates (f-lm's TF1 graph had them as IndexedSlices):
    with the sampled softmax and a row-wise optimizer, the step differentiates
    with respect to the rows of E, W and b the batch reads
    (:class:`lm1b.model.VocabRows`; for E, through each device's B·T token
    embeddings, all-gathered in the compute dtype), sums those over the
    devices (B·T·R rows of E and B·T·R + S of W and b, not 2·V), and runs
    the Keras optimizer on them and their gathered state: the dense update,
    up to the order of float sums and, under mixed bfloat16, E's per-token
    gradients rounded to bfloat16. At LM1B size that replaces ~6.5 GB of
    dense gradient, its all-reduce and a dense Adagrad pass per step.

    Args:
        hps: the HParams.
        sparse_vocab: use the sparse vocabulary updates; None (default) uses
            them wherever they equal the dense ones (num_sampled > 0,
            Adagrad or SGD, fewer batch rows than V).
        shard_lstm: use the sharded LSTM update; None (default) uses it
            with more than one device. A weight none of whose axes the
            device count divides stays replicated.
    """

    def __init__(self, hps, sparse_vocab=None, shard_lstm=None):
        import jax

        if hps.num_gpus > 1:
            try:
                jax.config.update("jax_num_cpu_devices", hps.num_gpus)
            except RuntimeError:
                pass  # JAX is initialised already; checked below
        devices = jax.devices()
        if len(devices) < hps.num_gpus:
            raise ValueError(
                f"--num_gpus={hps.num_gpus} but JAX sees {len(devices)} "
                f"{devices[0].platform} device(s). Pass --num_gpus={len(devices)}, "
                "or on CPU start a fresh process (JAX makes CPU devices at start)."
            )
        self.hps = hps
        self.num_replicas = hps.num_gpus
        self.is_chief = True
        self.distribution = keras.distribution.DataParallel(devices=devices[: hps.num_gpus])
        with self.distribution.scope():
            self.model, self.optimizers = build_model_and_optimizers(hps)
        # Keras's layouts as jax shardings: the weights replicated, batches
        # and states split by rows. The step's inputs must carry them from the
        # first call on (load() puts them), or its outputs would differ in
        # type from its inputs and the step would compile twice.
        mesh = jax.sharding.Mesh(self.distribution.device_mesh.devices,
                                 self.distribution.device_mesh.axis_names)
        self._mesh, self._axis = mesh, mesh.axis_names[0]
        self._replicated = replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))
        rows = hps.batch_size * self.num_replicas
        self.states = [[self.shard(s) for s in layer] for layer in self.model.initial_state(rows)]
        self._lstm, self._other = split_indices(self.model)
        self.shard_lstm = self.num_replicas > 1 if shard_lstm is None else bool(shard_lstm)
        self._gather_dtype = keras.backend.standardize_dtype(self.model.compute_dtype)
        # All non-trainable variables are seed states; this one draws the
        # sampled classes, shared by the global batch.
        self._sampler_seed = next(i for i, v in enumerate(self.model.non_trainable_variables)
                                  if v is self.model.sampler_seed.state)
        self.sparse_vocab = _check_sparse_vocab(hps, rows, sparse_vocab)
        if self.sparse_vocab:
            model = self.model
            fields = {id(model.embedding.embeddings): ("embedding", "embedding_ids"),
                      id(model.softmax_w): ("softmax_w", "softmax_ids"),
                      id(model.softmax_b): ("softmax_b", "softmax_ids")}
            self._vocab_tables = [fields[id(model.trainable_variables[i])] for i in self._other]
            self._embedding = [field for field, _ in self._vocab_tables].index("embedding")
            self._row_optimizer, self._row_slots = self._build_row_optimizer(rows)
        self._state_shardings = self._shardings_of_state()
        self._lstm_specs = [self._state_shardings[0][i].spec for i in self._lstm]
        self._step = jax.jit(
            self._train_step,
            in_shardings=(self._state_shardings, *[self._rows] * 4),
            out_shardings=(self._state_shardings, replicated, replicated, self._rows),
            donate_argnums=(0, 4),
        )
        self.load()

    @staticmethod
    def compile(fn):
        import jax

        return jax.jit(fn)

    def batches(self, vocab, file_pattern, seed, errors="strict"):
        """Endless global batches from lm1b.data, sharded by rows."""
        source = data.Dataset(vocab, file_pattern, deterministic=False, seed=seed, errors=errors)
        rows = self.hps.batch_size * self.num_replicas
        for batch in source.iterate_forever(rows, self.hps.num_steps):
            yield tuple(self.shard(a) for a in batch)

    def train_step(self, batch):
        if self._keras_copies:
            self._free_keras_copies()
        self._state, loss_sum, tokens, self.states = self._step(self._state, *batch, self.states)
        return loss_sum, tokens

    def lower(self, batch):
        """The training step on ``batch`` (already sharded), lowered by
        ``jax.jit`` but not run: its ``as_text()`` shows the collectives and
        matrix products the step is built from."""
        return self._step.lower(self._state, *batch, self.states)

    def load(self):
        """Takes the arrays from the Keras variables (after a restore)."""
        import jax

        self._state = jax.device_put(
            tuple([v.value for v in variables] for variables in self._variable_lists()),
            self._state_shardings)
        self._keras_copies = True

    def sync(self):
        """Writes the arrays into the Keras variables (before a save). They
        hold them until the next step."""
        import jax

        for variables, values in zip(self._variable_lists(), self._state):
            for variable, value in zip(variables, values):
                variable.assign(jax.device_put(value, self._replicated))
        self._keras_copies = True

    def _variable_lists(self):
        return (self.model.trainable_variables, self.model.non_trainable_variables,
                self.optimizers[0].variables, self.optimizers[1].variables)

    def _free_keras_copies(self):
        """Deletes the whole copies that the Keras variables hold of sliced
        LSTM weights and optimizer variables, which would otherwise sit on
        every device beside the slices. (The replicated arrays they share
        with the step, the step donates.) The variables hold no value again
        until :meth:`sync`."""
        for variables, values in zip(self._variable_lists(), self._state):
            for variable, value in zip(variables, values):
                if _sliced_axis(value.sharding.spec) is not None and not variable.value.is_deleted():
                    variable.value.delete()
        self._keras_copies = False

    def _slice_spec(self, shape):
        """How the sharded LSTM update splits a weight (or its optimizer
        state) of this shape: along its first axis that the device count
        divides; replicated without one, when not sharding, or on one device
        (where a slice would be the whole array)."""
        import jax

        axes = [None] * len(shape)
        if self.shard_lstm and self.num_replicas > 1:
            for axis, size in enumerate(shape):
                if size % self.num_replicas == 0:
                    axes[axis] = self._axis
                    break
        return jax.sharding.PartitionSpec(*axes)

    def _shardings_of_state(self):
        """The shardings of ``self._state``'s four lists: the LSTM weights
        and the LSTM optimizer's variables by :meth:`_slice_spec`, the rest
        replicated."""
        import jax

        def sliced(shape):
            return jax.sharding.NamedSharding(self._mesh, self._slice_spec(shape))

        lstm = set(self._lstm)
        model, (lstm_opt, other_opt) = self.model, self.optimizers
        return (
            [sliced(v.shape) if i in lstm else self._replicated
             for i, v in enumerate(model.trainable_variables)],
            [self._replicated] * len(model.non_trainable_variables),
            [sliced(v.shape) for v in lstm_opt.variables],
            [self._replicated] * len(other_opt.variables),
        )

    def shard(self, array):
        """``array`` placed on the devices, split by rows (the batch axis)."""
        import jax

        return jax.device_put(array, self._rows)

    def _train_step(self, state, x, y, w, states):
        import jax

        trainable, non_trainable, lstm_vars, other_vars = state
        model, (lstm_opt, other_opt) = self.model, self.optimizers
        rows = None
        if self.sparse_vocab:
            rows, non_trainable = stateless_call(
                model, trainable, non_trainable, lambda: model.vocab_rows(x, y))
        by_rows, whole = jax.sharding.PartitionSpec(self._axis), jax.sharding.PartitionSpec()
        # x_rows, y_rows and the labels' expected counts follow the batch rows.
        rows_spec = whole if rows is None else VocabRows(
            whole, whole, by_rows, by_rows, whole, (by_rows, whole), whole, whole, whole)
        trainable_specs = [sharding.spec for sharding in self._state_shardings[0]]
        replica_gradients = jax.shard_map(
            self._replica_gradients, mesh=self._mesh,
            in_specs=(trainable_specs, whole, rows_spec, by_rows, by_rows, by_rows, by_rows),
            out_specs=(whole, whole, self._lstm_specs, whole, by_rows, whole),
            check_vma=False,  # the seed states leave every replica equal
        )
        loss_sum, tokens, lstm_grads, other_grads, states, non_trainable = replica_gradients(
            trainable, non_trainable, rows, x, y, w, states)
        grads = [None] * len(trainable)
        for index, values in ((self._lstm, lstm_grads), (self._other, other_grads)):
            for i, g in zip(index, values):
                grads[i] = g
        grads = flm_gradients(model, grads, tokens)
        new_trainable = list(trainable)
        updated, lstm_vars = lstm_opt.stateless_apply(
            lstm_vars, [grads[i] for i in self._lstm], [trainable[i] for i in self._lstm])
        for i, value in zip(self._lstm, updated):
            new_trainable[i] = value
        other_grads = [grads[i] for i in self._other]
        other_values = self._vocab_values(trainable, rows)
        if rows is None:
            updated, other_vars = other_opt.stateless_apply(other_vars, other_grads, other_values)
        else:
            updated, other_vars = self._apply_to_rows(
                rows, other_vars, other_grads, other_values, [trainable[i] for i in self._other])
        for i, value in zip(self._other, updated):
            new_trainable[i] = value
        return (new_trainable, non_trainable, lstm_vars, other_vars), loss_sum, tokens, states

    def _replica_gradients(self, trainable, non_trainable, rows, x, y, w, states):
        """One device's rows of the batch: its loss and gradients, summed over
        the devices (``jax.shard_map``). Every device computes on its own rows
        alone, as f-lm's towers do; left to XLA's SPMD partitioner, the whole
        step scaled 2.07× on 4 GPUs (``lm_step_4xh200_spmd.json``).

        The gradients are those of the LSTM weights (summed into each
        device's slice of the sliced ones) and of the vocabulary tables, or
        of their ``rows`` when given. Each device draws its own
        dropout masks (its seeds offset as on TensorFlow); the sampled
        classes are the global batch's one draw.
        """
        import jax
        import jax.numpy as jnp

        model = self.model
        replica = jax.lax.axis_index(self._axis)
        offsets = [jnp.zeros_like(v) if i == self._sampler_seed else
                   jnp.zeros_like(v).at[0].set((replica * _REPLICA_SEED_STRIDE).astype(v.dtype))
                   for i, v in enumerate(non_trainable)]
        non_trainable = [v + o for v, o in zip(non_trainable, offsets)]
        lstm_values = [self._gather(trainable[i], spec) for i, spec in zip(self._lstm, self._lstm_specs)]
        other_values = self._vocab_values(trainable, rows)
        if rows is not None:
            # Differentiate with respect to this device's tokens' embeddings
            # (what the model reads: rows of E, cast to the compute dtype), not
            # the batch's rows of E: each device then sends its B·T rows in the
            # compute dtype (_sum_token_gradients), a quarter (bfloat16) or
            # half (float32) of the bytes of all-reducing the global batch's
            # rows in float32.
            token_rows = rows.x_rows
            other_values[self._embedding] = jnp.take(
                other_values[self._embedding], token_rows, axis=0).astype(self._gather_dtype)
            rows = rows._replace(x_rows=jnp.arange(token_rows.shape[0], dtype=token_rows.dtype))

        def objective(lstm_values, other_values):
            values, batch_rows = list(trainable), None
            for i, value in zip(self._lstm, lstm_values):
                values[i] = value
            if rows is None:
                for i, value in zip(self._other, other_values):
                    values[i] = value
            else:
                batch_rows = rows._replace(**{
                    field: value for (field, _), value in zip(self._vocab_tables, other_values)})
            (loss_sum, tokens, new_states), new_non_trainable = stateless_call(
                model, values, non_trainable,
                lambda: model.loss_sums(x, y, w, states, training=True, rows=batch_rows),
            )
            return loss_sum, (tokens, new_states, new_non_trainable)

        (loss_sum, (tokens, states, non_trainable)), (lstm_grads, other_grads) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True)(lstm_values, other_values)
        non_trainable = [v - o for v, o in zip(non_trainable, offsets)]
        if rows is not None:
            embedding_grad = self._sum_token_gradients(
                other_grads[self._embedding], token_rows, rows.embedding.shape[0])
            other_grads[self._embedding] = None
        loss_sum, tokens, other_grads = jax.lax.psum((loss_sum, tokens, other_grads), self._axis)
        if rows is not None:
            other_grads[self._embedding] = embedding_grad
        lstm_grads = [self._sum_into_slice(g, spec) for g, spec in zip(lstm_grads, self._lstm_specs)]
        return loss_sum, tokens, lstm_grads, other_grads, states, non_trainable

    def _sum_token_gradients(self, token_grads, token_rows, num_rows):
        """The gradient of the batch's rows of E, from each device's gradients
        of its tokens' embeddings [B·T, d] (compute dtype): all-gathered as
        they are, then summed per row in float32, or in their own dtype if
        wider (the same sums as all-reducing each device's float32 row
        gradients, in another order)."""
        import jax
        import jax.numpy as jnp

        everyone = jax.lax.all_gather(token_grads, self._axis, tiled=True)
        where = jax.lax.all_gather(token_rows, self._axis, tiled=True)
        total_dtype = jnp.promote_types(token_grads.dtype, jnp.float32)
        return jax.ops.segment_sum(everyone.astype(total_dtype), where, num_segments=num_rows)

    def _sum_into_slice(self, gradient, spec):
        """The gradient summed over the devices, in float32 (or its own dtype
        if wider): each device's slice of it (``spec``'s), or the whole of it
        for a replicated weight.

        A sliced weight's gradient is taken with respect to its gathered
        compute-dtype copy (:meth:`_gather`), so under mixed bfloat16 it is
        bfloat16. It travels as it is, in an all-to-all that hands each
        device every device's part of its slice, and is summed in float32
        on arrival: half the bytes of a float32 reduce-scatter, and the sum
        is float32's, where a bfloat16 reduce-scatter would round the
        partial sums at every hop of its ring.
        """
        import jax
        import jax.numpy as jnp

        axis = _sliced_axis(spec)
        if axis is None:
            return jax.lax.psum(gradient, self._axis)
        if jnp.finfo(gradient.dtype).bits >= 32:  # already as wide as the sum
            return jax.lax.psum_scatter(gradient, self._axis, scatter_dimension=axis, tiled=True)
        shape = gradient.shape
        by_device = jnp.moveaxis(
            jnp.reshape(gradient, shape[:axis] + (self.num_replicas, -1) + shape[axis + 1:]), axis, 0)
        received = jax.lax.all_to_all(by_device, self._axis, 0, 0, tiled=True)
        return jnp.sum(received.astype(jnp.float32), axis=0)

    def _gather(self, value, spec):
        """The whole weight from the devices' slices, gathered in the compute
        dtype: the layers compute with that cast, so the forward pass is the
        same, and the gradient comes back in it (:meth:`_sum_into_slice`)."""
        import jax

        axis = _sliced_axis(spec)
        if axis is None:
            return value
        narrow = value.astype(self._gather_dtype)
        return jax.lax.all_gather(narrow, self._axis, axis=axis, tiled=True)

    def _vocab_values(self, trainable, rows):
        """What the vocabulary optimizer updates: the whole tables, or with
        sparse updates their ``rows`` that the batch reads."""
        if rows is None:
            return [trainable[i] for i in self._other]
        return [getattr(rows, field) for field, _ in self._vocab_tables]

    def _build_row_optimizer(self, batch_rows):
        """The vocabulary optimizer's twin, built on row-sized variables.

        Keras optimizers have no sparse update on JAX, and ``stateless_apply``
        takes values of the shapes they were built with; this twin runs the
        same Keras update on the gathered rows and their gathered optimizer
        state. Its variables are never read: every call maps them to values.
        (They still take memory, ~400 MB at LM1B size on 4 GPUs: Keras
        variables whose initialisation is deferred get initialised, with
        leaked tracers, when the step's StatelessScope closes.)
        Returns the twin and, per optimizer variable, the VocabRows ids field
        that gathers it (None for shared state such as the iteration count).
        """
        hps, model = self.hps, self.model
        tokens = batch_rows * hps.num_steps
        row_counts = {"embedding_ids": tokens, "softmax_ids": tokens + hps.num_sampled}
        row_variables = [
            keras.Variable(np.zeros((row_counts[ids],) + tuple(model.trainable_variables[i].shape[1:]),
                                    "float32"), name=f"{field}_rows")
            for i, (field, ids) in zip(self._other, self._vocab_tables)
        ]
        _, twin = build_optimizers(hps)
        twin.build(row_variables)
        slots = []
        for full, row in zip(self.optimizers[1].variables, twin.variables):
            if tuple(full.shape) == tuple(row.shape):
                slots.append(None)
            else:
                slots.append(next(ids for ids, count in row_counts.items() if row.shape[0] == count))
        return twin, slots

    def _apply_to_rows(self, rows, optimizer_values, row_grads, row_values, tables):
        """The vocabulary update on the rows the batch read, scattered back.

        Equal to the dense update for optimizers that leave zero-gradient
        weights alone (_ROW_WISE_OPTIMIZERS). Padding ids (V) are dropped.
        """
        import jax.numpy as jnp

        last = self.hps.vocab_size - 1
        ids_of = {ids: getattr(rows, ids) for ids in ("embedding_ids", "softmax_ids")}
        gathered = [value if ids is None else value[jnp.minimum(ids_of[ids], last)]
                    for value, ids in zip(optimizer_values, self._row_slots)]
        updated, gathered = self._row_optimizer.stateless_apply(gathered, row_grads, row_values)
        new_tables = [table.at[ids_of[ids]].set(value, mode="drop")
                      for table, value, (_, ids) in zip(tables, updated, self._vocab_tables)]
        new_optimizer_values = [
            new if ids is None else old.at[ids_of[ids]].set(new, mode="drop")
            for old, new, ids in zip(optimizer_values, gathered, self._row_slots)
        ]
        return new_tables, new_optimizer_values


def _sliced_axis(spec):
    """The axis a PartitionSpec splits, or None."""
    return next((axis for axis, name in enumerate(spec) if name is not None), None)


def _check_sparse_vocab(hps, batch_rows, requested):
    reasons = []
    if not hps.num_sampled:
        reasons.append("num_sampled=0 (the full softmax reads every row)")
    if hps.optimizer not in _ROW_WISE_OPTIMIZERS:
        reasons.append(f"optimizer={hps.optimizer} (only Adagrad (0) and SGD (4) leave "
                       "rows with a zero gradient unchanged)")
    if batch_rows * hps.num_steps + hps.num_sampled >= hps.vocab_size:
        reasons.append(f"a batch reads up to {batch_rows * hps.num_steps + hps.num_sampled} rows, "
                       f"not fewer than vocab_size={hps.vocab_size}")
    if requested and reasons:
        raise ValueError("sparse_vocab=True is not possible here: " + "; ".join(reasons) + ". "
                         "Pass sparse_vocab=None to choose automatically.")
    return not reasons if requested is None else bool(requested)


RUNNERS = {"tensorflow": TFRunner, "jax": JaxRunner}
"""Runner class per Keras backend name."""
