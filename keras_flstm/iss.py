"""Intrinsic Sparse Structures (ISS) for the keras_flstm cells (Wen et al., ICLR 2018).

An ISS component is everything that must vanish for one cell unit k to
vanish, so that a dense, smaller LSTM can be built from the units that are
left. For a cell with n units, gate order i, f, c, o (columns
`k, n+k, 2n+k, 3n+k` of every `4n` axis), component k is:

```
LSTMP   columns k of the 4 gate blocks of W_x (d, 4n) and W_h (p, 4n)
F-LSTM  columns k of the 4 gate blocks of W2 (r, 4n)        (W1 is not tied to a unit)
G-LSTM  the same columns inside the group j = k // (n/k_groups) that owns unit k,
        in W_xʲ (d/kg, 4n/kg) and W_hʲ (p/kg, 4n/kg)
all     b[k, n+k, 2n+k, 3n+k], the peephole entries w_i[k], w_f[k], w_o[k],
        and row k of the projection P (n, p)
```

Without a projection, h_t = m_t has n entries and h_k feeds the gates of
the next step and whatever reads the layer's output, so component k also
holds:

```
row k of the recurrent weights (W_h for LSTMP, W1_h for F-LSTM, row k of its
      group's W_hʲ for G-LSTM)
row k of the consumer's input weights: a Dense kernel, or the next keras_flstm
      RNN layer's kernel (W_x, W1_x, or the matching row of a G-LSTM's W_xʲ)
```

(between the layer and its consumer there may be Dropout, GaussianDropout,
GaussianNoise or Activation layers, which keep unit k in place).

Every weight entry is counted once: the entries of W_h that are both in
column k and row k of the same unit are not counted twice.

API:

- `group_lasso(model)`: `Σ_layers Σ_k ‖component_k‖₂`, a scalar tensor.
- `GroupLasso(model, strength)`: a `keras.Model` that trains `model` with
  `strength · group_lasso(model)` added to its training loss.
- `ZeroOut(threshold=1e-4)`: a callback setting `|w| < threshold` to 0 in
  every weight that holds component parts, after every training batch.
- `sparsity_report(model)`: alive and removed (all parts exactly zero)
  components per layer.
- `prune(model, threshold=0.0)`: a new, smaller model without the
  components whose norm is `<= threshold`.

Only the penalty runs inside training, on `keras.ops`; the report and the
pruning read the weights once, in NumPy float64.
"""

import dataclasses
import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_flstm.cells import FLSTMCell
from keras_flstm.cells import GLSTMCell
from keras_flstm.cells import LSTMPCell

# Layers that may sit between a layer without projection and the layer that
# reads its units: they act on each unit alone, so unit k stays unit k.
_UNIT_WISE = (
    keras.layers.Dropout,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.Activation,
)


@dataclasses.dataclass(frozen=True)
class _Part:
    """The entries of one weight that belong to the components of a layer.

    `axis` says where unit k sits in the weight:

    - "gates": columns `g·n + k` of its last axis (`(..., 4n)`);
    - "group_gates": a G-LSTM weight `(kg, a, 4n/kg)`: columns
      `g·(n/kg) + k mod (n/kg)` of group `k // (n/kg)`;
    - "units": entry k of a `(n,)` weight;
    - "rows": row k of the weight seen as `(n, -1)` (a G-LSTM kernel
      `(kg, n/kg, c)` is its n rows in order).

    `diagonal` > 0 marks recurrent rows whose entries at columns
    `g·diagonal + k mod diagonal` already belong to the columns of unit k.
    """

    variable: object
    axis: str
    diagonal: int = 0


@dataclasses.dataclass
class _Layer:
    """One prunable RNN layer, its components' parts, and who reads its units."""

    layer: object
    consumer: object
    parts: list
    blocks: int

    @property
    def cell(self):
        return self.layer.cell

    @property
    def units(self):
        return self.layer.cell.units


def _is_prunable(layer):
    return isinstance(layer, keras.layers.RNN) and isinstance(
        layer.cell, (LSTMPCell, FLSTMCell, GLSTMCell)
    )


def _check_real(name, value, strictly_positive, meaning):
    """Raises a ValueError unless `value` is a real number > 0 (or >= 0)."""
    bound = "> 0" if strictly_positive else ">= 0"
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not real or not (value > 0 if strictly_positive else value >= 0):
        raise ValueError(f"`{name}` must be a float {bound}, got {name}={value!r}. {meaning}")


def _unwrap(model):
    return model.model if isinstance(model, GroupLasso) else model


