"""Many Python threads calling one module at once get the serial results."""

from concurrent.futures import ThreadPoolExecutor

import torch
from models import BiGRUWithState
from runtime_helpers import aten_graph, random_order, random_placement

from torch_chrion.runtime import ChrionModule


def test_eight_threads_times_200_calls_equal_serial_results():
    torch.manual_seed(0)
    model = BiGRUWithState(features=6, hidden=8, layers=1).eval()
    gm = aten_graph(model, *model.example_inputs(seq=3, batch=2))
    module = ChrionModule(gm, random_placement(gm, ["cpu:0", "cpu:1"], 1), random_order(gm, 1))
    inputs = [model.example_inputs(seq=3, batch=2) for _ in range(16)]
    serial = [module(*x) for x in inputs]

    def worker(t):
        mismatches = 0
        for i in range(200):
            k = (t * 7 + i) % len(inputs)
            out = module(*inputs[k])
            mismatches += not all(torch.equal(a, b) for a, b in zip(out, serial[k], strict=True))
        return mismatches

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(worker, range(8))) == [0] * 8
    with torch.no_grad():
        torch.testing.assert_close(serial[0], model(*inputs[0]))
