"""Black-box rewards: failure isolation, the call budget, targets (one per sample or all at once), plugins, reward
names and the tensor scorer."""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rgdm.algorithms.base import score_data_rows
from rgdm.batch import Batch, Shard
from rgdm.engine.distributed import DataParallelContext
from rgdm.rewards import (
    BlackBoxReward,
    BudgetExhausted,
    InProcess,
    Reward,
    RewardCounter,
    RewardPluginError,
    RewardResult,
    Scorer,
    WorkerPool,
    load_reward_function,
    resolve_reward,
)
from rgdm.rewards.base import accepts_targets

# --------------------------------------------------------------------------------------------------
# failure isolation


class Recorder:
    """A reward that records the batches it is called with."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.batches: list[list[Any]] = []

    def __call__(self, samples: Sequence[Any]) -> Any:
        self.batches.append(list(samples))
        return self.fn(samples)


def raise_on_negative(samples: Sequence[float]) -> list[float]:
    if any(s < 0 for s in samples):
        raise RuntimeError("negative sample")
    return [2.0 * s for s in samples]


def test_exceptions_are_retried_one_by_one_and_only_culprits_fail() -> None:
    fn = Recorder(raise_on_negative)
    counter = RewardCounter()
    reward = BlackBoxReward(fn, name="neg", floor=-5.0, counter=counter)
    result = reward([1.0, -1.0, 2.0, -3.0, 4.0])
    assert isinstance(result, RewardResult)
    assert result.valid.tolist() == [True, False, True, False, True]
    assert result.values.tolist() == [2.0, -5.0, 4.0, -5.0, 8.0]
    assert result.values.dtype == torch.float32
    assert result.valid.dtype == torch.bool
    assert counter.failures["exception"] == 2
    assert counter.invalid == 2
    assert counter.calls == 5  # charged once per sample, retries are free
    assert fn.batches[0] == [1.0, -1.0, 2.0, -3.0, 4.0]
    assert fn.batches[1:] == [[1.0], [-1.0], [2.0], [-3.0], [4.0]]
    assert counter.as_dict() == {"reward_calls": 5, "reward_invalid": 2, "reward_fail_exception": 2}


def test_all_samples_raising_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    def always(samples: Sequence[Any]) -> list[float]:
        raise ZeroDivisionError("boom")

    reward = BlackBoxReward(always, name="always", floor=0.5)
    with caplog.at_level("WARNING", logger="rgdm.rewards"):
        result = reward(["a", "b", "c"])
    assert not result.valid.any()
    assert result.values.tolist() == [0.5, 0.5, 0.5]
    assert reward.counter.failures["exception"] == 3
    assert "ZeroDivisionError" in caplog.text


def test_single_sample_exception() -> None:
    reward = BlackBoxReward(raise_on_negative)
    result = reward([-1.0])
    assert result.valid.tolist() == [False]
    assert result.values.tolist() == [0.0]
    assert reward.counter.failures["exception"] == 1


def test_nan_and_inf_are_invalid_and_counted() -> None:
    reward = BlackBoxReward(lambda xs: [1.0, math.nan, -math.inf, math.inf, 3.0], floor=-1.0)
    result = reward(list(range(5)))
    assert result.valid.tolist() == [True, False, False, False, True]
    assert result.values.tolist() == [1.0, -1.0, -1.0, -1.0, 3.0]
    assert reward.counter.failures["nan"] == 1
    assert reward.counter.failures["inf"] == 2
    assert reward.counter.invalid == 3
    assert reward.counter.failures["exception"] == 0


def test_numpy_and_tensor_returns_are_accepted() -> None:
    def returning(out: Any) -> Any:
        return lambda samples: out

    for out in (np.array([0.25, 0.5]), torch.tensor([0.25, 0.5]), (0.25, 0.5), [np.float32(0.25), 0.5]):
        reward = BlackBoxReward(returning(out))
        result = reward(["x", "y"])
        assert result.valid.all()
        assert result.values.tolist() == [0.25, 0.5]
        assert not reward.counter.failures


@pytest.mark.parametrize("out", [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [], 7.0])
def test_wrong_length_is_invalid(out: Any) -> None:
    reward = BlackBoxReward(lambda xs: out, floor=-2.0)
    result = reward(["a", "b", "c"])
    assert not result.valid.any()
    assert result.values.tolist() == [-2.0] * 3
    assert reward.counter.failures["wrong_length"] == 3
    assert reward.counter.invalid == 3


@pytest.mark.parametrize("out", ["not a number", {"a": 1.0}, [object(), object()], ["x", "y"], [[1.0], [2.0, 3.0]]])
def test_non_numeric_is_bad_type(out: Any) -> None:
    reward = BlackBoxReward(lambda xs: out, floor=3.0)
    result = reward(["a", "b"])
    assert not result.valid.any()
    assert result.values.tolist() == [3.0, 3.0]
    assert reward.counter.failures["bad_type"] == 2
    assert set(reward.counter.failures) == {"bad_type"}


@pytest.mark.parametrize("n", [1, 3])
def test_none_return_is_bad_type(n: int) -> None:
    reward = BlackBoxReward(lambda xs: None)
    result = reward(list(range(n)))
    assert not result.valid.any()
    assert reward.counter.failures["bad_type"] == n


def test_reward_rejects_bad_construction_and_target_count() -> None:
    with pytest.raises(TypeError, match="not callable"):
        BlackBoxReward(3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        BlackBoxReward(raise_on_negative, floor=math.nan)
    reward = BlackBoxReward(lambda xs, ts: [0.0] * len(xs))
    with pytest.raises(ValueError, match="targets"):
        reward([1, 2], [0])


# --------------------------------------------------------------------------------------------------
# budget


def test_counter_charges_per_sample_and_enforces_limit() -> None:
    calls: list[int] = []

    def fn(samples: Sequence[Any]) -> list[float]:
        calls.append(len(samples))
        return [1.0] * len(samples)

    counter = RewardCounter(limit=10)
    reward = BlackBoxReward(fn, counter=counter)
    reward(list(range(4)))
    reward(list(range(6)))
    assert counter.calls == 10
    assert calls == [4, 6]
    with pytest.raises(BudgetExhausted, match="10"):
        reward([0])
    assert calls == [4, 6], "the reward must not run once the budget is exhausted"
    assert counter.calls == 10


def test_budget_refuses_a_request_that_would_exceed_it_before_calling() -> None:
    called = []
    counter = RewardCounter(limit=5)
    reward = BlackBoxReward(lambda xs: called.append(1) or [0.0] * len(xs), counter=counter)
    reward([1, 2, 3])
    with pytest.raises(BudgetExhausted):
        reward([1, 2, 3])  # 3 + 3 > 5
    assert counter.calls == 3
    assert called == [1]
    reward([1, 2])  # exactly reaches the limit
    assert counter.calls == 5


def test_counter_is_shared_and_unlimited_by_default() -> None:
    counter = RewardCounter()
    a = BlackBoxReward(lambda xs: [0.0] * len(xs), counter=counter)
    b = BlackBoxReward(lambda xs: [math.nan] * len(xs), counter=counter)
    a(list(range(1000)))
    b(list(range(3)))
    assert counter.calls == 1003
    assert counter.invalid == 3
    assert counter.as_dict() == {"reward_calls": 1003, "reward_invalid": 3, "reward_fail_nan": 3}


# --------------------------------------------------------------------------------------------------
# targets


def test_functions_with_targets_receive_them() -> None:
    seen: list[Any] = []

    def with_targets(samples: Sequence[float], targets: Sequence[int] | None) -> list[float]:
        seen.append(targets)
        return [float(s == t) for s, t in zip(samples, targets or [0] * len(samples), strict=True)]

    reward = BlackBoxReward(with_targets)
    assert accepts_targets(with_targets)
    result = reward([1, 2, 3], [1, 0, 3])
    assert result.values.tolist() == [1.0, 0.0, 1.0]
    reward([1, 2])
    assert seen == [[1, 0, 3], None]


def test_functions_without_targets_do_not_receive_them() -> None:
    seen: list[tuple[Any, ...]] = []

    def no_targets(*args: Any) -> list[float]:
        seen.append(args)
        return [0.0] * len(args[0])

    def plain(samples: Sequence[float]) -> list[float]:
        return [float(s) for s in samples]

    reward = BlackBoxReward(plain)
    assert not accepts_targets(plain)
    assert reward([1, 2], [9, 9]).values.tolist() == [1.0, 2.0]

    # a variadic function takes the targets positionally
    variadic = BlackBoxReward(no_targets)
    assert accepts_targets(no_targets)
    variadic([1, 2], [7, 8])
    assert seen == [([1, 2], [7, 8])]


def test_callable_objects_and_bound_methods() -> None:
    class Scored:
        def __call__(self, samples: Sequence[float], targets: Sequence[float] | None) -> list[float]:
            return [float(t) for t in targets or []]

        def single(self, samples: Sequence[float]) -> list[float]:
            return [1.0] * len(samples)

    obj = Scored()
    assert accepts_targets(obj)
    assert BlackBoxReward(obj)([0, 0], [4, 5]).values.tolist() == [4.0, 5.0]
    assert not accepts_targets(obj.single)


def test_targets_follow_their_sample_on_retry() -> None:
    def fn(samples: Sequence[float], targets: Sequence[float]) -> list[float]:
        if len(samples) > 1:
            raise RuntimeError("batch")
        if samples[0] < 0:
            raise RuntimeError("negative")
        return [samples[0] * targets[0]]

    reward = BlackBoxReward(fn)
    result = reward([1.0, -1.0, 3.0], [10.0, 20.0, 30.0])
    assert result.values.tolist() == [10.0, 0.0, 90.0]
    assert result.valid.tolist() == [True, False, True]
    assert reward.counter.failures["exception"] == 1


# --------------------------------------------------------------------------------------------------
# several targets at once


class Offset:
    """``sample - target``, with the fast path that scores every sample against every target in one call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], list[Any]]] = []

    def __call__(self, samples: Sequence[float], targets: Sequence[float]) -> list[float]:
        return [s - t for s, t in zip(samples, targets, strict=True)]

    def score_targets(self, samples: Sequence[float], targets: Sequence[float]) -> np.ndarray:
        self.calls.append((list(samples), list(targets)))
        if any(s < 0 for s in samples):
            raise RuntimeError("negative sample")
        return np.asarray(samples, dtype=float)[None, :] - np.asarray(targets, dtype=float)[:, None]


