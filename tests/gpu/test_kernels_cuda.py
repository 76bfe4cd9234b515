"""chrion:: operators on CUDA (cuDNN, cuBLAS) against eager PyTorch on the same device."""

import torch

from torch_chrion.ops import ensure_loaded


def test_chrion_lstm_on_cuda_matches_eager():
    ensure_loaded()
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True).cuda()
    x = torch.randn(5, 3, 8, device="cuda")
    h0 = torch.zeros(4, 3, 16, device="cuda")
    with torch.no_grad():
        ref, (ref_h, _) = lstm(x, (h0, h0))
        out, h, _ = torch.ops.chrion.lstm(
            x, h0, h0, lstm._flat_weights, True, 2, True, False, False
        )
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(h, ref_h)


def test_chrion_dense_on_cuda_matches_the_product():
    ensure_loaded()
    torch.manual_seed(0)
    x = torch.randn(2, 70, 512, device="cuda")
    w = torch.randn(512, 1000, device="cuda")
    b = torch.randn(1000, device="cuda")
    torch.testing.assert_close(torch.ops.chrion.dense(x, w, b), x @ w + b, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(torch.ops.chrion.dense(x, w.t().contiguous().t(), None), x @ w)


def test_chrion_conv2d_on_cuda_matches_the_convolution():
    ensure_loaded()
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 8, 3, 3, device="cuda")
    b = torch.randn(16, device="cuda")
    expected = torch.relu(torch.conv2d(x, w, b, 1, 1))
    got = torch.ops.chrion.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [])
    torch.testing.assert_close(got, expected)


def test_chrion_max_pool_tiles_on_cuda_matches_max_pool2d():
    ensure_loaded()
    torch.manual_seed(0)
    for layout in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(2, 8, 9, 16, device="cuda").contiguous(memory_format=layout)
        x.as_strided((x.numel(),), (1,))[::7] = float("nan")
        expected = torch.nn.functional.max_pool2d(x, (2, 2))
        got = torch.ops.chrion.max_pool_tiles(x, [2, 2])
        torch.testing.assert_close(got, expected, equal_nan=True, rtol=0, atol=0)
        assert got.stride() == expected.stride()


def test_chrion_gather_rows_on_cuda_matches_indexing():
    ensure_loaded()
    torch.manual_seed(0)
    table = torch.randn(50, 8, device="cuda")
    index = torch.randint(-50, 50, (7, 3), device="cuda")
    assert torch.equal(torch.ops.chrion.gather_rows(table, index), table[index])


def test_chrion_softmax_on_cuda_matches_atens():
    ensure_loaded()
    torch.manual_seed(0)
    x = torch.randn(4, 3, 1000, device="cuda")
    x[0, 0, ::3] = float("-inf")
    for log, op in ((True, torch.log_softmax), (False, torch.softmax)):
        assert torch.equal(torch.ops.chrion.softmax(x, -1, log), op(x, -1))
