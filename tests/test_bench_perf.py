"""``rgdm bench perf`` at tiny settings: the JSON it writes, its ratios, its memory fit and its reward counting.

Nothing here asserts on speed: the tests run on shared machines.
"""

import json
import math

import numpy as np
import pytest

from rgdm.benchmarks.perf import TARGETS, linear_fit, markdown_table, measure_reward_throughput, run_perf_benchmark

REPEATS = 2


@pytest.fixture(scope="module")
def toy_result():
    return run_perf_benchmark(quick=True, domains=["toy"], steps=(6, 3), batch_size=8, memory_batches=(16, 32),
                              train_batch=8, repeats=REPEATS, warmup=1)


def test_result_is_strict_json_with_machine_and_settings(toy_result):
    text = json.dumps(toy_result, allow_nan=False)
    assert json.loads(text)["suite"] == "perf"
    machine = toy_result["machine"]
    assert {"platform", "cpu_count", "torch", "torch_threads", "device"} <= machine.keys()
    assert machine["device"] == "cpu"
    assert toy_result["acceleration"]["bf16"] == {"requested": False, "used": False}
    assert toy_result["reward_throughput"]["skipped"]  # molecules were not measured
    toy = toy_result["domains"]["toy"]
    assert toy["model"]["weights"] == "shipped checkpoint toy-ring-pretrained"
    assert [(s["sampler"], s["steps"], s["eta"]) for s in toy["sampling"]] == [("ancestral", 6, 1.0), ("ddim", 3, 0.0)]
    for entry in toy["sampling"]:
        assert entry["batch_size"] == 8 and entry["repeats"] == REPEATS and entry["warmup"] == 1
        assert len(entry["times_s"]) == len(entry["bare_forward_times_s"]) == REPEATS
        assert entry["median_s"] > 0 and entry["samples_per_s"] > 0 and entry["peak_memory_mb"] >= 0
        assert entry["network_evaluations_per_sample"] == entry["steps"]
    guided = toy["guided_sampling"]
    assert guided["candidates"] == 8 and guided["steps"] == 3 and guided["reward"] == "region"
    assert guided["reward_calls_per_sample"] > 0
    training = toy["training"]
    for mode in ("rewards_excluded", "rewards_included"):
        assert set(training[mode]) == {"plain", "stepwise_k8", "ddpo"}
        for step in training[mode].values():
            assert step["batch_size"] == 8 and len(step["times_s"]) == REPEATS and step["median_s"] > 0
    assert training["rewards_excluded"]["stepwise_k8"]["reward_calls_per_step"] == 8 * 8
    assert training["rewards_excluded"]["plain"]["reward_calls_per_step"] == 0
    assert training["rewards_excluded"]["ddpo"]["steps_per_repeat"] > 1  # amortised over a refresh


def test_ratios_are_positive_with_targets_and_met_flags(toy_result):
    assert set(toy_result["ratios"]) == set(TARGETS)
    for name, entry in toy_result["ratios"].items():
        assert entry["target"] == TARGETS[name] and entry["definition"]
        toy = entry["domains"]["toy"]
        assert math.isfinite(toy["value"]) and toy["value"] > 0
        assert isinstance(toy["met"], bool) and toy["met"] == (toy["value"] <= entry["target"])


def test_memory_points_and_linear_fit_are_reported(toy_result):
    memory = toy_result["domains"]["toy"]["memory"]
    assert memory["method"] and memory["steps"] == 3
    assert [p["batch_size"] for p in memory["points"]] == [8, 16, 32]  # the sampling batch joins the sweep
    assert all(p["peak_mb"] >= 0 for p in memory["points"])
    fit = memory["fit"]
    assert set(fit) == {"points", "slope_mb_per_sample", "intercept_mb", "r2", "linear"}
    assert fit["points"] == 3 and fit["linear"] in (True, False, None)
    assert memory["at_most_linear"] in (True, False)


