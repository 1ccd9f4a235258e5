"""lm1b.hparams: f-lm defaults, hpconfig parsing, validation, presets."""

import dataclasses
import json

import pytest

from lm1b.hparams import PRESETS, HParams

# f-lm's get_default_hparams(), written out independently of the module.
FLM_DEFAULTS = dict(
    batch_size=128, num_steps=20, num_shards=8, num_layers=1,
    learning_rate=0.2, max_grad_norm=10.0, keep_prob=0.9, optimizer=0,
    vocab_size=793470, emb_size=512, state_size=2048, projected_size=512,
    num_sampled=8192, num_gpus=8, float16_rnn=False, float16_non_rnn=False,
    fact_size=None, num_of_groups=0, use_peepholes=False, use_residual=False,
    average_params=True, loss_scale=1.0, max_time=180, max_steps=3000000,
    save_model_every_min=30, save_summary_every_min=16,
)

PAPER = dict(
    num_layers=2, learning_rate=0.2, max_grad_norm=1.0, keep_prob=0.9,
    emb_size=1024, projected_size=1024, state_size=8192, num_sampled=8192,
    batch_size=256, num_gpus=4,
)


def _raises(hpconfig, *fragments):
    with pytest.raises(ValueError) as error:
        HParams.parse(hpconfig)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    return str(error.value)


# Keys of ours that f-lm does not have, with their defaults.
OUR_DEFAULTS = dict(unroll=False)


def test_defaults_are_flm_defaults():
    assert HParams().to_dict() == {**FLM_DEFAULTS, **OUR_DEFAULTS}
    assert HParams.parse("") == HParams()
    assert HParams().cell_type == "lstmp"


def test_parse_reads_each_type():
    hps = HParams.parse(
        " num_layers=2 , learning_rate=1, keep_prob=0.5, float16_rnn=TRUE,"
        "average_params=0,use_residual=1,fact_size=256,save_model_every_min=0.5,"
        "save_summary_every_min=2.25,max_grad_norm=1e1,"
    )
    assert hps.num_layers == 2 and isinstance(hps.num_layers, int)
    assert hps.learning_rate == 1.0 and isinstance(hps.learning_rate, float)
    assert hps.keep_prob == 0.5
    assert hps.float16_rnn is True and hps.average_params is False and hps.use_residual is True
    assert hps.fact_size == 256 and hps.cell_type == "flstm"
    assert hps.save_model_every_min == 0.5 and hps.save_summary_every_min == 2.25
    assert hps.max_grad_norm == 10.0
    assert HParams.parse("fact_size=256").override("fact_size=None").fact_size is None


@pytest.mark.parametrize("text, value", [
    ("true", True), ("True", True), ("TRUE", True), ("1", True),
    ("false", False), ("False", False), ("FALSE", False), ("0", False),
])
def test_bools_accept_true_false_one_zero(text, value):
    assert HParams.parse(f"use_peepholes={text}").use_peepholes is value


def test_override_returns_a_new_frozen_instance():
    base = HParams.parse("num_layers=2")
    changed = base.override("emb_size=256,projected_size=256")
    assert base.emb_size == 512 and changed.emb_size == 256 and changed.num_layers == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.emb_size = 128


def test_entries_apply_before_validation():
    # num_of_groups=4:8 alone is invalid for one layer; the order must not matter.
    assert HParams.parse("num_of_groups=4:8,num_layers=2") == HParams.parse(
        "num_layers=2,num_of_groups=4:8")


def test_per_layer_groups():
    hps = HParams.parse("num_layers=2,num_of_groups=4:8")
    assert hps.num_of_groups == (4, 8)
    assert [hps.groups_for_layer(i) for i in range(2)] == [4, 8]
    assert hps.cell_type == "glstm"
    single = HParams.parse("num_layers=3,num_of_groups=2")
    assert single.num_of_groups == 2
    assert [single.groups_for_layer(i) for i in range(3)] == [2, 2, 2]
    # A layer with 1 group is a plain LSTMP; one grouped layer makes a G-LSTM model.
    mixed = HParams.parse("num_layers=2,num_of_groups=1:4")
    assert mixed.groups_for_layer(0) == 1 and mixed.cell_type == "glstm"
    assert HParams.parse("num_of_groups=1").cell_type == "lstmp"