def test_score_targets_uses_the_fast_path_once_and_charges_every_pair() -> None:
    counter = RewardCounter()
    fn = Offset()
    result = BlackBoxReward(fn, counter=counter).score_targets([5.0, 6.0, 7.0], [1, 2])
    assert result.values.tolist() == [[4.0, 5.0, 6.0], [3.0, 4.0, 5.0]]
    assert result.valid.shape == (2, 3) and result.valid.all()
    assert fn.calls == [([5.0, 6.0, 7.0], [1, 2])]
    assert counter.calls == 6


def test_score_targets_without_a_fast_path_calls_once_per_target() -> None:
    seen: list[tuple[list[float], list[int]]] = []

    def product(samples: Sequence[float], targets: Sequence[int]) -> list[float]:
        seen.append((list(samples), list(targets)))
        return [s * t for s, t in zip(samples, targets, strict=True)]

    result = BlackBoxReward(product).score_targets([1.0, 2.0], [3, 4])
    assert result.values.tolist() == [[3.0, 6.0], [4.0, 8.0]]
    assert seen == [([1.0, 2.0], [3, 3]), ([1.0, 2.0], [4, 4])]


def test_score_targets_isolates_a_failing_sample_across_all_its_targets() -> None:
    counter = RewardCounter()
    fn = Offset()
    result = BlackBoxReward(fn, counter=counter, floor=-9.0).score_targets([5.0, -1.0, 7.0], [1, 2])
    assert result.values.tolist() == [[4.0, -9.0, 6.0], [3.0, -9.0, 5.0]]
    assert result.valid.tolist() == [[True, False, True], [True, False, True]]
    assert [samples for samples, _ in fn.calls] == [[5.0, -1.0, 7.0], [5.0], [-1.0], [7.0]]
    assert all(targets == [1, 2] for _, targets in fn.calls), "every retry keeps every target"
    assert counter.failures["exception"] == 2 and counter.invalid == 2