def test_linear_fit_recognises_lines_and_curves():
    line = linear_fit([1, 2, 4], [12.0, 14.0, 18.0])
    assert line["slope_mb_per_sample"] == pytest.approx(2.0) and line["intercept_mb"] == pytest.approx(10.0)
    assert line["r2"] == pytest.approx(1.0) and line["linear"] is True
    assert linear_fit([1, 2, 4, 8], [1.0, 4.0, 16.0, 64.0])["linear"] is False
    assert linear_fit([1, 2], [3.0, 5.0])["linear"] is None  # two points always lie on a line
    assert linear_fit([1, 2, 4], [5.0, 5.0, 5.0])["r2"] is None  # nothing to explain


@pytest.mark.parametrize("workers", [0, 1])
def test_reward_throughput_counts_every_call(workers):
    seen = []

    def reward(samples):
        seen.append(len(samples))
        return np.ones(len(samples))

    samples = np.zeros((10, 2))
    run = measure_reward_throughput(reward, samples, workers, repeats=3, warmup=1)
    assert run["reward_calls"] == 30 and run["samples_per_call"] == 10 and run["invalid"] == 0
    assert len(run["times_s"]) == 3 and run["calls_per_s"] > 0
    if workers == 0:  # in-process: the function itself saw the warm-up and the timed calls
        assert seen == [10] * 4


def test_markdown_table_lists_every_measurement(toy_result):
    table = markdown_table(toy_result)
    for text in ("| toy | ancestral | 6 | 8 |", "| toy | stepwise_k8 | 8 |", "| sampling_overhead | ≤ 1.2 |",
                 "| guided_k8_vs_unguided | ≤ 2.5 |", "| stepwise_k8_vs_plain_step | ≤ 3.0 |"):
        assert text in table


def test_unknown_domain_is_an_error():
    with pytest.raises(ValueError, match="unknown perf domains"):
        run_perf_benchmark(domains=["toy", "proteins"])


def test_guided_sampling_and_training_steps_carry_their_profiles(toy_result):
    toy = toy_result["domains"]["toy"]
    profile = toy["guided_sampling"]["profile"]
    for run in ("unguided", "guided"):
        split = profile[run]
        assert split["network_s"] > 0 and split["total_s"] >= split["network_s"] + split["reward_s"]
    assert profile["unguided"]["reward_s"] == 0 and profile["guided"]["reward_s"] > 0
    assert math.isfinite(profile["network_ratio"]) and profile["network_ratio"] > 0  # no timing claims at this size
    steps = toy["training"]["rewards_excluded"]
    assert steps["plain"]["profile_per_step"]["forward_no_grad_s"] == 0
    assert steps["stepwise_k8"]["profile_per_step"]["forward_no_grad_s"] > 0, "reference and values run without grad"
    assert all(step["profile_per_step"]["forward_with_grad_s"] > 0 for step in steps.values())


def test_memory_that_plateaus_grows_at_most_linearly_and_memory_that_bends_up_does_not():
    from rgdm.benchmarks.perf import grows_at_most_linearly

    assert grows_at_most_linearly([1000, 4000, 16000], [4.2, 16.3, 65.5])  # linear
    assert grows_at_most_linearly([1, 2, 4], [17.6, 20.8, 21.7])  # bounded by chunked calls
    assert not grows_at_most_linearly([1, 2, 4], [10.0, 25.0, 80.0])  # super-linear


def test_operator_profile_lists_the_costliest_operators_of_both_slow_paths(tmp_path):
    from rgdm.cli import main

    assert main(["-q", "bench", "profile", "--domains", "toy", "--json", str(tmp_path / "profile.json")]) == 0
    result = json.loads((tmp_path / "profile.json").read_text())
    paths = result["domains"]["toy"]
    assert set(paths) == {"stepwise_k8_step", "guided_k8_sampling"}
    for entry in paths.values():
        shares = [op["share"] for op in entry["top_operators"]]
        assert entry["self_cpu_ms"] > 0 and 0 < sum(shares) <= 1 + 1e-9 and shares == sorted(shares, reverse=True)
    assert "| operator | calls |" in (tmp_path / "profile.md").read_text()
