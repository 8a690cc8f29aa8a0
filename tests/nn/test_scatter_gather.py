"""How DataParallelWithCallback's CPU replicas split one dict batch (scatter_gather.split_batch)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mit_semseg.nn import DataParallelWithCallback


class _Echo(nn.Module):
    """Returns what its replica received: the rows of the batch, how many, and whether the
    image and label rows still belong together."""

    def forward(self, feed):
        images, labels = feed["img_data"], feed["seg_label"]
        return {"img_data": images, "seg_label": labels,
                "rows": torch.tensor(images.shape[0]),
                "paired": torch.tensor(bool(torch.equal(images[:, 0].long(), labels))),
                "tag": feed["tag"]}


@pytest.mark.parametrize("batch,replicas,sizes", [
    (7, 3, [3, 2, 2]),
    (6, 4, [2, 2, 1, 1]),
    (10, 4, [3, 3, 2, 2]),
    (2, 4, [1, 1]),  # fewer images than replicas: no replica gets an empty batch
])
def test_an_uneven_dict_batch_is_split_into_parts_that_differ_by_at_most_one(
        batch, replicas, sizes):
    """Every replica gets ``batch // replicas`` or one more images, in order.

    The original 1.0.0 (``mit_semseg/lib/nn/parallel/data_parallel.py``) splits no dict batch
    on the CPU: without GPUs its ``DictGatherDataParallel`` and ``UserScatteredDataParallel``
    are ``nn.DataParallel`` pass-throughs, so the module gets all 7 (or 6, 10, 2) images at once
    (checked with the original in a subprocess). On GPUs its ``DictGatherDataParallel`` leaves
    the split to ``nn.DataParallel.scatter`` (``torch.cuda.comm.scatter``), which cuts with
    ``Tensor.chunk``: 7 over 3 gives 3/3/1, 6 over 4 gives 2/2/2 (the fourth GPU idle), 10 over
    4 gives 3/3/3/1, 2 over 4 gives 1/1; its ``UserScatteredDataParallel`` does not split at
    all (it takes a list with one dict per GPU and asserts that there are as many).
    """
    images = torch.arange(batch, dtype=torch.float32)[:, None].repeat(1, 3)
    labels = torch.arange(batch)
    model = DataParallelWithCallback(_Echo(), num_cpu_replicas=replicas)
    out = model({"img_data": images, "seg_label": labels, "tag": "t"})
    assert out["rows"].tolist() == sizes
    assert out["paired"].all()
    assert torch.equal(out["img_data"], images) and torch.equal(out["seg_label"], labels)
    assert out["tag"] == ["t"] * len(sizes)  # non-tensor values go to every replica
