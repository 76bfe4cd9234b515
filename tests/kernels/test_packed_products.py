"""chrion::dense and chrion::conv2d (csrc/kernels/dense.cpp, convolution.cpp): equal to aten's
product / convolution in float64 to float32 rounding, on each of their CPU paths (dense: the
recurrent kernels' panels, the weight packed once, with rows and output blocks split over the
threads, or ATen; conv2d: the direct kernel for few taps on AVX-512, oneDNN with the weight
reordered once for channels-last input, or ATen); the packed weight follows in-place writes and
rebinding; bad shapes are errors naming the argument."""

from __future__ import annotations

import threading

import pytest
import torch

from torch_chrion._extension import load
from torch_chrion.ops import ensure_loaded

# input rows of one pass over the weight's panels (recurrent::kChunkRows)
CHUNK_ROWS = 48


def dense(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    ensure_loaded()
    return torch.ops.chrion.dense(x, w, b)


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x.double() @ w.double()
    return (y if b is None else y + b.double()).float()


def assert_rounding_close(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b) -> None:
    """Within float32 rounding of a K-term sum of unit-scale products (aten's own float32 result
    is held to the same bound, so the bound is no looser than aten needs)."""
    expected = reference(x, w, b)
    atol = 4e-7 * x.shape[-1] ** 0.5 * 8
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=atol)
    aten = x @ w if b is None else x @ w + b
    torch.testing.assert_close(aten, expected, rtol=1e-5, atol=atol)


def packed(w: torch.Tensor) -> bool:
    return load("kernels").packed_weights_hold(w)


def packed_sizes(w: torch.Tensor) -> list[int] | None:
    return load("kernels").packed_weight_sizes(w)


