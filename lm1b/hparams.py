"""f-lm's hyperparameters ("hpconfig"), typed and validated.

f-lm reads ``--hpconfig "k=v,k=v"`` into a bag of defaults and casts each value
to the type of its default; it checks nothing else. :class:`HParams` keeps the
same keys, defaults and string syntax, but rejects unknown keys, malformed
values and settings that cannot build a model, with a message that names the
bad key or value and says what is accepted.
"""

import dataclasses
import difflib
import json
import math
import numbers

_OPTIMIZERS = ("Adagrad", "Momentum 0.9", "Adam", "RMSProp", "SGD")

# The paper's Table 1 runs (Kuchaiev & Ginsburg 2017): 2 layers, emb = p = 1024,
# n = 8192, 8192 sampled classes, batch 256 per GPU on 4 GPUs.
_BIG = (
    "num_layers=2,learning_rate=0.2,max_grad_norm=1,keep_prob=0.9,"
    "emb_size=1024,projected_size=1024,state_size=8192,num_sampled=8192,"
    "batch_size=256,num_gpus=4"
)

PRESETS = {
    "BIGLSTM": _BIG,
    "BIG_F512": _BIG + ",fact_size=512",
    "BIG_G2": _BIG + ",num_of_groups=2",
    "BIG_G4": _BIG + ",num_of_groups=4",
    "BIG_G8": _BIG + ",num_of_groups=8",
    "BIG_G4_G8": _BIG + ",num_of_groups=4:8",
}
"""Paper configurations by name, as hpconfig strings over f-lm's defaults.

``BIGLSTM`` is the LSTMP baseline; ``BIG_F512`` factorizes with rank r = 512;
``BIG_Gk`` uses k groups in both layers; ``BIG_G4_G8`` is the hierarchical
G-LSTM of §3.1 (4 groups in layer 0, 8 in layer 1).
"""


