"""Length buckets: requests of different lengths share a padded batch only when the graph proves
the model causal in time (a unidirectional LSTM), and every answer then equals eager PyTorch on
the request's own, unpadded input; a bidirectional model batches equal lengths only."""

import asyncio

import numpy as np
import pytest
import torch
from serve_helpers import frames

from torch_chrion.serve import ServedModel
from torch_chrion.serve.batching import AdaptiveBatcher
from torch_chrion.serve.model import TimeAxes, from_package


def batched_answers(served: ServedModel, lengths: list[int]) -> tuple[list, list[tuple]]:
    """Answers of requests of ``lengths`` sent at once through the batcher (up to 4 a batch),
    and the input shapes the model was called with."""
    shapes = []
    call = served.call
    spied = ServedModel(
        lambda x: shapes.append(tuple(x.shape)) or call(x),
        served.inputs,
        served.outputs,
        batch_axis=served.batch_axis,
        time_axes=served.time_axes,
    )
    batcher = AdaptiveBatcher(spied, max_batch=4, timeout_s=0.05)
    inputs = [frames(length, seed=k).numpy() for k, length in enumerate(lengths)]

    async def send() -> list:
        return await asyncio.gather(*(batcher.submit(spied.batch_key((x,)), (x,)) for x in inputs))

    try:
        answers = asyncio.run(send())
    finally:
        batcher.close()
    return list(zip(inputs, answers, strict=True)), sorted(shapes)


@pytest.mark.parametrize("model", ["causal", "bidirectional"])
def test_padded_batches_equal_eager_per_request(
    model, causal_package, causal_tagger, torch_package, tagger
):
    package, eager = (
        (causal_package, causal_tagger) if model == "causal" else (torch_package, tagger)
    )
    served = from_package(package)
    # 9..16 share a length bucket, 5 is in another
    answered, calls = batched_answers(served, [9, 16, 5, 12, 10])
    if model == "causal":
        assert served.time_axes == TimeAxes(inputs=(0,), outputs=(0,))
        assert calls == [(5, 1, 8), (16, 4, 8)]  # four lengths padded to 16 in one call
    else:  # the backward direction reads the padding: equal lengths only
        assert served.time_axes is None
        assert calls == sorted((n, 1, 8) for n in (9, 16, 5, 12, 10))
    for x, (y,) in answered:
        expected = eager(torch.from_numpy(x)).detach().numpy()
        assert y.shape == expected.shape
        np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)
