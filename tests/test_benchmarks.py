"""The bookkeeping of the benchmark scripts: ratios, scaling, profile intervals,
and running models concurrently one per GPU."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from tests.subprocesses import python_env  # noqa: E402

import equal_time  # noqa: E402
import lm_step  # noqa: E402
import machine_info  # noqa: E402
import profile_lm_step  # noqa: E402


def test_command_line_records_the_xla_and_nccl_settings(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/lm_step.py", "--num_gpus", "4"])
    for key in list(os.environ):
        if key == "XLA_FLAGS" or key.startswith("NCCL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=false")
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    monkeypatch.setenv("NCCL_VERSION", "2.99")  # describes NCCL, changes nothing
    monkeypatch.setenv("OTHER", "1")
    assert machine_info.command_line("jax") == (
        "KERAS_BACKEND=jax NCCL_NVLS_ENABLE='0' XLA_FLAGS='--xla_gpu_enable_triton_gemm=false' "
        "python benchmarks/lm_step.py --num_gpus 4")


def test_union_of_intervals_equals_counting_covered_ticks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        starts = rng.integers(0, 200, size=rng.integers(0, 12))
        intervals = [(int(s), int(s + rng.integers(0, 40))) for s in starts]
        covered = np.zeros(300, bool)
        for start, end in intervals:
            covered[start:end] = True
        assert profile_lm_step.union_ns(intervals) == covered.sum()


def test_kernel_scope_is_the_model_part_of_the_jax_name():
    scope = profile_lm_step.scope_of
    assert scope({"name": "jit(_train_step)/transpose(jvp(language_model))/rnn_1/while"}) == "rnn_1"
    assert scope({"name": "jit(_train_step)/jvp(language_model)/rnn_0/dot_general"}) == "rnn_0"
    assert scope({"name": "jit(_train_step)/shard_map/transpose(jvp(language_model))/rnn_0/x"}) == "rnn_0"
    assert scope({"name": "jit(_train_step)/top_k"}) == "top_k"
    assert scope({}) == "unattributed"


def test_collective_kind_is_the_nccl_kernels_operation():
    kind = profile_lm_step.collective_kind
    assert kind("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)") == "AllGather"
    assert kind("ncclDevKernel_ReduceScatter_Sum_f32_RING_LL(x)") == "ReduceScatter"
    assert kind("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)") == "SendRecv"
    assert kind("ncclKernel_Other(x)") == "ncclKernel_Other"


def test_exposed_spans_are_the_collectives_parts_no_compute_kernel_covers():
    ms = 1_000_000

    def step(origin):  # compute 0-1 ms, all-gather 0.5-2, compute 1.8-3, send/recv 3-3.5
        return [("gemm", origin, origin + ms, {}),
                ("ncclDevKernel_AllGather_RING_LL(x)", origin + ms // 2, origin + 2 * ms, {}),
                ("gemm", origin + 1.8 * ms, origin + 3 * ms, {}),
                ("ncclDevKernel_SendRecv(x)", origin + 3 * ms, origin + 3.5 * ms, {})]

    # The second step's spans, timed from its first kernel.
    spans = profile_lm_step.exposed_in_one_step(step(0) + step(10 * ms), steps=2)
    assert spans == [(1.0, 0.8, "AllGather"), (3.0, 0.5, "SendRecv")]
    assert profile_lm_step.exposed_in_one_step(step(0) + step(10 * ms), steps=2, min_ms=0.6) == [
        (1.0, 0.8, "AllGather")]


def _run_benchmark(script, *args, timeout=600, **extra_env):
    """Runs benchmarks/`script` with `args` on the JAX backend, in a fresh
    interpreter from the repository root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=python_env("jax", **extra_env))


def _row(model, num_gpus, words_per_s, vocab_updates="sparse", unroll=False, lstm_update=None):
    # Waited-for steps: a fixed 10 words/s slower, so their scaling differs.
    lstm_update = lstm_update or ("sharded" if num_gpus > 1 else "replicated")
    return {"model": model, "num_gpus": num_gpus, "vocab_updates": vocab_updates, "unroll": unroll,
            "lstm_update": lstm_update, "words_per_s": words_per_s, "words_per_s_waited": words_per_s - 10}