def _linear_chain(model):
    """The model's layers in order when it is a linear stack, else (None, why)."""
    layers = [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    if isinstance(model, keras.Sequential):
        return layers, None
    inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
    if not inputs or not outputs:
        return None, f"{type(model).__name__} is not a functional model"
    if len(inputs) != 1 or len(outputs) != 1:
        return None, f"the model has {len(inputs)} inputs and {len(outputs)} outputs"
    x = inputs[0]
    for layer in layers:
        if not _reads_only(layer, x):
            return None, (
                f"layer {layer.name!r} does not read the single output of "
                "the layer before it (or has several inputs or outputs)"
            )
        x = layer.output
    if x is not outputs[0]:
        return None, "the last layer's output is not the model output"
    return layers, None


def _reads_only(layer, x):
    """Whether `layer` has one output and reads `x` alone (with its mask, if any)."""
    try:
        read, output = layer.input, layer.output
    except (AttributeError, ValueError):
        return False
    if isinstance(output, (list, tuple)):
        return False
    if read is x:
        return True
    # A layer that takes a mask lists the mask that Keras passed with x
    # (e.g. from Embedding(mask_zero=True)) as a second input.
    mask = getattr(x, "_keras_mask", None)
    return (
        isinstance(read, (list, tuple))
        and len(read) == 2
        and read[0] is x
        and mask is not None
        and read[1] is mask
    )


def _consumer(chain, producer):
    """The layer that reads the units of `producer` (no projection)."""
    position = chain.index(producer)
    for layer in chain[position + 1 :]:
        if isinstance(layer, _UNIT_WISE):
            continue
        if isinstance(layer, keras.layers.Dense) or _is_prunable(layer):
            return layer
        raise ValueError(
            f"Layer {producer.name!r} has no projection, so its units are "
            f"read by the next layer, {layer.name!r} "
            f"({type(layer).__name__}); ISS can only remove them when that "
            "layer is a Dense or a keras_flstm RNN layer (with only Dropout, "
            "GaussianDropout, GaussianNoise or Activation in between). Set "
            f"`projection_units` on {producer.name!r} or change the next "
            "layer."
        )
    raise ValueError(
        f"Layer {producer.name!r} has no projection and its units are the "
        "model's output, so removing one would change the output size. Add "
        f"a Dense layer after {producer.name!r} or set `projection_units`."
    )


def _own_parts(cell):
    n, projected = cell.units, cell.projection_units is not None
    if isinstance(cell, FLSTMCell):
        parts = [_Part(cell.factor_kernel, "gates")]
        if not projected:
            parts.append(_Part(cell.recurrent_kernel, "rows"))
    elif isinstance(cell, GLSTMCell):
        parts = [
            _Part(cell.kernel, "group_gates"),
            _Part(cell.recurrent_kernel, "group_gates"),
        ]
        if not projected:
            size = n // cell.groups
            parts.append(_Part(cell.recurrent_kernel, "rows", diagonal=size))
    else:
        parts = [_Part(cell.kernel, "gates"), _Part(cell.recurrent_kernel, "gates")]
        if not projected:
            parts.append(_Part(cell.recurrent_kernel, "rows", diagonal=n))
    if cell.bias is not None:
        parts.append(_Part(cell.bias, "gates"))
    for peephole in cell.peepholes or ():
        parts.append(_Part(peephole, "units"))
    if projected:
        parts.append(_Part(cell.projection_kernel, "rows"))
    return parts


def _groups(layer):
    cell = getattr(layer, "cell", None)
    return cell.groups if isinstance(cell, GLSTMCell) else 1


def _layers(model, need_chain=False):
    """A `_Layer` for every prunable RNN layer of `model`."""
    model = _unwrap(model)
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Expected a keras.Model, got {type(model).__name__}. Pass the "
            "model that holds the keras_flstm RNN layers."
        )
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built. Build it first (start it "
            "with keras.Input, or call it once on a batch)."
        )
    prunable = [layer for layer in model.layers if _is_prunable(layer)]
    if not prunable:
        names = ", ".join(
            f"{layer.name} ({type(layer).__name__})" for layer in model.layers
        )
        raise ValueError(
            f"Model {model.name!r} has no prunable layer: ISS needs a "
            "keras.layers.RNN over an LSTMPCell, FLSTMCell or GLSTMCell, or "
            f"an LSTMP, FLSTM or GLSTM layer, at the top level. Its layers: "
            f"{names}."
        )
    chain, why = _linear_chain(model)
    if need_chain and chain is None:
        raise ValueError(
            f"prune supports linear stacks (Input -> layers -> output, each "
            f"layer reading the previous layer's only output), but in model "
            f"{model.name!r} {why}. Build a linear Sequential or functional "
            "model."
        )
    found = []
    for layer in prunable:
        parts, consumer = _own_parts(layer.cell), None
        blocks = _groups(layer)
        if layer.cell.projection_units is None:
            if chain is None:
                raise ValueError(
                    f"Layer {layer.name!r} has no projection, so its ISS "
                    "components include rows of the layer that reads it, "
                    f"which can only be found in a linear stack; in model "
                    f"{model.name!r} {why}. Set `projection_units` or build "
                    "a linear Sequential or functional model."
                )
            consumer = _consumer(chain, layer)
            kernel = consumer.cell.kernel if _is_prunable(consumer) else consumer.kernel
            parts.append(_Part(kernel, "rows"))
            # A G-LSTM consumer reads equal slices of the units: prune
            # equally inside each slice too.
            blocks = math.lcm(blocks, _groups(consumer))
        found.append(_Layer(layer, consumer, parts, blocks))
    return found