# the input's leading shape: one row, a few, several passes over the panels in chunks of equal
# rows (100 rows: 34, 34, 32) that the threads share with the output blocks, none
SHAPES = {
    "1d": (),
    "one-row": (1,),
    "3d": (2, 5),
    "chunks": (2 * CHUNK_ROWS + 4,),
    "3d-chunks": (3, 50),
    "empty": (0,),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("outputs", [384, 500, 40], ids=["blocks", "ragged", "one-block"])
@pytest.mark.parametrize("case", list(SHAPES))
def test_dense_equals_the_product(bias, outputs, case):
    torch.manual_seed(0)
    k = 256
    lead = SHAPES[case]
    x = torch.randn(*lead, k)
    w = torch.randn(k, outputs)
    b = torch.randn(outputs) if bias else None
    y = dense(x, w, b)
    assert y.shape == (*lead, outputs)
    assert_rounding_close(y, x, w, b)
    # the panels ran: always within a chunk of rows; beyond one, only where padding the
    # outputs to whole blocks adds at most a quarter (40 outputs pad to 64: ATen)
    rows = x.numel() // k
    assert packed(w) == (rows <= CHUNK_ROWS or outputs != 40)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_dense_does_not_depend_on_the_thread_count(threads):
    torch.manual_seed(4)
    x, w, b = torch.randn(2 * CHUNK_ROWS + 7, 320), torch.randn(320, 700), torch.randn(700)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = dense(x, w, b)
        torch.set_num_threads(threads)
        shared = dense(x, w, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(alone, shared)  # a tile is computed alike whichever thread runs it
    assert_rounding_close(shared, x, w, b)


def test_dense_keeps_a_thread_of_one_intra_op_thread_at_one():
    """A lane thread sets one intra-op thread, then its creator puts the process default back
    (csrc/executor/lane.cpp): the product stays on one thread, and the count is still one
    afterwards (at::parallel_for, called from this extension, once reset a thread's count to
    the process default on its first call, and the lane's next products ran on two)."""
    torch.manual_seed(5)
    x, w = torch.randn(CHUNK_ROWS + 1, 512), torch.randn(512, 1024)
    counts: list[int] = []
    lane_set, default_back = threading.Event(), threading.Event()

    def lane() -> None:
        torch.get_num_threads()  # ATen's lazy start-up first, as Lane::main does
        torch.set_num_threads(1)
        lane_set.set()
        default_back.wait()
        for _ in range(2):
            dense(x, w, None)
            counts.append(torch.get_num_threads())

    before = torch.get_num_threads()
    thread = threading.Thread(target=lane)
    thread.start()
    try:
        lane_set.wait()
        torch.set_num_threads(2)  # the process default, as the lane's creator restores it
        default_back.set()
        thread.join()
    finally:
        torch.set_num_threads(before)
    assert counts == [1, 1]


def test_a_strided_input_and_a_transposed_weight():
    torch.manual_seed(1)
    k, n = 256, 512
    x = torch.randn(CHUNK_ROWS + 3, 2 * k)[:, ::2]  # every other column
    w = torch.randn(n, k).t()  # nn.Linear's weight as torch.compile folds its transpose
    b = torch.randn(n)
    assert_rounding_close(dense(x, w, b), x, w, b)
    assert packed(w)


def test_the_packed_weight_follows_in_place_writes_and_rebinding():
    torch.manual_seed(2)
    k, n = 256, 512
    x = torch.randn(7, k)
    layer = torch.nn.Parameter(torch.randn(k, n), requires_grad=False)
    first = dense(x, layer, None)
    assert packed(layer)
    other = torch.randn(k, n)
    with torch.no_grad():
        layer.copy_(other)  # what load_state_dict does: bumps the version counter
    assert not packed(layer)
    second = dense(x, layer, None)
    assert_rounding_close(second, x, other, None)
    assert not torch.allclose(first, second)
    layer.data = torch.randn(k, n)  # rebinding: a new data pointer
    assert_rounding_close(dense(x, layer, None), x, layer.detach(), None)


def test_an_inference_tensor_weight_takes_aten_and_stays_exact():
    torch.manual_seed(3)
    k, n = 256, 512
    with torch.inference_mode():
        x, w = torch.randn(7, k), torch.randn(k, n)
        y = dense(x, w, None)
    assert_rounding_close(y, x, w, None)
    assert not packed(w)  # nothing to key a cached packing on


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("lead", [(3,), (2, 3), (0,)], ids=["rows", "3d", "no-rows"])
def test_no_features_give_the_bias_or_zeros(lead, bias):
    """K = 0: every output is an empty sum, as in ``x @ w + b``."""
    x, w = torch.randn(*lead, 0), torch.randn(0, 4)
    b = torch.randn(4) if bias else None
    y = dense(x, w, b)
    assert y.shape == (*lead, 4)
    torch.testing.assert_close(y, reference(x, w, b), rtol=0, atol=0)


@pytest.mark.parametrize(
    "x,w,b,message",
    [
        ((3, 5), (4, 6), None, "input of shape [3, 5] has 5 features, the weight takes 4"),
        ((3, 4), (4,), None, "weight must be [in_features, out_features], got shape [4]"),
        ((3, 4), (4, 6), (5,), "bias must be [6], got shape [5]"),
    ],
)
def test_bad_shapes_are_errors_naming_the_argument(x, w, b, message):
    bias = None if b is None else torch.randn(b)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        dense(torch.randn(x), torch.randn(w), bias)


def conv2d(x, w, b, stride, padding, dilation, groups, activation) -> torch.Tensor:
    ensure_loaded()
    name, args = activation
    return torch.ops.chrion.conv2d(x, w, b, stride, padding, dilation, groups, name, args)


ACTIVATIONS = {
    "none": lambda y: y,
    "relu": torch.relu,
    "leaky_relu": lambda y, slope: torch.nn.functional.leaky_relu(y, slope),
    "hardtanh": lambda y, low, high: torch.clamp(y, low, high),
}


ACTIVATION_CASES = [("none", []), ("relu", []), ("leaky_relu", [0.2]), ("hardtanh", [-0.5, 1.5])]


def conv2d_reference(x, w, b, stride, padding, dilation, groups, activation) -> torch.Tensor:
    bias = None if b is None else b.double()
    y = torch.conv2d(x.double(), w.double(), bias, stride, padding, dilation, groups)
    name, args = activation
    return ACTIVATIONS[name](y, *args).float()


GEOMETRIES = {  # (in, out, kernel, stride, padding, dilation, groups)
    "3x3": (16, 32, (3, 3), [1, 1], [1, 1], [1, 1], 1),
    "one-channel": (1, 24, (3, 3), [1, 1], [1, 1], [1, 1], 1),
    "strided-dilated": (8, 16, (5, 3), [2, 3], [2, 1], [1, 2], 1),
    "grouped": (16, 32, (3, 3), [1, 1], [0, 0], [1, 1], 4),
}


@pytest.mark.parametrize("channels_last", [True, False], ids=["onednn", "aten"])
@pytest.mark.parametrize("activation", ACTIVATION_CASES, ids=lambda a: a[0])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_conv2d_equals_the_convolution_on_both_paths(geometry, bias, activation, channels_last):
    torch.manual_seed(4)
    c_in, c_out, kernel, stride, padding, dilation, groups = GEOMETRIES[geometry]
    x = torch.randn(2, c_in, 12, 17)
    if channels_last:
        x = x.clone(memory_format=torch.channels_last)  # strided so even with one channel
    w = torch.randn(c_out, c_in // groups, *kernel)
    b = torch.randn(c_out) if bias else None
    args = (stride, padding, dilation, groups, activation)
    y = conv2d(x, w, b, *args)
    expected = conv2d_reference(x, w, b, *args)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4)
    assert y.stride() == torch.conv2d(x, w, b, stride, padding, dilation, groups).stride()
    assert packed(w) == channels_last  # the path the layout asked for ran


def test_the_reordered_convolution_weight_follows_in_place_writes():
    torch.manual_seed(5)
    x = torch.randn(1, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    w = torch.nn.Parameter(torch.randn(16, 8, 3, 3), requires_grad=False)
    args = ([1, 1], [1, 1], [1, 1], 1, ("none", []))
    conv2d(x, w, None, *args)
    assert packed(w)
    with torch.no_grad():
        w.mul_(-2.0)
    torch.testing.assert_close(
        conv2d(x, w, None, *args),
        conv2d_reference(x, w.detach(), None, *args),
        rtol=1e-5,
        atol=1e-4,
    )


@pytest.mark.parametrize(
    "x,w,activation,message",
    [
        ((1, 3, 5, 5), (2, 4, 3, 3), ("none", []), "input has 3 channels, the weight takes 4"),
        ((1, 4, 5, 5), (2, 4, 3, 3), ("gelu", []), "unknown activation 'gelu' with 0 arguments"),
        ((1, 4, 5, 5), (2, 4, 3, 3), ("leaky_relu", []), "unknown activation 'leaky_relu'"),
    ],
)
@pytest.mark.parametrize("channels_last", [True, False], ids=["onednn", "aten"])
def test_conv2d_errors_name_the_argument(x, w, activation, message, channels_last):
    x = torch.randn(x)
    x = x.clone(memory_format=torch.channels_last) if channels_last else x
    with pytest.raises(ValueError, match=message):
        conv2d(x, torch.randn(w), None, [1, 1], [0, 0], [1, 1], 1, activation)


# the direct kernel (csrc/kernels/convolution_direct.cpp): AVX-512 only, up to 32 taps
DIRECT = torch.backends.cpu.get_cpu_capability() == "AVX512"
DIRECT_MAX_TAPS = 32
DIRECT_GEOMETRIES = {  # (in, out, kernel, stride, padding): out channels in groups of 64
    "one-channel-3x3": (1, 64, (3, 3), [1, 1], [1, 1]),
    "rgb-ragged-out": (3, 37, (3, 3), [1, 1], [1, 1]),
    "two-groups-strided": (1, 70, (5, 5), [2, 2], [2, 2]),
    "tall-kernel": (2, 16, (3, 1), [2, 1], [1, 0]),
    "32-taps-three-groups": (4, 130, (2, 4), [1, 3], [0, 1]),
    "one-by-one": (1, 8, (1, 1), [1, 1], [0, 0]),
    "wide-rows-unpadded": (1, 5, (3, 3), [1, 1], [0, 0]),
}


@pytest.mark.parametrize("activation", ACTIVATION_CASES, ids=lambda a: a[0])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("geometry", list(DIRECT_GEOMETRIES))
def test_few_taps_take_the_direct_kernel(geometry, bias, activation):
    torch.manual_seed(6)
    c_in, c_out, kernel, stride, padding = DIRECT_GEOMETRIES[geometry]
    # 61 columns: output rows longer than a block of pixels, and a partial last block
    x = torch.randn(3, c_in, 9, 61).clone(memory_format=torch.channels_last)
    w = torch.randn(c_out, c_in, *kernel)
    b = torch.randn(c_out) if bias else None
    args = (stride, padding, [1, 1], 1, activation)
    y = conv2d(x, w, b, *args)
    torch.testing.assert_close(y, conv2d_reference(x, w, b, *args), rtol=1e-5, atol=1e-5)
    assert y.stride() == torch.conv2d(x, w, b, stride, padding).stride()
    taps = c_in * kernel[0] * kernel[1]
    direct = [-(-c_out // 64), taps, 64]
    assert (packed_sizes(w) == direct) == DIRECT  # the direct kernel packed the weight


def test_many_taps_take_onednn():
    torch.manual_seed(7)
    x = torch.randn(1, 1, 30, 40).clone(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 11, 3)  # 33 taps
    assert w[0].numel() > DIRECT_MAX_TAPS
    y = conv2d(x, w, None, [1, 1], [5, 1], [1, 1], 1, ("relu", []))
    expected = conv2d_reference(x, w, None, [1, 1], [5, 1], [1, 1], 1, ("relu", []))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-4)
    assert packed_sizes(w) == list(w.shape)  # oneDNN's reordered weight keeps its sizes


def test_the_direct_kernel_propagates_nan_and_infinity():
    torch.manual_seed(8)
    x = torch.randn(2, 1, 8, 30).clone(memory_format=torch.channels_last)
    x[0, 0, 3, 4], x[1, 0, 5, 20], x[1, 0, 0, 0] = float("nan"), float("inf"), -float("inf")
    w, b = torch.randn(20, 1, 3, 3), torch.randn(20)
    for activation in [("none", []), ("relu", []), ("leaky_relu", [0.1]), ("hardtanh", [-1, 1])]:
        args = ([1, 1], [1, 1], [1, 1], 1, activation)
        y = conv2d(x, w, b, *args)
        expected = conv2d_reference(x, w, b, *args)
        assert y.isnan().sum() > 0
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_direct_kernel_does_not_depend_on_the_thread_count(threads):
    torch.manual_seed(9)
    # 4 images of 100 x 40 (bench/crdnn.py's first convolution): rows split over the threads
    x = torch.randn(4, 1, 100, 40).clone(memory_format=torch.channels_last)
    w, b = torch.randn(64, 1, 3, 3), torch.randn(64)
    args = ([1, 1], [1, 1], [1, 1], 1, ("leaky_relu", [0.01]))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = conv2d(x, w, b, *args)
        torch.set_num_threads(threads)
        many = conv2d(x, w, b, *args)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)
    torch.testing.assert_close(many, conv2d_reference(x, w, b, *args), rtol=1e-5, atol=1e-5)


def test_a_kernel_larger_than_the_padded_input_is_atens_error():
    x = torch.randn(1, 1, 2, 8).clone(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="[Kk]ernel size|too small"):
        conv2d(x, torch.randn(4, 1, 3, 3), None, [1, 1], [0, 0], [1, 1], 1, ("none", []))


@pytest.mark.parametrize(
    "stride, padding, dilation, message",
    [
        ([0, 1], [0, 0], [1, 1], r"stride must be positive, got \[0, 1\]"),
        ([1, 1], [-1, 0], [1, 1], r"padding must not be negative, got \[-1, 0\]"),
        ([1, 1], [0, 0], [1, 0], r"dilation must be positive, got \[1, 0\]"),
    ],
)
@pytest.mark.parametrize("channels", [1, 16], ids=["direct", "onednn"])
def test_bad_geometry_is_an_error_naming_it(stride, padding, dilation, message, channels):
    # a zero stride crashed the process in oneDNN (SIGFPE) before it was checked
    x = torch.randn(1, channels, 8, 8).clone(memory_format=torch.channels_last)
    w = torch.randn(4, channels, 3, 3)
    with pytest.raises(ValueError, match=message):
        conv2d(x, w, None, stride, padding, dilation, 1, ("none", []))
