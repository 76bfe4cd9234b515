"""ChrionSettings: every option checked by type, with a suggestion wherever one helps, however
the settings are made; the lane spelling shared by every module that reads lanes (issue #20)."""

import dataclasses
import math

import pytest

from torch_chrion.errors import OptionError
from torch_chrion.profile.devices import parse_lane as profile_parse_lane
from torch_chrion.runtime.lanes import parse_lane as runtime_parse_lane
from torch_chrion.settings import ChrionSettings, parse_lane


def test_misspelt_keyword_suggests_the_option():
    with pytest.raises(OptionError, match="unknown torch_chrion option 'objectiv'; did you mean 'objective'"):  # fmt: skip
        ChrionSettings(objectiv="memory")
    with pytest.raises(OptionError, match="did you mean 'profile_budget_s'"):
        dataclasses.replace(ChrionSettings(), profile_budget=3)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"profile_budget_s": "x"}, "profile_budget_s must be a positive, finite number, got 'x'"),
        ({"profile_budget_s": math.inf}, "profile_budget_s must be a positive, finite number"),
        ({"slo_ms": math.nan}, "slo_ms must be a positive, finite number"),
        ({"slo_ms": True}, "slo_ms must be a positive, finite number, got True"),
        ({"objective": "latncy"}, "got 'latncy'; did you mean 'latency'"),
        ({"granularity": "layers"}, "got 'layers'; did you mean 'layer'"),
        ({"recurrent_dtype": "bf16"}, "got 'bf16'; did you mean 'bfloat16'"),
        ({"cpu_threads": True}, "cpu_threads must be a positive integer or None, got True"),
        ({"cpu_threads": 2.0}, "cpu_threads must be a positive integer or None, got 2.0"),
        ({"profile_repeats": "10"}, "profile_repeats must be an integer >= 1, got '10'"),
        ({"seq_chunks": 1.5}, "seq_chunks must be an integer >= 1"),
        ({"strict": "yes"}, "strict must be True or False, got 'yes'"),
        ({"cuda_graphs": 1}, "cuda_graphs must be True or False, got 1"),
        ({"cache_dir": 3}, "cache_dir must be a path or None, got 3"),
        ({"devices": ["gpu:0"]}, "unknown lane 'gpu:0': a lane looks like"),
        ({"devices": []}, "devices must name at least one lane"),
    ],
)
def test_wrong_types_and_values_are_option_errors(options, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ChrionSettings.from_options(options)
    with pytest.raises(OptionError):
        ChrionSettings(**options)


def test_a_path_is_a_cache_dir(tmp_path):
    assert ChrionSettings(cache_dir=tmp_path).cache_dir == str(tmp_path)


@pytest.mark.parametrize(
    "lane", ["cpu", "cpu:3", "cuda", "cuda:1", "gpu", "cpu:", "CPU", " cpu", 7]
)
def test_every_reader_of_lanes_agrees(lane):
    """settings, the runtime and the profiler accept and refuse the same lane strings."""

    def accepted(parse):
        try:
            parse(lane)
        except OptionError as exc:
            return "needs CUDA" in str(exc) or "only" in str(exc)  # valid, absent here
        return True

    verdicts = {accepted(parse_lane), accepted(runtime_parse_lane), accepted(profile_parse_lane)}
    assert len(verdicts) == 1
    assert verdicts == {isinstance(lane, str) and lane.split(":")[0] in ("cpu", "cuda")
                        and lane.strip() == lane and not lane.endswith(":")}  # fmt: skip


def test_recurrent_dtype_is_part_of_the_plan_key():
    """A plan made for bfloat16 recurrent weights (another graph, other CPU costs) is not reused
    for float32, which stays the default."""
    bf16 = ChrionSettings(recurrent_dtype="bfloat16")
    assert ChrionSettings().recurrent_dtype == "float32"
    assert bf16.plan_key() != ChrionSettings().plan_key()


@pytest.mark.parametrize(
    "devices, seq_chunks, recorded, expected",
    [
        (("cpu:0", "cpu:1"), 1, None, "auto"),
        (("cpu",), 1, None, "auto"),
        (("cpu", "cuda:0"), 1, None, "layer"),
        (("cuda:0",), 1, None, "layer"),
        (("cpu:0", "cpu:1"), 3, None, "layer"),
        (("cpu:0", "cpu:1"), 1, "layer", "layer"),
        (("cpu", "cuda:0"), 1, "op", "op"),
    ],
)
def test_auto_granularity_follows_the_lanes_the_chunks_and_a_saved_plan(
    devices, seq_chunks, recorded, expected
):
    settings = ChrionSettings(seq_chunks=seq_chunks)
    assert settings.granularity == "auto"
    resolved = settings.resolve_granularity(devices, recorded)
    assert resolved == dataclasses.replace(settings, granularity=expected)


def test_a_granularity_asked_for_is_kept_whatever_the_lanes():
    for granularity in ("op", "layer"):
        settings = ChrionSettings(granularity=granularity)
        assert settings.resolve_granularity(("cpu:0", "cpu:1"), "op") is settings
        assert settings.resolve_granularity(("cpu", "cuda:0")) is settings