@pytest.mark.parametrize("layer", [-1, 2, 1.0, "0"])
def test_groups_for_layer_rejects_bad_layer(layer):
    hps = HParams.parse("num_layers=2,num_of_groups=4:8")
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 2\) for num_layers=2"):
        hps.groups_for_layer(layer)


def test_unknown_key_lists_valid_keys_and_suggests():
    message = _raises("lerning_rate=0.1", "Unknown hparam 'lerning_rate'",
                      "did you mean 'learning_rate'?", "Valid keys:")
    for key in {**FLM_DEFAULTS, **OUR_DEFAULTS}:
        assert key in message
    assert "did you mean" not in _raises("zzz=1", "Unknown hparam 'zzz'")


@pytest.mark.parametrize("hpconfig, fragments", [
    ("num_layers=1.5", ["hparam 'num_layers' expects an int, got '1.5'"]),
    ("batch_size=abc", ["hparam 'batch_size' expects an int, got 'abc'"]),
    ("learning_rate=fast", ["hparam 'learning_rate' expects a number, got 'fast'"]),
    ("float16_rnn=yes", ["hparam 'float16_rnn' expects a bool (true/false/1/0), got 'yes'"]),
    ("use_residual=2", ["hparam 'use_residual' expects a bool", "got '2'"]),
    ("unroll=yes", ["hparam 'unroll' expects a bool (true/false/1/0), got 'yes'"]),
    ("fact_size=1.5", ["hparam 'fact_size' expects an int or None, got '1.5'"]),
    ("num_of_groups=4:x", ["hparam 'num_of_groups' expects an int or one int per layer", "got '4:x'"]),
    ("num_of_groups=", ["hparam 'num_of_groups'", "got ''"]),
    ("num_layers", ["Cannot parse hpconfig entry 'num_layers': expected key=value"]),
    ("num_layers=2,num_layers=3", ["hparam 'num_layers' is set twice"]),
])
def test_bad_values_name_key_and_value(hpconfig, fragments):
    _raises(hpconfig, *fragments)


@pytest.mark.parametrize("key", [
    "batch_size", "num_steps", "num_shards", "num_layers", "vocab_size",
    "emb_size", "state_size", "projected_size", "num_gpus", "max_time", "max_steps",
])
def test_sizes_and_counts_must_be_positive(key):
    _raises(f"{key}=0", f"{key}=0 must be >= 1")


@pytest.mark.parametrize("key", [
    "learning_rate", "max_grad_norm", "loss_scale", "save_model_every_min",
    "save_summary_every_min",
])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_rates_and_periods_must_be_positive_and_finite(key, value):
    _raises(f"{key}={value}", f"{key}=", "must be a finite number > 0")


@pytest.mark.parametrize("hpconfig, fragments", [
    ("keep_prob=0", ["keep_prob=0.0 must be in (0, 1]"]),
    ("keep_prob=1.01", ["keep_prob=1.01 must be in (0, 1]"]),
    ("optimizer=5", ["optimizer=5 must be one of: 0 Adagrad", "4 SGD"]),
    ("optimizer=-1", ["optimizer=-1 must be one of"]),
    ("num_sampled=793470", ["num_sampled=793470 must be in [0, vocab_size=793470)"]),
    ("num_sampled=-1", ["num_sampled=-1 must be in [0, vocab_size=793470)"]),
    ("vocab_size=100", ["num_sampled=8192 must be in [0, vocab_size=100)"]),
    ("fact_size=0", ["fact_size=0 must be >= 1 or None"]),
    ("fact_size=1025", ["fact_size=1025 exceeds the largest useful rank 1024", "layer 0"]),
    ("num_of_groups=-2", ["num_of_groups=-2 must be >= 0"]),
    ("num_of_groups=3", ["num_of_groups=3 for layer 0 must divide emb_size=512"]),
    ("emb_size=1024,projected_size=1002,num_of_groups=4",
     ["num_of_groups=4 for layer 0 must divide projected_size=1002"]),
    ("state_size=2052,num_of_groups=8", ["num_of_groups=8 for layer 0 must divide state_size=2052"]),
    ("num_layers=2,emb_size=1024,projected_size=1024,num_of_groups=1:16,state_size=2056",
     ["num_of_groups=16 for layer 1 must divide state_size=2056"]),
    ("num_of_groups=4:8", ["num_of_groups=4:8 gives 2 per-layer counts but num_layers=1"]),
    ("num_layers=3,num_of_groups=4:8", ["gives 2 per-layer counts but num_layers=3"]),
    ("num_of_groups=4,fact_size=256", ["num_of_groups=4 and fact_size=256 exclude each other"]),
    ("use_peepholes=true,fact_size=256", ["use_peepholes=True works with the LSTMP cell only", "flstm"]),
    ("use_peepholes=true,num_of_groups=2", ["use_peepholes=True", "glstm"]),
    ("use_residual=true,emb_size=256", ["emb_size=256 must equal projected_size=512"]),
])
def test_range_checks(hpconfig, fragments):
    _raises(hpconfig, *fragments)