@dataclasses.dataclass(frozen=True)
class HParams:
    """f-lm's hyperparameters with their f-lm defaults.

    Build with ``HParams.parse("k=v,...")``, ``HParams.from_preset(name)`` or
    keyword arguments; derive variants with ``override("k=v,...")``. Instances
    are immutable and validated on construction.

    Batch and sequence:
        batch_size (int, 128): sequences per GPU (replica) per step.
        num_steps (int, 20): unrolled time steps per batch (truncated BPTT).
        num_shards (int, 8): shards of the embedding and softmax matrices.
        num_layers (int, 1): stacked recurrent layers.

    Optimisation:
        learning_rate (float, 0.2): optimizer learning rate.
        max_grad_norm (float, 10.0): clip the LSTM gradients (only those) to
            this global norm, g <- g · min(1, max_grad_norm / ‖g‖₂).
        keep_prob (float, 0.9): dropout keep probability after the embedding
            and after every layer; in (0, 1], 1 disables dropout.
        optimizer (int, 0): 0 Adagrad (initial accumulator 1.0 · loss_scale²),
            1 Momentum 0.9, 2 Adam, 3 RMSProp, 4 SGD.

    Sizes:
        vocab_size (int, 793470): V, the number of word ids.
        emb_size (int, 512): d of the embedding, the first layer's input.
        state_size (int, 2048): n, the LSTM cell size.
        projected_size (int, 512): p, the projected output h = m·P.
        num_sampled (int, 8192): classes sampled per step for the sampled
            softmax; 0 trains with the full softmax, as in f-lm. Must be < V.

    Devices and precision:
        num_gpus (int, 8): data-parallel replicas; the global batch is
            batch_size · num_gpus.
        float16_rnn (bool, False): run the recurrent layers in half precision.
        float16_non_rnn (bool, False): keep embedding and softmax weights in
            half precision.

    Cell variants:
        fact_size (int or None, None): r of the F-LSTM,
            z = ([x, h]·W1)·W2 + b with W1: (d+p)×r, W2: r×4n.
        num_of_groups (int or tuple of ints, 0): k of the G-LSTM (k > 1;
            0 and 1 mean no groups). "4:8" gives one count per layer (the
            paper's hierarchical G4-G8). k must divide the layer's input size,
            p and n. Exclusive with fact_size.
        use_peepholes (bool, False): peephole connections (LSTMP cell only).
        use_residual (bool, False): residual connection around every layer,
            h_out = h + x (needs emb_size == projected_size).
        unroll (bool, False): unroll the recurrence over all num_steps time
            steps instead of looping over them (not an f-lm key). Same
            results; on a GPU it can be faster (benchmarks/lm_step.py measures
            it per model) at the cost of a longer compile.

    Averaging and scaling:
        average_params (bool, True): keep an exponential moving average
            (decay 0.999) of the LSTM weights and evaluate with it.
        loss_scale (float, 1.0): static loss scale s for half precision; the
            loss is multiplied by s and the clipping norm by s.

    Time and steps:
        max_time (int, 180): training time limit in seconds, summed over restarts.
        max_steps (int, 3000000): training stops after this many steps.
        save_model_every_min (float, 30): minutes between checkpoints.
        save_summary_every_min (float, 16): minutes between summaries.
    """

    batch_size: int = 128
    num_steps: int = 20
    num_shards: int = 8
    num_layers: int = 1
    learning_rate: float = 0.2
    max_grad_norm: float = 10.0
    keep_prob: float = 0.9
    optimizer: int = 0
    vocab_size: int = 793470
    emb_size: int = 512
    state_size: int = 2048
    projected_size: int = 512
    num_sampled: int = 8192
    num_gpus: int = 8
    float16_rnn: bool = False
    float16_non_rnn: bool = False
    fact_size: int | None = None
    num_of_groups: int | tuple[int, ...] = 0
    use_peepholes: bool = False
    use_residual: bool = False
    unroll: bool = False
    average_params: bool = True
    loss_scale: float = 1.0
    max_time: int = 180
    max_steps: int = 3000000
    save_model_every_min: float = 30.0
    save_summary_every_min: float = 16.0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = _CHECK_TYPE[field.type](field.name, getattr(self, field.name))
            # Frozen: normalised values (int -> float, list -> tuple) go in here.
            object.__setattr__(self, field.name, value)
        self._check_ranges()

    @classmethod
    def parse(cls, hpconfig):
        """f-lm's defaults overridden by ``hpconfig`` ("k=v,k=v", may be "")."""
        return cls().override(hpconfig)

    @classmethod
    def from_preset(cls, name, hpconfig=""):
        """The paper configuration ``name`` (a key of :data:`PRESETS`),
        then ``hpconfig`` on top, e.g. ``from_preset("BIG_G4", "num_gpus=1")``.
        """
        if name not in PRESETS:
            raise ValueError(
                f"Unknown preset {name!r}{_suggest(name, PRESETS, upper=True)}. "
                f"Valid presets: {', '.join(PRESETS)}."
            )
        return cls.parse(PRESETS[name]).override(hpconfig)

    @classmethod
    def from_dict(cls, values):
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        for key in values:
            _check_key(key)
        return cls(**values)

    def override(self, hpconfig):
        """A new HParams with the "k=v,k=v" entries of ``hpconfig`` applied.

        Values are read as the key's type: ints reject "1.5"; floats take any
        real number; bools take true/false/1/0 (any case); ``fact_size`` takes
        an int or "None"; ``num_of_groups`` takes an int or one int per layer
        joined by ":" ("4:8"). All entries are applied before validation, so
        their order does not matter.
        """
        if not isinstance(hpconfig, str):
            raise ValueError(
                f"hpconfig must be a string like 'num_layers=2,emb_size=1024', "
                f"got {hpconfig!r} of type {type(hpconfig).__name__}."
            )
        changes = {}
        for entry in hpconfig.split(","):
            entry = entry.strip()
            if not entry:
                continue
            key, sep, text = entry.partition("=")
            key, text = key.strip(), text.strip()
            if not sep:
                raise ValueError(
                    f"Cannot parse hpconfig entry {entry!r}: expected key=value, "
                    f"e.g. 'num_layers=2'."
                )
            _check_key(key)
            if key in changes:
                raise ValueError(f"hparam {key!r} is set twice in {hpconfig!r}.")
            changes[key] = _PARSE[_FIELD_TYPES[key]](key, text)
        return dataclasses.replace(self, **changes)

    def groups_for_layer(self, layer):
        """Group count k of layer ``layer`` (0 or 1: that layer is not grouped)."""
        if not isinstance(layer, numbers.Integral) or not 0 <= layer < self.num_layers:
            raise ValueError(
                f"layer must be an int in [0, {self.num_layers}) for "
                f"num_layers={self.num_layers}, got {layer!r}."
            )
        if isinstance(self.num_of_groups, tuple):
            return self.num_of_groups[layer]
        return self.num_of_groups

    @property
    def cell_type(self):
        """"flstm" if fact_size is set, "glstm" if any layer has k > 1 groups,
        else "lstmp"."""
        if self.fact_size is not None:
            return "flstm"
        if any(self.groups_for_layer(i) > 1 for i in range(self.num_layers)):
            return "glstm"
        return "lstmp"

    def to_dict(self):
        """All keys and values, JSON-serialisable (per-layer groups as a list)."""
        values = dataclasses.asdict(self)
        if isinstance(self.num_of_groups, tuple):
            values["num_of_groups"] = list(self.num_of_groups)
        return values

    def to_json(self):
        """:meth:`to_dict` as a JSON string, for logs and run directories."""
        return json.dumps(self.to_dict())

    def _input_size(self, layer):
        return self.emb_size if layer == 0 else self.projected_size

    def _check_ranges(self):
        for key in ("batch_size", "num_steps", "num_shards", "num_layers",
                    "vocab_size", "emb_size", "state_size", "projected_size",
                    "num_gpus", "max_time", "max_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 1.")
        for key in ("learning_rate", "max_grad_norm", "loss_scale",
                    "save_model_every_min", "save_summary_every_min"):
            if not 0 < getattr(self, key) < math.inf:
                raise ValueError(f"{key}={getattr(self, key)} must be a finite number > 0.")
        if not 0 < self.keep_prob <= 1:
            raise ValueError(
                f"keep_prob={self.keep_prob} must be in (0, 1] (1 disables dropout)."
            )
        if not 0 <= self.optimizer < len(_OPTIMIZERS):
            choices = ", ".join(f"{i} {n}" for i, n in enumerate(_OPTIMIZERS))
            raise ValueError(f"optimizer={self.optimizer} must be one of: {choices}.")
        if not 0 <= self.num_sampled < self.vocab_size:
            raise ValueError(
                f"num_sampled={self.num_sampled} must be in [0, vocab_size="
                f"{self.vocab_size}) (0 trains with the full softmax)."
            )
        self._check_groups()
        self._check_fact_size()
        if self.use_peepholes and self.cell_type != "lstmp":
            raise ValueError(
                f"use_peepholes=True works with the LSTMP cell only, but "
                f"fact_size={self.fact_size}, num_of_groups={self.num_of_groups} "
                f"select {self.cell_type}; unset one of them."
            )
        if self.use_residual and self.emb_size != self.projected_size:
            raise ValueError(
                f"use_residual=True adds each layer's input to its output, so "
                f"emb_size={self.emb_size} must equal projected_size="
                f"{self.projected_size}."
            )

    def _check_groups(self):
        if isinstance(self.num_of_groups, tuple) and len(self.num_of_groups) != self.num_layers:
            raise ValueError(
                f"num_of_groups={_groups_text(self.num_of_groups)} gives "
                f"{len(self.num_of_groups)} per-layer counts but num_layers="
                f"{self.num_layers}; give one count per layer or a single int."
            )
        for layer in range(self.num_layers):
            k = self.groups_for_layer(layer)
            if k < 0:
                raise ValueError(
                    f"num_of_groups={_groups_text(self.num_of_groups)} must be "
                    f">= 0 (0 or 1: no groups)."
                )
            if k > 1 and self.fact_size is not None:
                raise ValueError(
                    f"num_of_groups={_groups_text(self.num_of_groups)} and "
                    f"fact_size={self.fact_size} exclude each other (as in "
                    f"f-lm); set fact_size=None or num_of_groups=0."
                )
            sizes = {
                "emb_size" if layer == 0 else "projected_size (layer input)":
                    self._input_size(layer),
                "projected_size": self.projected_size,
                "state_size": self.state_size,
            }
            for name, size in sizes.items():
                if k > 1 and size % k:
                    raise ValueError(
                        f"num_of_groups={k} for layer {layer} must divide "
                        f"{name}={size}."
                    )

    def _check_fact_size(self):
        if self.fact_size is None:
            return
        if self.fact_size < 1:
            raise ValueError(f"fact_size={self.fact_size} must be >= 1 or None.")
        for layer in range(self.num_layers):
            # W1·W2 is a (d+p)×4n matrix; a rank above min(d+p, 4n) adds
            # parameters without adding expressiveness.
            rank = min(self._input_size(layer) + self.projected_size, 4 * self.state_size)
            if self.fact_size > rank:
                raise ValueError(
                    f"fact_size={self.fact_size} exceeds the largest useful rank "
                    f"{rank} = min(input + projected_size, 4 * state_size) of "
                    f"layer {layer}."
                )


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(HParams)}