def _per_unit(entry, n, parts, values, xp):
    """Reduces every part to one value per unit k, combining the parts.

    `entry` is "square" (sum of squares over the component) or "abs" (the
    largest |w| in it). `xp` is `numpy` or `keras.ops`.
    """
    square = entry == "square"
    reduce = xp.sum if square else xp.max
    total = None
    for part, w in zip(parts, values):
        w = xp.square(w) if square else xp.abs(w)
        if part.axis == "gates":
            per_unit = reduce(xp.reshape(w, (-1, 4, n)), axis=(0, 1))
        elif part.axis == "group_gates":
            groups = w.shape[0]
            w = xp.reshape(w, (groups, -1, 4, n // groups))
            per_unit = xp.reshape(reduce(w, axis=(1, 2)), (n,))
        elif part.axis == "units":
            per_unit = w
        else:
            w = xp.reshape(w, (n, -1))
            if part.diagonal:
                eye = xp.eye(part.diagonal, dtype=w.dtype)
                w = w * (1 - xp.tile(eye, (n // part.diagonal, 4)))
            per_unit = reduce(w, axis=1)
        if total is None:
            total = per_unit
        else:
            total = total + per_unit if square else xp.maximum(total, per_unit)
    return total


def _numpy_values(found):
    return [
        [np.asarray(ops.convert_to_numpy(part.variable), np.float64) for part in f.parts]
        for f in found
    ]


def _penalty(found):
    total = 0.0
    for f in found:
        squares = _per_unit(
            "square", f.units, f.parts, [part.variable for part in f.parts], ops
        )
        # sqrt has an infinite slope at 0 and ZeroOut makes exact zeros:
        # take the root of positive sums only, so gradients stay finite.
        alive = squares > 0
        safe = ops.where(alive, squares, ops.ones_like(squares))
        total = total + ops.sum(ops.where(alive, ops.sqrt(safe), ops.zeros_like(squares)))
    return total


def group_lasso(model):
    """The ISS group lasso of `model`, unscaled, as a scalar tensor.

    ```
    Ω(model) = Σ_layers Σ_k ‖component_k‖₂ = Σ_layers Σ_k sqrt(Σ_{w ∈ component_k} w²)
    ```

    with the components of the module docstring (no normalisation by
    component size, as in the paper). Computed with `keras.ops` from the
    variables, so it can be differentiated and traced under `jit`.
    """
    return _penalty(_layers(model))


class GroupLasso(keras.Model):
    """Trains `model` with the ISS group lasso added to its training loss.

    ```
    loss = compiled_loss(y, model(x)) + strength · Ω(model)
    ```

    where Ω is `group_lasso(model)`. The penalty is computed once per
    training step from the weights, outside the recurrence, in
    `compute_loss`, so it works with `fit` on every backend (under JAX's
    stateless, jitted train step too). Evaluation's loss is the data loss
    alone. The weights are `model`'s own: train this wrapper, then keep,
    save or `prune` `model`. The logs of training and evaluation add
    `group_lasso`, the mean of `strength · Ω` over the batches.

    Example:

    >>> trainer = iss.GroupLasso(model, strength=0.00245)
    >>> trainer.compile(optimizer="sgd", loss=loss)
    >>> trainer.fit(x, y, callbacks=[iss.ZeroOut(1e-4)])
    >>> small = iss.prune(model)

    Args:
        model: A built keras.Model with keras_flstm RNN layers (see
            `prune` for the topologies a layer without projection needs).
        strength: λ >= 0, the weight of the penalty.
    """

    def __init__(self, model, strength, **kwargs):
        _check_real(
            "strength", strength, strictly_positive=False,
            meaning="It is λ in loss + λ·Σ_k ‖component_k‖₂ (the paper uses 0.00245 on PTB).",
        )
        components = _layers(model)
        super().__init__(**kwargs)
        self.model = model
        self._components = components
        self.strength = float(strength)
        self.penalty_tracker = keras.metrics.Mean(name="group_lasso")

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def penalty(self):
        """strength · Ω(model), as a scalar tensor."""
        return self.strength * _penalty(self._components)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        penalty = ops.cast(self.penalty(), loss.dtype)
        # Reported in evaluation too (it depends on the weights alone), but
        # only training minimises it.
        self.penalty_tracker.update_state(penalty)
        return loss + penalty if training else loss


class ZeroOut(keras.callbacks.Callback):
    """Sets weights with `|w| < threshold` to zero after every training batch.

    Only the weights that hold ISS component parts are touched (the cells'
    kernels, W2, biases, peepholes, projections, and the consumers' kernels
    of layers without projection); embeddings, a Dense bias or F-LSTM's W1_x
    are not. Under the group lasso, a component then reaches exactly zero
    instead of hovering near it (Wen et al. use 1e-4). With
    `steps_per_execution > 1` it runs after every execution.

    Args:
        threshold: float > 0.
    """

    def __init__(self, threshold=1e-4):
        _check_real(
            "threshold", threshold, strictly_positive=True,
            meaning="Weights with |w| below it are set to 0 (Wen et al. use 1e-4).",
        )
        super().__init__()
        self.threshold = float(threshold)
        self._variables = None

    def on_train_begin(self, logs=None):
        unique = {}
        for f in _layers(self.model):
            for part in f.parts:
                unique[id(part.variable)] = part.variable
        self._variables = list(unique.values())

    def on_train_batch_end(self, batch, logs=None):
        # The JAX trainer keeps the weights outside the variables during fit;
        # a sync puts them in and makes it read them back (zeroed) before the
        # next step. Keras's `Callback.model` getter syncs already; calling it
        # here keeps the zeros from resting on that getter.
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        for v in self._variables:
            value = v.value
            v.assign(ops.where(ops.abs(value) < self.threshold, ops.zeros_like(value), value))


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
    """ISS sparsity of one layer: which units' components are alive.

    A component is removed when all its parts are exactly zero. `consumer`
    names the layer whose input rows belong to the components (layers
    without projection), else None. `alive_per_group` counts alive units in
    each of the equal blocks that `prune` keeps equal in size: the G-LSTM
    groups, refined by the slices a G-LSTM consumer reads; one block
    otherwise.
    """

    name: str
    cell: str
    units: int
    consumer: object
    alive: tuple
    removed: tuple
    alive_per_group: tuple

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """`sparsity_report`'s result: one `LayerSparsity` per prunable layer."""

    layers: tuple

    def as_dict(self):
        return {"layers": [layer.as_dict() for layer in self.layers]}

    def __str__(self):
        lines = [f"{'layer':<20} {'cell':<10} {'units':>6} {'alive':>6} {'removed':>8}  {'reads its units':<16} alive per group"]
        for s in self.layers:
            lines.append(
                f"{s.name:<20} {s.cell:<10} {s.units:>6} {len(s.alive):>6} "
                f"{len(s.removed):>8}  {s.consumer or '-':<16} {list(s.alive_per_group)}"
            )
        return "\n".join(lines)


def sparsity_report(model):
    """Alive and removed ISS components of every prunable layer of `model`.

    Returns a `SparsityReport`; `str(report)` is a table and
    `report.as_dict()` a plain dict.
    """
    found = _layers(model)
    layers = []
    for f, values in zip(found, _numpy_values(found)):
        largest = _per_unit("abs", f.units, f.parts, values, np)
        alive = largest > 0
        layers.append(
            LayerSparsity(
                name=f.layer.name,
                cell=type(f.cell).__name__,
                units=f.units,
                consumer=f.consumer.name if f.consumer is not None else None,
                alive=tuple(int(k) for k in np.flatnonzero(alive)),
                removed=tuple(int(k) for k in np.flatnonzero(~alive)),
                alive_per_group=tuple(int(c) for c in alive.reshape(f.blocks, -1).sum(axis=1)),
            )
        )
    return SparsityReport(tuple(layers))


def _kept_units(f, norms, threshold):
    """The sorted units that survive; every block keeps the same number."""
    alive = (norms > threshold).reshape(f.blocks, -1)
    keep_per_block = int(alive.sum(axis=1).max())
    if keep_per_block == 0:
        raise ValueError(
            f"All {f.units} ISS components of layer {f.layer.name!r} have a "
            f"norm <= threshold={threshold!r} (largest norm: "
            f"{norms.max():.3g}), so nothing would be left. "
            "Lower `threshold`, or train with a smaller group-lasso strength."
        )
    size = f.units // f.blocks
    kept = []
    for block, block_norms in enumerate(norms.reshape(f.blocks, -1)):
        # The strongest `keep_per_block` units; a stable sort breaks ties by
        # position, so equal norms keep the lower unit.
        strongest = np.argsort(-block_norms, kind="stable")[:keep_per_block]
        kept.append(np.sort(strongest) + block * size)
    return np.concatenate(kept)


def _slice(w, part, keep, n):
    """The entries of weight `w` left when only units `keep` stay."""
    if part.axis == "gates":
        return w[..., (np.arange(4)[:, None] * n + keep).ravel()]
    if part.axis == "group_gates":
        groups = w.shape[0]
        size = n // groups
        columns = [
            (np.arange(4)[:, None] * size + keep[keep // size == j] - j * size).ravel()
            for j in range(groups)
        ]
        return np.stack([w[j][:, columns[j]] for j in range(groups)])
    if part.axis == "units":
        return w[keep]
    rows = w.reshape(n, -1)[keep]
    if w.ndim == 3:
        return rows.reshape(w.shape[0], -1, w.shape[2])
    return rows.reshape((len(keep),) + w.shape[1:])


def _with_units(layer, units):
    config = layer.get_config()
    if "cell" in config:
        # RNN(cell) nests the cell's config, with the input shape it was
        # built for; the new cell must build for its own (maybe smaller) input.
        config["cell"].pop("build_config", None)
        config["cell"]["config"]["units"] = units
    else:
        config["units"] = units
    return type(layer).from_config(config)


def prune(model, threshold=0.0):
    """A new, smaller model without the ISS components of norm <= threshold.

    Every prunable layer keeps the units whose component norm
    `‖component_k‖₂` is above `threshold`; its cell is rebuilt with that
    many units and the learned weights of those units, and the layer that
    reads the units of a layer without projection shrinks to match. The
    result computes the same function as `model` with the removed
    components set to zero (exactly so, up to float rounding: a unit whose
    gate columns and bias are zero has c = m = 0 at every step, and the
    rest of its component is zero too).

    G-LSTM groups must stay equal in size, so each group keeps as many units
    as the group with the most survivors: the strongest ones, dead or not.
    The same holds for the slices a G-LSTM consumer reads of a layer
    without projection.

    Supported models: linear Sequential or functional stacks (Input ->
    [Embedding] -> RNN layers -> [Dropout] -> Dense, in any mix) whose
    prunable layers are `keras.layers.RNN(LSTMPCell | FLSTMCell | GLSTMCell)`
    or `LSTMP`, `FLSTM`, `GLSTM`. Other layers are copied unchanged.
    RNN states (stateful layers) start from zero.

    Args:
        model: A built keras.Model (or a `GroupLasso` wrapping one).
        threshold: float >= 0; 0 removes exactly the all-zero components.

    Returns:
        A new keras.Model (Sequential if `model` is), with its own weights.
    """
    _check_real(
        "threshold", threshold, strictly_positive=False,
        meaning="Components with ‖component‖₂ <= threshold are removed; 0 removes only the all-zero ones.",
    )
    model = _unwrap(model)
    found = _layers(model, need_chain=True)
    chain, _ = _linear_chain(model)
    slices = {}
    new_units = {}
    for f, values in zip(found, _numpy_values(found)):
        norms = np.sqrt(_per_unit("square", f.units, f.parts, values, np))
        keep = _kept_units(f, norms, float(threshold))
        new_units[id(f.layer)] = len(keep)
        for part in f.parts:
            slices.setdefault(id(part.variable), []).append((part, keep, f.units))

    source = model.inputs[0]
    x = inputs = keras.Input(batch_shape=source.shape, dtype=source.dtype)
    new_layers = []
    for layer in chain:
        if id(layer) in new_units:
            new = _with_units(layer, new_units[id(layer)])
        else:
            new = type(layer).from_config(layer.get_config())
        x = new(x)
        new_layers.append(new)
        for old_w, new_w in zip(layer.weights, new.weights):
            value = ops.convert_to_numpy(old_w)
            for part, keep, n in slices.get(id(old_w), ()):
                value = _slice(value, part, keep, n)
            new_w.assign(value)
    if isinstance(model, keras.Sequential):
        return keras.Sequential([inputs, *new_layers], name=model.name)
    return keras.Model(inputs, x, name=model.name)