@pytest.mark.parametrize("out", [np.zeros((3, 2)), np.zeros(6), np.zeros((1, 3))])
def test_score_targets_of_the_wrong_shape_is_invalid(out: np.ndarray) -> None:
    class Wrong:
        def __call__(self, samples: Sequence[Any], targets: Sequence[Any]) -> list[float]:
            return [0.0] * len(samples)

        def score_targets(self, samples: Sequence[Any], targets: Sequence[Any]) -> np.ndarray:
            return out

    reward = BlackBoxReward(Wrong(), floor=-1.0)
    result = reward.score_targets([1, 2, 3], [0, 1])
    assert not result.valid.any() and result.values.tolist() == [[-1.0] * 3] * 2
    assert reward.counter.failures["wrong_length"] == 6


def test_score_targets_is_refused_beyond_the_budget_before_calling() -> None:
    fn = Offset()
    counter = RewardCounter(limit=5)
    with pytest.raises(BudgetExhausted):
        BlackBoxReward(fn, counter=counter).score_targets([1.0, 2.0, 3.0], [0, 1])
    assert fn.calls == [] and counter.calls == 0


def test_scorer_score_targets_decodes_once() -> None:
    decoded: list[torch.Tensor] = []

    def decode(x: torch.Tensor, mask: torch.Tensor | None) -> list[float]:
        decoded.append(x)
        return [float(row.sum()) for row in x]

    counter = RewardCounter()
    scorer = Scorer(BlackBoxReward(Offset(), counter=counter), decode, counter)
    result = scorer.score_targets(torch.tensor([[1.0, 1.0], [2.0, 3.0]]), None, [0, 2, 4])
    assert result.values.tolist() == [[2.0, 5.0], [0.0, 3.0], [-2.0, 1.0]]
    assert len(decoded) == 1 and counter.calls == 6