def _check_key(key):
    if key not in _FIELD_TYPES:
        raise ValueError(
            f"Unknown hparam {key!r}{_suggest(key, _FIELD_TYPES)}. "
            f"Valid keys: {', '.join(_FIELD_TYPES)}."
        )


def _suggest(name, valid, upper=False):
    probe = str(name).upper() if upper else str(name)
    close = difflib.get_close_matches(probe, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _groups_text(groups):
    return ":".join(map(str, groups)) if isinstance(groups, tuple) else str(groups)


def _type_error(key, expected, value):
    return ValueError(f"hparam {key!r} expects {expected}, got {value!r}.")


def _is_int(value):
    # bool is an int subclass; True must not pass as num_layers=1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_int(key, value):
    if not _is_int(value):
        raise _type_error(key, "an int", value)
    return int(value)


def _as_float(key, value):
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise _type_error(key, "a number", value)
    return float(value)


def _as_bool(key, value):
    if not isinstance(value, bool):
        raise _type_error(key, "a bool", value)
    return value


def _as_optional_int(key, value):
    return None if value is None else _as_int(key, value)


def _as_groups(key, value):
    if isinstance(value, (list, tuple)):
        if not value or not all(_is_int(k) for k in value):
            raise _type_error(key, "an int or a non-empty sequence of ints", value)
        return tuple(int(k) for k in value)
    return _as_int(key, value)


_CHECK_TYPE = {
    int: _as_int,
    float: _as_float,
    bool: _as_bool,
    int | None: _as_optional_int,
    int | tuple[int, ...]: _as_groups,
}


def _parse_int(key, text):
    try:
        return int(text)
    except ValueError:
        raise _type_error(key, "an int", text) from None


def _parse_float(key, text):
    try:
        return float(text)
    except ValueError:
        raise _type_error(key, "a number", text) from None


def _parse_bool(key, text):
    words = {"true": True, "1": True, "false": False, "0": False}
    if text.lower() not in words:
        raise _type_error(key, "a bool (true/false/1/0)", text)
    return words[text.lower()]


def _parse_optional_int(key, text):
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise _type_error(key, "an int or None", text) from None


def _parse_groups(key, text):
    try:
        counts = [int(part) for part in text.split(":")]
    except ValueError:
        raise _type_error(
            key, "an int or one int per layer joined by ':' (e.g. 4:8)", text
        ) from None
    return counts[0] if len(counts) == 1 else tuple(counts)


_PARSE = {
    int: _parse_int,
    float: _parse_float,
    bool: _parse_bool,
    int | None: _parse_optional_int,
    int | tuple[int, ...]: _parse_groups,
}
