"""The original mit_semseg 1.0.0's eval.py and test.py procedures, on files written by our tests.

Usage (the original must be the only ``mit_semseg`` on the path):
    PYTHONPATH=<folder holding the original> python upstream_eval_runner.py SPEC.json OUT.pt

The original's root scripts are not part of its PyPI package; what they do is re-stated here
from their documented behaviour, with the package's own pieces (``ModelBuilder``,
``SegmentationModule``, ``ValDataset``, ``TestDataset``, ``accuracy``, ``intersectionAndUnion``,
``AverageMeter``). For every model of SPEC.json (keys ``root``, ``odgt``, ``test_paths``,
``num_class``, ``imgSizes``, ``imgMaxSize``, ``padding_constant``, ``models``: a list of
``{name, encoder, decoder, fc_dim, dir, checkpoint, seed}``) it

1. writes the checkpoint both sides evaluate: the original's randomly initialised nets, with
   random affine BatchNorm parameters and running statistics measured on the test images
   (cumulative means over train-mode passes), so that eval-mode BatchNorm does real work and
   the probabilities are neither saturated nor flat;
2. loads that checkpoint as eval.py does and runs its validation loop: every image at every
   scale, probabilities at the label's size summed with weight ``1 / len(imgSizes)`` starting
   from zeros, argmax, then per-image accuracy and intersection/union accumulated in
   ``AverageMeter`` s;
3. runs test.py's loop on ``test_paths`` the same way (output size = the image's size).

OUT.pt receives, per model, the predictions (int64 maps), the validation images' mean
probabilities and the metrics.
"""

import json
import os
import sys

import torch
from torch import nn


def _build(model, weights_encoder, weights_decoder):
    from mit_semseg.models import ModelBuilder, SegmentationModule

    # A weights path keeps ModelBuilder from downloading ImageNet weights; it loads non-strictly
    encoder = ModelBuilder.build_encoder(arch=model["encoder"], fc_dim=model["fc_dim"],
                                         weights=weights_encoder)
    decoder = ModelBuilder.build_decoder(arch=model["decoder"], fc_dim=model["fc_dim"],
                                         num_class=model["num_class"], weights=weights_decoder,
                                         use_softmax=True)
    return SegmentationModule(encoder, decoder, nn.NLLLoss(ignore_index=-1))


def _batch_norms(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _write_checkpoint(model, images, folder):
    """Step 1: a random model with realistic BatchNorm statistics, saved as the original does."""
    empty = os.path.join(folder, "empty.pth")
    torch.save({}, empty)
    torch.manual_seed(model["seed"])
    module = _build(model, empty, empty)
    norms = _batch_norms(module)
    for bn in norms:
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.3, 0.3)
        bn.reset_running_stats()
    module.train()
    with torch.no_grad():
        # each image with its mirror image (the 1x1 pooled PPM branch needs two values)
        for count, image in enumerate(images, start=1):
            for bn in norms:
                bn.momentum = 1.0 / count  # running stats = mean over the passes so far
            features = module.encoder(torch.cat([image, image.flip(-1)]),
                                      return_feature_maps=True)
            module.decoder(features, segSize=image.shape[2:])
    paths = {part: os.path.join(folder, f"{part}_{model['checkpoint']}")
             for part in ("encoder", "decoder")}
    torch.save(module.encoder.state_dict(), paths["encoder"])
    torch.save(module.decoder.state_dict(), paths["decoder"])
    return paths


def _multi_scale_pred(module, sample, seg_size, num_scales, num_class):
    """The scripts' inner loop: mean probability over the scales at ``seg_size``, argmax.

    Returns:
        ``(scores (num_class, H, W), prediction (H, W))``.
    """
    scores = torch.zeros(1, num_class, seg_size[0], seg_size[1])
    for image in sample["img_data"]:
        feed = dict(sample, img_data=image)
        del feed["img_ori"], feed["info"]
        scores = scores + module(feed, segSize=seg_size) / num_scales
    _, pred = torch.max(scores, dim=1)
    return scores[0], pred.squeeze(0).numpy()