def test_data_rows_are_scored_against_every_target_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 of 2 scores only its rows, for every target at once, charges the global calls, and gathers
    the other rank's values along the rows."""
    decoded: list[list[float]] = []

    def decode(x: torch.Tensor, mask: torch.Tensor | None) -> list[float]:
        decoded.append(x[:, 0].tolist())
        return x[:, 0].tolist()

    def gather(parts: list[Any], own: torch.Tensor) -> None:
        parts[:] = [torch.full((own.shape[0], 3), -1.0), own]

    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    counter, ledger = RewardCounter(), RewardCounter(limit=10)
    data = Batch(torch.arange(5.0)[:, None])
    ctx = DataParallelContext(model=None, ema=None, reference=None, data=data, batch_size=1, prior=None,
                              scorer=Scorer(BlackBoxReward(Offset(), counter=counter), decode, counter),
                              targets=[0, 10], shard=Shard(rank=1, world=2), ledger=ledger)
    rows, rewards = score_data_rows(ctx, "test", None, torch.Generator().manual_seed(0))
    own = data.x[rows[3:], 0]
    assert decoded == [own.tolist()], "rank 1 decodes its own rows (3 and 4 of 5), once"
    assert rewards.shape == (2, 5) and (rewards[:, :3] == -1).all()
    assert rewards[:, 3:].tolist() == [own.tolist(), (own - 10).tolist()]
    assert ledger.calls == 10 and counter.calls == 4


# --------------------------------------------------------------------------------------------------
# registered rewards, parametrised rewards and executors


def double(samples: Sequence[float]) -> list[float]:
    return [2.0 * s for s in samples]


def above(threshold: str) -> Any:
    return lambda samples: [float(s > float(threshold)) for s in samples]


NAMED = {"double": Reward(double, "twice the sample", max_value=2.0),
         "above": Reward(None, "1 above the threshold, else 0", max_value=1.0, parse=above)}


def test_a_registered_reward_is_found_by_name() -> None:
    assert resolve_reward("double", NAMED) is NAMED["double"]


def test_a_parametrised_reward_takes_everything_after_the_first_colon() -> None:
    bound = resolve_reward("above:0.5", NAMED)
    assert bound.fn is not None and bound.fn([0.0, 1.0]) == [0.0, 1.0]
    assert bound.parse is None and bound.max_value == 1.0 and bound.description.endswith(": 0.5")
    seen: list[str] = []
    family = {"pattern": Reward(None, "a pattern", parse=lambda arg: seen.append(arg) or double)}
    resolve_reward("pattern:[#6]:[#6]", family)
    assert seen == ["[#6]:[#6]"]


