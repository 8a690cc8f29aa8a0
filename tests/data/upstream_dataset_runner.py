"""Run the original mit_semseg 1.0.0 datasets on files written by our tests.

Usage (the original must be the only ``mit_semseg`` on the path):
    PYTHONPATH=<folder holding the original> python upstream_dataset_runner.py SPEC.json OUT.pt

SPEC.json holds ``{"root", "odgt", "test_paths", "eval_opt", "train_opt", "batch_per_gpu",
"train_indices"}``. OUT.pt receives the original's ``ValDataset`` and ``TestDataset`` items and,
for each train index, the ``TrainDataset`` batch of a freshly built dataset together with the
random choices it made (which records, which short side, which flips), so that our dataset can
be given the same plan.
"""

import json
import sys
from types import SimpleNamespace

import numpy as np
import torch


def _as_tensors(item):
    # img_ori is a numpy array; OUT.pt is read back with weights_only=True
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in item.items()}


def _train_batch(dataset_module, spec, index):
    """The original's batch ``index`` of a new dataset, and the random choices behind it."""
    dataset = dataset_module.TrainDataset(spec["root"], spec["odgt"],
                                          SimpleNamespace(**spec["train_opt"]),
                                          batch_per_gpu=spec["batch_per_gpu"])
    chosen = []
    take_sub_batch = dataset._get_sub_batch

    def recording_sub_batch():
        records = take_sub_batch()
        chosen.extend(r["fpath_img"] for r in records)
        return records

    dataset._get_sub_batch = recording_sub_batch
    # __getitem__ draws the short side, then one flip per image, with np.random.choice
    draws = []
    choice = np.random.choice

    def recording_choice(*args, **kwargs):
        value = choice(*args, **kwargs)
        draws.append(int(value))
        return value

    np.random.choice = recording_choice
    try:
        batch = dataset[index]
    finally:
        np.random.choice = choice
    return {"records": chosen, "short": draws[0], "flips": [bool(f) for f in draws[1:]],
            "img_data": batch["img_data"], "seg_label": batch["seg_label"]}


def main(spec_path, out_path):
    import mit_semseg
    from mit_semseg import dataset as dataset_module

    if getattr(mit_semseg, "__version__", None) != "1.0.0":
        raise SystemExit(f"expected the original mit_semseg 1.0.0, got {mit_semseg.__file__}")
    with open(spec_path) as f:
        spec = json.load(f)
    eval_opt = SimpleNamespace(**spec["eval_opt"])
    val = dataset_module.ValDataset(spec["root"], spec["odgt"], eval_opt)
    test = dataset_module.TestDataset([{"fpath_img": p} for p in spec["test_paths"]], eval_opt)
    results = {
        "val": [_as_tensors(val[i]) for i in range(len(val))],
        "test": [_as_tensors(test[i]) for i in range(len(test))],
        "train": [_train_batch(dataset_module, spec, i) for i in spec["train_indices"]],
    }
    torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