def test_lm_step_ratios_are_per_gpu_count_and_scaling_per_model():
    rows = [_row("BIGLSTM", 1, 100.0), _row("BIG_G4", 1, 150.0),
            _row("BIGLSTM", 4, 320.0), _row("BIG_G4", 4, 400.0),
            _row("BIGLSTM", 4, 50.0, "dense"),
            _row("BIGLSTM", 1, 200.0, unroll=True), _row("BIG_G4", 4, 500.0, unroll=True)]
    lm_step._compare(rows)
    assert [r["ratio_vs_biglstm"] for r in rows] == [1.0, 1.5, 1.0, 1.25, 1.0, 1.0, None]
    # The strongest baseline: BIGLSTM at 1 GPU is 200 words/s unrolled.
    assert [r["ratio_vs_fastest_biglstm"] for r in rows] == [0.5, 0.75, 1.0, 1.25, 1.0, 1.0, 1.562]
    assert [r["scaling_vs_1_gpu"] for r in rows] == [
        None, None, 3.2, pytest.approx(400 / 150, abs=1e-3), None, None, None]
    assert [r["scaling_vs_1_gpu_waited"] for r in rows] == [
        None, None, round(310 / 90, 3), round(390 / 140, 3), None, None, None]
    assert rows[1]["paper_ratio_vs_biglstm"] == round(56_000 / 33_800, 3)


def test_lm_step_ratios_are_per_lstm_update_and_scaling_over_the_one_gpu_step():
    rows = [_row("BIGLSTM", 1, 100.0), _row("BIG_G4", 1, 150.0),
            _row("BIGLSTM", 4, 320.0), _row("BIGLSTM", 4, 300.0, lstm_update="replicated"),
            _row("BIG_G4", 4, 480.0), _row("BIG_G4", 4, 510.0, lstm_update="replicated")]
    lm_step._compare(rows)
    # Each update's G4 over the same update's BIGLSTM...
    assert [r["ratio_vs_biglstm"] for r in rows] == [1.0, 1.5, 1.0, 1.0, 1.5, 1.7]
    # ...and over the fastest BIGLSTM of any update, the sharded one here.
    assert [r["ratio_vs_fastest_biglstm"] for r in rows] == [1.0, 1.5, 1.0, 0.938, 1.5, 1.594]
    # Both updates scale over the one-GPU step, which has nothing to shard.
    assert [r["scaling_vs_1_gpu"] for r in rows] == [None, None, 3.2, 3.0, 3.2, 3.4]


@pytest.mark.tf_backend  # runs lm_step.py on JAX in a subprocess: once is enough
def test_lm_step_times_looped_and_unrolled_layers(tmp_path):
    """lm_step.py end to end at a tiny size, BIGLSTM not first: the layers
    are built as each row says, and every ratio is over the right BIGLSTM."""
    out = tmp_path / "lm_step.json"
    run = _run_benchmark(
        "lm_step.py", "--models", "BIG_F512,BIGLSTM",
        "--unroll", "false,true", "--vocab_size", "500", "--batch_size", "2", "--warmup", "0",
        "--windows", "1", "--steps", "1", "--out", str(out),
        "--hparams", "emb_size=8,projected_size=8,state_size=16,num_sampled=16,fact_size=4,num_steps=3")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["unroll"]) for r in rows] == [
        ("BIG_F512", False), ("BIG_F512", True), ("BIGLSTM", False), ("BIGLSTM", True)]
    looped, unrolled = rows[2]["words_per_s"], rows[3]["words_per_s"]
    assert rows[0]["ratio_vs_biglstm"] == round(rows[0]["words_per_s"] / looped, 3)
    assert rows[1]["ratio_vs_biglstm"] == round(rows[1]["words_per_s"] / unrolled, 3)
    assert rows[0]["ratio_vs_fastest_biglstm"] == round(rows[0]["words_per_s"] / max(looped, unrolled), 3)
    assert "over the fastest BIGLSTM of the same GPU count, final" in run.stdout


@pytest.mark.tf_backend  # runs profile_lm_step.py on JAX in a subprocess: once is enough
def test_profile_lm_step_writes_its_summary_and_the_compiled_steps_hlo(tmp_path):
    """profile_lm_step.py end to end at a tiny size (on the CPU there are no
    GPU kernels to count): the summary names the model, and --dump_hlo
    writes the optimized HLO of that model's training step."""
    out, hlo = tmp_path / "profile.json", tmp_path / "step.hlo.txt"
    run = _run_benchmark(
        "profile_lm_step.py", "--model", "BIG_G4",
        "--vocab_size", "500", "--batch_size", "2", "--steps", "1", "--out", str(out),
        "--dump_hlo", str(hlo),
        "--hparams", "emb_size=8,projected_size=8,state_size=16,num_sampled=16,num_steps=3")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["model"] == "BIG_G4" and "--dump_hlo" in summary["command"]
    text = hlo.read_text()
    assert text.startswith("HloModule jit__train_step")
    # Optimized, not just lowered: the scheduled module with XLA's fusions.
    assert "is_scheduled=true" in text.splitlines()[0] and " fusion(" in text
    # This model's step: E is vocab × emb, and G4's grouped kernels hold 4
    # groups of (p/4) × (4n/4) blocks, used as stored: no per-step copy of
    # them in (gate, group) order (4 × 4 blocks of p/4 × n/4).
    assert "f32[500,8]" in text and "[4,2,16]" in text
    assert "[4,4,2,4]" not in text