def _evaluate(module, cfg, model):
    """Step 2: eval.py's validation loop and summary numbers."""
    from mit_semseg.dataset import ValDataset
    from mit_semseg.lib.nn import user_scattered_collate
    from mit_semseg.utils import AverageMeter, accuracy, intersectionAndUnion

    dataset = ValDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_val, cfg.DATASET)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False,
                                         collate_fn=user_scattered_collate, num_workers=0)
    acc_meter, intersection_meter, union_meter = AverageMeter(), AverageMeter(), AverageMeter()
    preds, scores = [], []
    for batch in loader:
        sample = batch[0]
        label = sample["seg_label"][0].numpy()
        with torch.no_grad():
            probs, pred = _multi_scale_pred(module, sample, label.shape,
                                            len(cfg.DATASET.imgSizes),
                                     model["num_class"])
        acc, pix = accuracy(pred, label)
        intersection, union = intersectionAndUnion(pred, label, model["num_class"])
        acc_meter.update(acc, pix)
        intersection_meter.update(intersection)
        union_meter.update(union)
        preds.append(torch.from_numpy(pred))
        scores.append(probs)
    iou = intersection_meter.sum / (union_meter.sum + 1e-10)
    return {"val_preds": preds, "val_scores": scores, "iou": torch.from_numpy(iou),
            "intersection": torch.from_numpy(intersection_meter.sum),
            "union": torch.from_numpy(union_meter.sum), "mean_iou": float(iou.mean()),
            "pixel_accuracy": float(acc_meter.average()),
            "summary": f"Mean IoU: {iou.mean():.4f}, "
                       f"Accuracy: {acc_meter.average() * 100:.2f}%"}


def _test(module, cfg, model, paths):
    """Step 3: test.py's loop (predictions at each image's own size)."""
    from mit_semseg.dataset import TestDataset
    from mit_semseg.lib.nn import user_scattered_collate

    dataset = TestDataset([{"fpath_img": p} for p in paths], cfg.DATASET)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False,
                                         collate_fn=user_scattered_collate, num_workers=0)
    preds = []
    for batch in loader:
        sample = batch[0]
        with torch.no_grad():
            _, pred = _multi_scale_pred(module, sample, sample["img_ori"].shape[:2],
                                        len(cfg.DATASET.imgSizes), model["num_class"])
        preds.append(torch.from_numpy(pred))
    return preds


def main(spec_path, out_path):
    import mit_semseg
    from mit_semseg.config import cfg
    from mit_semseg.dataset import TestDataset

    if getattr(mit_semseg, "__version__", None) != "1.0.0":
        raise SystemExit(f"expected the original mit_semseg 1.0.0, got {mit_semseg.__file__}")
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(1)
    results = {}
    for model in spec["models"]:
        model = dict(model, num_class=spec["num_class"])
        cfg.merge_from_list([
            "DATASET.root_dataset", spec["root"], "DATASET.list_val", spec["odgt"],
            "DATASET.num_class", spec["num_class"], "DATASET.imgSizes", tuple(spec["imgSizes"]),
            "DATASET.imgMaxSize", spec["imgMaxSize"],
            "DATASET.padding_constant", spec["padding_constant"],
            "MODEL.arch_encoder", model["encoder"], "MODEL.arch_decoder", model["decoder"],
            "MODEL.fc_dim", model["fc_dim"]])
        calibration = TestDataset([{"fpath_img": p} for p in spec["test_paths"]], cfg.DATASET)
        images = [t for i in range(len(calibration)) for t in calibration[i]["img_data"]]
        paths = _write_checkpoint(model, images, model["dir"])
        module = _build(model, paths["encoder"], paths["decoder"]).eval()
        results[model["name"]] = {**_evaluate(module, cfg, model),
                                  "test_preds": _test(module, cfg, model, spec["test_paths"])}
    torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