@pytest.mark.parametrize(("name", "message"), [
    ("above", r"'above' needs an argument: above:ARG"),
    ("above:", r"'above' needs an argument"),
    ("double:3", r"'double' takes no argument"),
    ("duoble", r"unknown reward 'duoble' \(did you mean 'double'\?\); use one of above:ARG, double, or a plugin"),
])
def test_reward_names_that_do_not_fit_say_how_to_fix_them(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_reward(name, NAMED)


def test_a_name_with_a_colon_and_no_registered_head_is_a_plugin(plugin_file: Path) -> None:
    reward = resolve_reward(f"{plugin_file}:score", NAMED)
    assert reward.fn is not None and reward.fn([1, 2]) == [1.0, 2.0] and reward.max_value is None


def test_a_reward_spec_has_a_function_or_a_parser() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Reward(None, "nothing")
    with pytest.raises(ValueError, match="exactly one"):
        Reward(double, "both", parse=above)


def test_workers_and_timeout_mean_a_worker_pool_and_an_executor_is_injected_alone() -> None:
    assert isinstance(BlackBoxReward(double).executor, InProcess)
    pooled = BlackBoxReward(double, workers=2)
    timed = BlackBoxReward(double, timeout=5.0)
    try:
        assert isinstance(pooled.executor, WorkerPool) and pooled.executor.workers == 2
        assert isinstance(timed.executor, WorkerPool) and (timed.executor.workers, timed.executor.timeout) == (1, 5.0)
    finally:
        pooled.close()
        timed.close()
    with pytest.raises(ValueError, match="either an executor or workers"):
        BlackBoxReward(double, workers=2, executor=InProcess())


def test_an_executor_serves_one_reward() -> None:
    executor = InProcess()
    BlackBoxReward(double, executor=executor)
    with pytest.raises(RuntimeError, match="one executor per reward"):
        BlackBoxReward(Offset(), executor=executor)


# --------------------------------------------------------------------------------------------------
# plugins


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


PLUGIN = """
    import math

    THRESHOLD = 0.5

    def score(samples):
        return [float(s) for s in samples]

    def score_targets(samples, targets):
        return [float(s) - float(t) for s, t in zip(samples, targets)]

    def too_many(samples, targets, extra):
        return [0.0 for _ in samples]

    def no_args():
        return []

    class Rewarder:
        def __call__(self, samples):
            return [1.0 for _ in samples]

    rewarder = Rewarder()
"""


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    return write(tmp_path / "my_reward.py", PLUGIN)


@pytest.fixture
def clean_modules() -> Iterator[list[str]]:
    """Names of modules a test imports; removed from sys.modules afterwards."""
    names: list[str] = []
    yield names
    for name in list(sys.modules):
        if any(name == n or name.startswith(n + ".") for n in names):
            del sys.modules[name]


def test_load_from_file(plugin_file: Path) -> None:
    fn = load_reward_function(f"{plugin_file}:score")
    assert fn([1, 2.5]) == [1.0, 2.5]
    fn_t = load_reward_function(f"{plugin_file}:score_targets")
    reward = BlackBoxReward(fn_t)
    assert accepts_targets(fn_t)
    assert reward([3, 4], [1, 1]).values.tolist() == [2.0, 3.0]


def test_load_from_relative_file(plugin_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(plugin_file.parent)
    assert load_reward_function("my_reward.py:score")([2]) == [2.0]
    assert load_reward_function("./my_reward.py:score")([3]) == [3.0]


def test_load_from_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_modules: list[str]
) -> None:
    write(tmp_path / "rgdm_test_pkg" / "__init__.py", "")
    write(tmp_path / "rgdm_test_pkg" / "scoring.py", PLUGIN)
    write(tmp_path / "rgdm_test_flat.py", PLUGIN)
    clean_modules += ["rgdm_test_pkg", "rgdm_test_flat"]
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_reward_function("rgdm_test_pkg.scoring:score")([4]) == [4.0]
    assert load_reward_function("rgdm_test_flat:score_targets")([4], [1]) == [3.0]
    assert load_reward_function("rgdm_test_flat:rewarder")([0, 0]) == [1.0, 1.0]
    # a class is not a reward: its signature is its constructor's
    with pytest.raises(RewardPluginError, match="signature"):
        load_reward_function("rgdm_test_flat:Rewarder")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.py"
    with pytest.raises(RewardPluginError, match="does not exist") as info:
        load_reward_function(f"{missing}:score")
    assert "nope.py" in str(info.value)


def test_missing_module() -> None:
    with pytest.raises(RewardPluginError, match="importing module 'rgdm_no_such_module_xyz'"):
        load_reward_function("rgdm_no_such_module_xyz:score")


def test_missing_function_lists_what_the_file_defines(plugin_file: Path) -> None:
    with pytest.raises(RewardPluginError, match="no function 'scor'") as info:
        load_reward_function(f"{plugin_file}:scor")
    message = str(info.value)
    for name in ("score", "score_targets", "Rewarder", "rewarder"):
        assert name in message
    assert "THRESHOLD" not in message  # not callable


def test_non_callable_attribute(plugin_file: Path) -> None:
    with pytest.raises(RewardPluginError, match="float, not a function"):
        load_reward_function(f"{plugin_file}:THRESHOLD")


@pytest.mark.parametrize("spec", ["my_reward.py", "score", "", ":score", "my_reward.py:"])
def test_spec_without_target_or_function(spec: str) -> None:
    with pytest.raises(RewardPluginError, match="plugin spec") as info:
        load_reward_function(spec)
    assert "path/to/file.py:function" in str(info.value)


@pytest.mark.parametrize(
    ("source", "kind"),
    [("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
     ("def broken(:\n    pass\n", "SyntaxError"),
     ("import rgdm_definitely_not_installed\n", "ModuleNotFoundError")],
)
def test_file_that_raises_on_import(tmp_path: Path, source: str, kind: str) -> None:
    path = write(tmp_path / "bad.py", source)
    before = set(sys.modules)
    with pytest.raises(RewardPluginError, match="importing reward file") as info:
        load_reward_function(f"{path}:score")
    assert kind in str(info.value)
    assert set(sys.modules) - before == set(), "a failed plugin must not stay in sys.modules"


def test_module_that_raises_on_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_modules: list[str]
) -> None:
    write(tmp_path / "rgdm_test_broken_mod.py", "raise RuntimeError('no GPU here')\n")
    clean_modules.append("rgdm_test_broken_mod")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardPluginError, match="no GPU here"):
        load_reward_function("rgdm_test_broken_mod:score")