@pytest.mark.tf_backend  # runs lm_step.py on JAX in a subprocess: once is enough
def test_lm_step_times_the_sharded_and_the_replicated_lstm_update(tmp_path):
    """lm_step.py end to end on two CPU devices: each model is built with
    each update the row names, and the ratios pair rows of one update."""
    out = tmp_path / "lm_step.json"
    run = _run_benchmark(
        "lm_step.py", "--models", "BIGLSTM,BIG_G2",
        "--num_gpus", "2", "--lstm_update", "sharded,replicated", "--vocab_size", "500",
        "--batch_size", "2", "--warmup", "0", "--windows", "1", "--steps", "1", "--out", str(out),
        "--hparams", "emb_size=8,projected_size=8,state_size=16,num_sampled=16,num_steps=3",
        # lm_step.py reads the devices before the first runner can ask for two.
        JAX_NUM_CPU_DEVICES="2")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["lstm_update"]) for r in rows] == [
        ("BIGLSTM", "sharded"), ("BIGLSTM", "replicated"), ("BIG_G2", "sharded"), ("BIG_G2", "replicated")]
    for g2, base in ((rows[2], rows[0]), (rows[3], rows[1])):
        assert g2["ratio_vs_biglstm"] == round(g2["words_per_s"] / base["words_per_s"], 3)
    assert "over the fastest BIGLSTM of the same GPU count, final" in run.stdout


def test_lm_step_rejects_an_unknown_lstm_update_before_timing_any():
    run = _run_benchmark("lm_step.py", "--lstm_update", "sharded,zero3", timeout=300)
    assert run.returncode == 2
    assert "--lstm_update takes sharded, replicated or sharded,replicated; got 'sharded,zero3'" in run.stderr
    assert "words/s" not in run.stdout


def test_lm_step_rejects_an_unknown_model_before_timing_any():
    run = _run_benchmark("lm_step.py", "--models", "BIGLSTM,G2", timeout=300)
    assert run.returncode == 2
    assert "unknown G2" in run.stderr and "BIG_G2" in run.stderr
    assert "words/s" not in run.stdout


def test_equal_time_ratios_are_over_lstmp():
    rows = [{"model": "F256", "heldout_perplexity": 26.0, "median_wps": 110.0, "steps": 1100},
            {"model": "LSTMP", "heldout_perplexity": 25.0, "median_wps": 100.0, "steps": 1000}]
    equal_time.add_ratios(rows)
    assert rows[0]["perplexity_vs_lstmp"] == 1.04
    assert rows[0]["wps_vs_lstmp"] == 1.1 and rows[0]["steps_vs_lstmp"] == 1.1
    assert rows[1]["perplexity_vs_lstmp"] == 1.0


def test_run_on_gpus_gives_each_command_one_gpu_and_at_most_one_command_per_gpu(tmp_path):
    # Each command records its GPU, then holds a lock file of that GPU for a
    # moment: a second command on a busy GPU would find the file there.
    script = (
        "import os, sys, time\n"
        "gpu = os.environ['CUDA_VISIBLE_DEVICES']\n"
        "lock = os.path.join(sys.argv[1], 'busy_' + gpu)\n"
        "os.close(os.open(lock, os.O_CREAT | os.O_EXCL))\n"  # fails if the GPU is busy
        "start = time.time()\n"
        "time.sleep(1.5)\n"
        "open(os.path.join(sys.argv[1], 'ran_' + sys.argv[2]), 'w').write(f'{gpu} {start} {time.time()}')\n"
        "os.remove(lock)\n"
    )
    commands = [[sys.executable, "-c", script, str(tmp_path), str(i)] for i in range(5)]
    assert equal_time.run_on_gpus(commands, ["0", "1"]) == {}
    runs = [(tmp_path / f"ran_{i}").read_text().split() for i in range(5)]
    assert {gpu for gpu, _, _ in runs} == {"0", "1"}
    # ... and the two GPUs did run commands at the same time.
    assert any(a[0] != b[0] and float(a[1]) < float(b[2]) and float(b[1]) < float(a[2])
               for a in runs for b in runs)


def test_run_on_gpus_names_a_failed_command_after_the_others_end(tmp_path):
    ok = [sys.executable, "-c", f"open({str(tmp_path / 'ok')!r}, 'w').close()"]
    bad = [sys.executable, "-c", "import sys; sys.exit(7)"]
    failed = equal_time.run_on_gpus([ok, bad], [None])
    assert list(failed) == [1] and failed[1].startswith("exit 7:") and "sys.exit(7)" in failed[1]
    assert (tmp_path / "ok").exists()


def test_equal_time_rejects_a_gpu_named_twice(tmp_path):
    with pytest.raises(ValueError, match="--gpus=0,0"):
        equal_time.gpu_list("0,0")
    assert equal_time.gpu_list(None) == [None] and equal_time.gpu_list("2,3") == ["2", "3"]
