"""Run the original mit_semseg 1.0.0 on weights and inputs written by our tests.

Usage (the original must be the only ``mit_semseg`` on the path):
    PYTHONPATH=<folder holding the original> python upstream_runner.py SPEC.pt OUT.pt

SPEC.pt holds ``{"inputs": {...}, "cases": [{"name", "encoder", "decoder", "fc_dim",
"num_class", "encoder_weights", "decoder_weights", "seed"}, ...]}``; OUT.pt receives, per case,
the eval-mode probabilities and the train-mode loss and accuracy.
"""

import sys

import torch
import torch.nn as nn


def build_encoder(arch):
    from mit_semseg.models import hrnet, mobilenet, models, resnet, resnext

    # Built from the classes (not ModelBuilder) because ModelBuilder downloads ImageNet weights.
    if arch == "hrnetv2":
        return hrnet.hrnetv2(pretrained=False)
    if arch == "mobilenetv2dilated":
        return models.MobileNetV2Dilated(mobilenet.mobilenetv2(pretrained=False), dilate_scale=8)
    family = arch.replace("dilated", "")
    orig = (resnext if family.startswith("resnext") else resnet).__dict__[family](pretrained=False)
    if arch.endswith("dilated"):
        return models.ResnetDilated(orig, dilate_scale=8)
    return models.Resnet(orig)


def main(spec_path, out_path):
    import mit_semseg
    from mit_semseg.models import ModelBuilder, SegmentationModule

    if getattr(mit_semseg, "__version__", None) != "1.0.0":
        raise SystemExit(f"expected the original mit_semseg 1.0.0, got {mit_semseg.__file__}")
    spec = torch.load(spec_path)
    inputs = spec["inputs"]
    results = {}
    for case in spec["cases"]:
        encoder = build_encoder(case["encoder"])
        encoder.load_state_dict(torch.load(case["encoder_weights"]), strict=True)
        decoders = {}
        for use_softmax in (True, False):
            decoder = ModelBuilder.build_decoder(case["decoder"], case["fc_dim"],
                                                 case["num_class"], "", use_softmax)
            decoder.load_state_dict(torch.load(case["decoder_weights"]), strict=True)
            decoders[use_softmax] = decoder
        crit = nn.NLLLoss(ignore_index=-1)
        deep_sup = 0.4 if case["decoder"].endswith("deepsup") else None
        with torch.no_grad():
            module = SegmentationModule(encoder, decoders[True], crit).eval()
            probs = module({"img_data": inputs["eval_img"]}, segSize=inputs["seg_size"])
        module = SegmentationModule(encoder, decoders[False], crit, deep_sup).train()
        torch.manual_seed(case["seed"])
        loss, acc = module({"img_data": inputs["train_img"],
                            "seg_label": inputs[f"label_{case['name']}"]})
        results[case["name"]] = {"probs": probs, "loss": loss.detach(), "acc": acc}
    torch.save(results, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