@pytest.mark.parametrize("name", ["too_many", "no_args"])
def test_wrong_signature(plugin_file: Path, name: str) -> None:
    with pytest.raises(RewardPluginError, match=r"fn\(samples\) or fn\(samples, targets\)") as info:
        load_reward_function(f"{plugin_file}:{name}")
    assert name in str(info.value)


def test_plugin_error_is_a_value_error() -> None:
    assert issubclass(RewardPluginError, ValueError)


# --------------------------------------------------------------------------------------------------
# scorer


def test_scorer_decodes_and_passes_targets() -> None:
    decoded: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    received: list[tuple[list[Any], Any]] = []

    def decode(x: torch.Tensor, mask: torch.Tensor | None) -> list[float]:
        decoded.append((x, mask))
        if mask is not None:
            x = x * mask.unsqueeze(-1)
        return [float(row.sum()) for row in x]

    def fn(samples: list[float], targets: list[int] | None) -> list[float]:
        received.append((samples, targets))
        return [-abs(s - t) for s, t in zip(samples, targets or [0] * len(samples), strict=True)]

    counter = RewardCounter()
    scorer = Scorer(BlackBoxReward(fn, counter=counter), decode, counter)
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.5, 0.5], [9.0, 9.0]]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    cond = torch.tensor([10, 1])
    result = scorer(x, mask, cond)
    assert result.values.tolist() == [0.0, 0.0]
    assert result.valid.all()
    assert received == [([10.0, 1.0], [10, 1])]
    assert not decoded[0][0].requires_grad
    assert decoded[0][1] is not None and torch.equal(decoded[0][1], mask)
    assert counter.calls == 2

    scorer(x[:1])
    assert received[-1] == ([10.0], None)
    assert decoded[-1][1] is None
    assert counter.calls == 3


def test_scorer_differentiable_charges_budget() -> None:
    counter = RewardCounter(limit=3)
    black_box = Scorer(BlackBoxReward(lambda xs: [0.0] * len(xs), counter=counter),
                       lambda x, m: list(x), counter)
    with pytest.raises(ValueError, match="no differentiable form"):
        black_box.differentiable(torch.zeros(2, 2))

    smooth = Scorer(black_box.reward, black_box.decode, counter,
                    gradient_fn=lambda x, c: -(x**2).sum(1))
    x = torch.ones(2, 2, requires_grad=True)
    values = smooth.differentiable(x)
    values.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, -2 * torch.ones(2, 2))
    assert counter.calls == 2
    with pytest.raises(BudgetExhausted):
        smooth.differentiable(x)
