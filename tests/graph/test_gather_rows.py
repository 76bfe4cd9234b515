"""gather_rows: a row lookup (aten.index.Tensor with one integer index tensor) becomes one
chrion::gather_rows node, equal to eager indexing (negative indices, any index shape and table
rank, int32 or int64, one thread or several), with ATen's IndexError out of range; a mask, two
index tensors or an index on a later dimension stays."""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from torch_chrion.graph.passes import gather_rows
from torch_chrion.ops import ensure_loaded

aten = torch.ops.aten


def lookups(gm) -> tuple[int, int]:
    ensure_loaded()
    nodes = list(gm.graph.nodes)
    return (
        sum(n.target is aten.index.Tensor for n in nodes),
        sum(n.target is torch.ops.chrion.gather_rows.default for n in nodes),
    )


@pytest.mark.parametrize(
    "table_shape, index_shape",
    [((50, 8), (7, 3)), ((50,), (4,)), ((9, 4, 5), (2, 2, 2)), ((50, 8), ()), ((3, 2), (0, 4))],
    ids=["embedding", "vector", "3d-table", "scalar-index", "no-rows"],
)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_a_row_lookup_becomes_one_node_equal_to_eager(table_shape, index_shape, dtype):
    torch.manual_seed(0)
    table = torch.randn(*table_shape)
    rows = table_shape[0]
    fn = lambda i: aten.index.Tensor(table, [i]) * 2  # noqa: E731  (as onnx2torch records)
    index = torch.randint(-rows, rows, index_shape, dtype=dtype)
    gm = make_fx(fn)(index)
    assert lookups(gm) == (1, 0)
    gather_rows(gm)
    assert lookups(gm) == (0, 1)
    for _ in range(2):
        other = torch.randint(-rows, rows, index_shape, dtype=dtype)
        y = gm(other)
        assert torch.equal(y, fn(other)) and y.is_contiguous()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_large_lookup_does_not_depend_on_the_thread_count(threads):
    ensure_loaded()
    torch.manual_seed(1)
    table = torch.randn(1000, 512)
    index = torch.randint(-1000, 1000, (64, 35))  # 4.6 MB of rows: split over the threads
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        y = torch.ops.chrion.gather_rows(table, index)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(y, table[index])


@pytest.mark.parametrize(
    "table",
    [torch.arange(12).reshape(6, 2), torch.tensor([True, False, True]), torch.randn(8, 6).t()],
    ids=["int64-table", "bool-table", "strided-table"],
)
def test_other_tables_give_the_same_rows(table):
    ensure_loaded()
    index = torch.tensor([[0, -1], [2, 1]])
    assert torch.equal(torch.ops.chrion.gather_rows(table, index), table[index])


@pytest.mark.parametrize("bad", [6, -7])
def test_an_index_out_of_range_is_atens_index_error(bad):
    ensure_loaded()
    table, index = torch.randn(6, 3), torch.tensor([0, bad, 1])
    with pytest.raises(
        IndexError, match=f"index {bad} is out of bounds for dimension 0 with size 6"
    ):
        torch.ops.chrion.gather_rows(table, index)
    with pytest.raises(ValueError, match="index must be int64 or int32, got Float"):
        torch.ops.chrion.gather_rows(table, index.float())


@pytest.mark.parametrize(
    "fn",
    [
        lambda t, i: t[(i > 0).repeat(2)],  # a boolean mask
        lambda t, i: t[i, i % 3],  # two index tensors
        lambda t, i: t[:, i % 3],  # an index on the second dimension
    ],
    ids=["mask", "two-indices", "later-dimension"],
)
def test_other_indexing_stays(fn):
    table, index = torch.randn(6, 3), torch.tensor([0, -2, 4])
    gm = make_fx(lambda i: fn(table, i))(index)
    before = lookups(gm)
    gather_rows(gm)
    assert lookups(gm) == before and before[1] == 0
    assert torch.equal(gm(index), fn(table, index))