def test_full_softmax_training_is_allowed():
    # f-lm trains with the full softmax when num_sampled=0.
    assert HParams.parse("num_sampled=0").num_sampled == 0


def test_constructor_checks_types():
    with pytest.raises(ValueError, match="hparam 'num_layers' expects an int, got True"):
        HParams(num_layers=True)
    with pytest.raises(ValueError, match="hparam 'emb_size' expects an int, got '512'"):
        HParams(emb_size="512")
    with pytest.raises(ValueError, match="hparam 'use_residual' expects a bool, got 1"):
        HParams(use_residual=1)
    with pytest.raises(ValueError, match="hparam 'num_of_groups' expects an int or a non-empty"):
        HParams(num_layers=2, num_of_groups=[4, 8.0])
    assert HParams(learning_rate=1).learning_rate == 1.0
    assert HParams(num_layers=2, num_of_groups=[4, 8]).num_of_groups == (4, 8)


def test_hpconfig_must_be_a_string():
    with pytest.raises(ValueError, match="hpconfig must be a string"):
        HParams().override({"num_layers": 2})


@pytest.mark.parametrize("name, extra, cell_type, groups", [
    ("BIGLSTM", {}, "lstmp", [0, 0]),
    ("BIG_F512", {"fact_size": 512}, "flstm", [0, 0]),
    ("BIG_G2", {"num_of_groups": 2}, "glstm", [2, 2]),
    ("BIG_G4", {"num_of_groups": 4}, "glstm", [4, 4]),
    ("BIG_G8", {"num_of_groups": 8}, "glstm", [8, 8]),
    ("BIG_G4_G8", {"num_of_groups": (4, 8)}, "glstm", [4, 8]),
])
def test_presets_are_the_papers_settings(name, extra, cell_type, groups):
    hps = HParams.from_preset(name)
    assert hps == HParams(**{**PAPER, **extra})
    assert hps.cell_type == cell_type
    assert [hps.groups_for_layer(i) for i in range(2)] == groups


def test_preset_names():
    assert set(PRESETS) == {"BIGLSTM", "BIG_F512", "BIG_G2", "BIG_G4", "BIG_G8", "BIG_G4_G8"}


def test_preset_with_overrides():
    hps = HParams.from_preset("BIG_G4", "num_gpus=1,batch_size=32")
    assert hps.num_gpus == 1 and hps.batch_size == 32 and hps.num_of_groups == 4


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError) as error:
        HParams.from_preset("big_g4")
    message = str(error.value)
    assert "Unknown preset 'big_g4' (did you mean 'BIG_G4'?)" in message
    for name in PRESETS:
        assert name in message


def test_dict_and_json_round_trip():
    hps = HParams.from_preset("BIG_G4_G8")
    values = json.loads(hps.to_json())
    assert values["num_of_groups"] == [4, 8]
    assert values == hps.to_dict()
    assert HParams.from_dict(values) == hps


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="Unknown hparam 'num_layer' \\(did you mean 'num_layers'\\?\\)"):
        HParams.from_dict({"num_layer": 2})
