import copy
import dataclasses
import os
import re
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from config import BACKBONES, DEFAULT_CLASSES, official_weights_name
from conftest import FAKE_HUB, small_memory
from model import (
    DinoBackbone,
    Segmentor,
    _timm_to_official,
    count_flops,
    load_backbone,
    load_checkpoint,
    patch_aligned,
    save_checkpoint,
    token_grid,
)
from synthetic import meta_device, random_official_weights
from utils import UserError


@pytest.fixture(scope="module")
def vit(weights_file):
    return load_backbone("dinov2_vits14", "timm", str(weights_file)).vit


def with_layers(vit, layers: int = 4) -> DinoBackbone:
    """A backbone on the shared ViT, feeding the head its last ``layers`` blocks."""
    return DinoBackbone(vit, "dinov2_vits14", "timm", (8, 9, 10, 11)[-layers:])


def test_patch_aligned_rounds_to_the_nearest_multiple_of_14():
    sizes = (640, 644, 100, 518, 7, 20, 35)
    assert [patch_aligned(s) for s in sizes] == [644, 644, 98, 518, 14, 14, 42]  # 35: half up


@pytest.mark.parametrize("layers", [1, 4])
@pytest.mark.parametrize("size", [(56, 56), (98, 70), (100, 60), (61, 45)])
def test_output_shapes_for_any_size(vit, size, layers):
    h, w = size
    model = Segmentor(with_layers(vit, layers), num_classes=3).eval()
    images = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)
    with torch.no_grad():
        grid = model.patch_logits(images)
        logits = model(images)
        resized = model(images, size=(31, 17))
    assert grid.shape == (2, 3, patch_aligned(h) // 14, patch_aligned(w) // 14)
    assert logits.shape == (2, 3, h, w)
    assert resized.shape == (2, 3, 31, 17)
    assert model.head.bn.num_features == 384 * layers
    # features carry no pixel size: without one, the logits came back at the token grid's size
    with torch.no_grad(), pytest.raises(ValueError, match="needs the output size"):
        model(model.features(images), from_features=True)


def test_token_grid_is_the_grid_the_backbone_produces(vit):
    # the feature cache sizes its entries and its torchrun broadcast buffers by token_grid
    model = Segmentor(with_layers(vit, 1), num_classes=2).eval()
    with torch.no_grad():
        features = model.features(torch.zeros(1, 3, 66, 90))  # H 66 -> 70, W 90 -> 84
    assert features.shape[-2:] == (5, 6)
    assert token_grid((90, 66)) == (6, 5)  # (w, h) for an image size (W, H)


def test_an_unaligned_image_reaches_the_backbone_resized_bilinearly(vit):
    # 40x54 -> 42x56, resampled as resize_image enlarges images (OpenCV's bilinear, pixel
    # centres aligned), not by repeating rows and columns or by stretching corner to corner
    model = Segmentor(with_layers(vit, 1), num_classes=2).eval()
    image = np.random.default_rng(0).integers(0, 256, (40, 54, 3)).astype(np.float32)
    resized = cv2.resize(image, (56, 42), interpolation=cv2.INTER_LINEAR)
    with torch.no_grad():
        got = model.features(torch.from_numpy(image).permute(2, 0, 1)[None])
        want = model.features(torch.from_numpy(resized).permute(2, 0, 1)[None])
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_frozen_backbone_stays_in_eval_and_gets_no_gradient(vit):
    model = Segmentor(with_layers(vit), num_classes=2).train()
    assert not model.backbone.training and model.head.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    groups = model.param_groups(lr=1e-4, backbone_lr=1e-5)
    assert [g["name"] for g in groups] == ["head"]
    model(torch.rand(2, 3, 28, 28) * 255).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_fine_tune_trains_the_backbone_at_its_own_lr(weights_file):
    bb = load_backbone("dinov2_vits14", "timm", str(weights_file), layers=1)
    model = Segmentor(bb, num_classes=2, fine_tune=True).train()
    assert model.backbone.training
    groups = model.param_groups(lr=1e-3, backbone_lr=1e-5)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 1e-3), ("backbone", 1e-5)]
    model(torch.rand(1, 3, 28, 28) * 255).sum().backward()
    assert model.backbone.vit.blocks[0].attn.qkv.weight.grad is not None


def test_a_batch_whose_attention_passes_the_device_limit_runs_a_few_images_at_a_time(
    monkeypatch,
):
    # MPS aborts the process where one layer's attention scores pass 4 GiB in one array: here
    # the CPU is given a limit of two images' scores (ViT-S: 6 heads; 28x42: 1 + 2x3 tokens)
    torch.manual_seed(0)
    backbone = load_backbone("dinov2_vits14", "timm", None, layers=2).eval()
    x = torch.randn(5, 3, 28, 42)
    with torch.no_grad():
        whole = backbone(x)
    monkeypatch.setattr("model.ATTENTION_BYTES", {"cpu": 2 * 6 * 7**2 * 4 + 1})
    calls = []
    run = backbone.vit.get_intermediate_layers

    def counted(images, **kwargs):
        calls.append(len(images))
        return run(images, **kwargs)

    monkeypatch.setattr(backbone.vit, "get_intermediate_layers", counted)
    with torch.no_grad():
        parts = backbone(x)
    assert calls == [2, 2, 1]
    assert len(parts) == len(whole) == 2
    for got, expected in zip(parts, whole, strict=True):
        torch.testing.assert_close(got, expected)


def test_official_weights_round_trip_through_timm(weights_file, vit):
    original = torch.load(weights_file, weights_only=True)
    exported = with_layers(vit).official_state_dict()
    assert exported.keys() == original.keys()
    for key in original:
        if key != "mask_token":  # unused for segmentation; timm drops it
            torch.testing.assert_close(exported[key], original[key], rtol=0, atol=0)


def test_register_weights_round_trip_through_timm(reg_weights_file):
    bb = load_backbone("dinov2_vits14_reg", "timm", str(reg_weights_file))
    again = load_backbone("dinov2_vits14_reg", "timm", None)
    again.load_official_state_dict(bb.official_state_dict())
    x = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        for a, b in zip(bb(x), again(x), strict=True):
            torch.testing.assert_close(a, b)


def test_weights_of_another_backbone_are_refused_with_a_hint(weights_file):
    hint = r"does not fit dinov2_vitb14.*pass --backbone dinov2_vits14"
    with pytest.raises(UserError, match=hint):
        load_backbone("dinov2_vitb14", "timm", str(weights_file))


def test_weights_with_missing_keys_are_refused(tmp_path):
    sd = random_official_weights()
    del sd["blocks.3.ls1.gamma"]
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(UserError, match=r"1 missing keys \(e.g. blocks.3.ls1.gamma\)"):
        load_backbone("dinov2_vits14", "timm", str(tmp_path / "w.pth"))


@pytest.mark.parametrize("source", ["timm", "hub"])
@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg"])
def test_timms_own_state_dict_loads_as_weights(
    tmp_path, weights_file, reg_weights_file, name, source
):
    """timm.create_model(...).state_dict() saved as it is: no mask_token (masked pre-training
    only), and for registers timm's reg_token and patch-only positions. It was refused as
    "1 missing keys (e.g. mask_token)"."""
    official = reg_weights_file if name.endswith("_reg") else weights_file
    reference = load_backbone(name, "timm", str(official), layers=1)
    assert "mask_token" not in reference.vit.state_dict()
    torch.save(reference.vit.state_dict(), tmp_path / "timm.pth")
    hub_dir = FAKE_HUB if source == "hub" else None
    loaded = load_backbone(name, source, str(tmp_path / "timm.pth"), hub_dir=hub_dir, layers=1)
    # timm folds the registers' class position into cls_token: compare in that form
    expected, got = reference.official_state_dict(), loaded.official_state_dict()
    assert got.keys() == expected.keys() == torch.load(official, weights_only=True).keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_timm_layout_weights_missing_a_key_name_it_without_a_backbone_hint(tmp_path):
    """timm's own state dict of ViT-S/14 has ViT-S/14's shapes: the message told the user to
    pass the --backbone they had passed."""
    sd = random_official_weights()
    del sd["mask_token"], sd["blocks.3.ls1.gamma"]
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(UserError, match=r"1 missing keys \(e.g. blocks.3.ls1.gamma\)") as caught:
        load_backbone("dinov2_vits14", "timm", str(tmp_path / "w.pth"))
    assert "--backbone" not in str(caught.value)


@pytest.mark.parametrize(("prefix", "suffix"), [("", ".safetensors"), ("dinov2.", ".pth")])
def test_hugging_face_transformers_weights_are_named_with_the_files_to_pass(
    tmp_path, prefix, suffix
):
    """transformers' Dinov2Model (model.safetensors of facebook/dinov2-small) names its keys
    embeddings.* and encoder.layer.*, under dinov2.* in its task models: the message was a
    generic "missing keys"."""
    from safetensors.torch import save_file

    shapes = {
        "embeddings.cls_token": (1, 1, 384),
        "embeddings.mask_token": (1, 384),
        "embeddings.position_embeddings": (1, 1370, 384),
        "embeddings.patch_embeddings.projection.weight": (384, 3, 14, 14),
        "encoder.layer.0.attention.attention.query.weight": (384, 384),
        "encoder.layer.0.layer_scale1.lambda1": (384,),
        "layernorm.weight": (384,),
    }
    sd = {prefix + key: torch.randn(shape) for key, shape in shapes.items()}
    path = tmp_path / f"model{suffix}"
    save_file(sd, path) if suffix == ".safetensors" else torch.save(sd, path)
    with pytest.raises(UserError) as caught:
        load_backbone("dinov2_vits14", "timm", str(path))
    message = str(caught.value)
    assert message.startswith(f"--weights {path} has the key names of Hugging Face transformers'")
    assert "dinov2_vits14_pretrain.pth" in message and "vit_small_patch14_dinov2" in message
    assert "missing keys" not in message


@pytest.mark.parametrize("version", ["this", "another"])
def test_a_trained_checkpoint_given_as_weights_names_the_flags_that_take_it(tmp_path, vit, version):
    ckpt = tmp_path / "best_model_iou.pth"
    save_checkpoint(ckpt, Segmentor(with_layers(vit, 1), 2), classes=DEFAULT_CLASSES.to_dict(),
                    imgsz=[56, 56])  # fmt: skip
    if version == "another":  # one of another format version got "not a state dict"
        fields = torch.load(ckpt, weights_only=True)
        torch.save({**fields, "format": "dinov2-segmentation/2"}, ckpt)
    with pytest.raises(UserError, match=rf"--weights {ckpt} is a checkpoint written by train\.py"
                       r".*--resume.*--model.*dinov2_vits14_pretrain\.pth"):  # fmt: skip
        load_backbone("dinov2_vits14", "timm", str(ckpt))


@pytest.mark.parametrize("flag", ["--model", "--resume"])
def test_official_weights_given_as_a_checkpoint_name_the_flag_that_takes_them(weights_file, flag):
    with pytest.raises(
        UserError,
        match=rf"{flag} {weights_file} holds the weights of a "
        r"dinov2_vits14 backbone.*train\.py --backbone dinov2_vits14 --weights",
    ):
        load_checkpoint(weights_file, flag=flag)


def test_timm_layout_register_weights_are_named_as_a_register_backbone(tmp_path):
    # timm stores the registers as reg_token: such a file was called a dinov2_vits14 backbone
    timm_layout = load_backbone("dinov2_vits14_reg", "timm", None).vit.state_dict()
    torch.save(timm_layout, tmp_path / "reg.pth")
    with pytest.raises(UserError, match=r"holds the weights of a dinov2_vits14_reg backbone"):
        load_checkpoint(tmp_path / "reg.pth")


@pytest.mark.parametrize(
    "state_dict",
    [{"conv1.weight": torch.zeros(64, 3, 7, 7)},  # a ResNet's: no class token
     {"cls_token": torch.zeros(1, 1, 192), "blocks.0.norm1.weight": torch.zeros(192)}],  # ViT-Ti
)  # fmt: skip
def test_state_dicts_of_other_networks_as_checkpoints_are_not_called_a_backbone(
    tmp_path, state_dict
):
    torch.save(state_dict, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"is not a checkpoint of this repository") as caught:
        load_checkpoint(tmp_path / "other.pth")
    assert "backbone" not in str(caught.value)


def _edit_checkpoint(ckpt: dict, edit: str) -> None:
    if edit == "backbone":
        ckpt["model"]["backbone"] = list(ckpt["model"]["backbone"].values())
    elif edit == "name":  # or written by a later version with more backbones
        ckpt["backbone"] = "dinov3_vits16"
    else:  # a third class named, where the head was trained for two
        ckpt["classes"] = {
            "ALL_CLASSES": ["background", "person", "car"],
            "LABEL_COLORS_LIST": [[0, 0, 0], [0, 255, 0], [255, 0, 0]],
            "VIS_LABEL_MAP": [[0, 0, 0], [0, 255, 0], [255, 0, 0]],
        }


@pytest.mark.parametrize(
    ("edit", "message"),
    [("backbone", r"model: model.backbone is not a state dict of tensors. It was changed"),
     ("classes", r"model: Error\(s\) in loading state_dict .*size mismatch .*\. It was changed "
                 r"after train.py wrote it \(its classes, or its head\): use a checkpoint"),
     ("name", r"--model .*edited.pth holds a 'dinov3_vits16' model, a backbone this version "
              r"of the repository does not build \(it builds dinov2_vits14, ")],
)  # fmt: skip
def test_a_checkpoint_edited_after_training_names_what_no_longer_fits(
    tmp_path, checkpoint, edit, message
):
    ckpt = torch.load(checkpoint, weights_only=True)
    _edit_checkpoint(ckpt, edit)
    torch.save(ckpt, tmp_path / "edited.pth")
    fits = "" if edit == "name" else r"checkpoint .*edited.pth does not fit its dinov2_vits14 "
    with pytest.raises(UserError, match=fits + message):
        load_checkpoint(tmp_path / "edited.pth")


@pytest.mark.parametrize("name", ["dinov2_vitg14", "dinov2_vitg14_reg"])
def test_giant_weights_through_timm_get_their_official_swiglu_names_back(name):
    # ViT-g/14's MLP is SwiGLU: w12 and w3 officially, fc1 and fc2 in timm; a checkpoint saved
    # with timm's names would not load (built too big to test end to end)
    from timm.models.vision_transformer import _convert_dinov2

    official = {"cls_token": torch.randn(1, 1, 8), "pos_embed": torch.randn(1, 5, 8),
                "mask_token": torch.zeros(1, 8), "blocks.0.mlp.w12.weight": torch.randn(16, 8),
                "blocks.0.mlp.w12.bias": torch.randn(16),
                "blocks.0.mlp.w3.weight": torch.randn(8, 8),
                "blocks.0.mlp.w3.bias": torch.randn(8)}  # fmt: skip
    if name.endswith("_reg"):
        official["register_tokens"] = torch.randn(1, 4, 8)
    timm_layout = _convert_dinov2(dict(official), None)
    assert "blocks.0.mlp.fc1.weight" in timm_layout
    back = _timm_to_official(timm_layout, name)
    assert back.keys() == official.keys()
    for key in ("blocks.0.mlp.w12.weight", "blocks.0.mlp.w3.bias"):
        assert torch.equal(back[key], official[key])
    # the other backbones' MLPs are fc1 and fc2 in both layouts
    plain = {"cls_token": torch.zeros(1, 1, 8), "blocks.0.mlp.fc1.weight": torch.zeros(16, 8)}
    assert "blocks.0.mlp.fc1.weight" in _timm_to_official(plain, "dinov2_vitl14")


def test_weights_that_are_not_a_checkpoint_are_refused(tmp_path):
    (tmp_path / "w.pth").write_text("hello")
    with pytest.raises(UserError, match="not a readable PyTorch weights file"):
        load_backbone("dinov2_vits14", "timm", str(tmp_path / "w.pth"))


def test_a_pickled_model_as_weights_is_refused_without_unsafe_advice(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "w.pth")  # torch.save(model), not its weights
    with pytest.raises(UserError, match=r"torch.save\(model\)") as err:
        load_backbone("dinov2_vits14", "timm", str(tmp_path / "w.pth"))
    assert "weights_only" not in str(err.value) and len(str(err.value)) < 400


def test_wrapped_weights_are_refused_naming_the_entry_that_holds_them(tmp_path):
    # a training framework's checkpoint: the weights one level down, beside other state
    torch.save({"epoch": 3, "teacher": random_official_weights()}, tmp_path / "w.pth")
    with pytest.raises(UserError, match=r"not a state dict of tensors like dinov2_vits14_pretrain"
                       r".*under \['teacher'\]: save the backbone's weights"):  # fmt: skip
        load_backbone("dinov2_vits14", "timm", str(tmp_path / "w.pth"))
    torch.save({"epoch": 3}, tmp_path / "w.pth")
    with pytest.raises(UserError, match=r"dinov2_vits14_pretrain.pth.$"):  # no entry to name
        load_backbone("dinov2_vits14", "timm", str(tmp_path / "w.pth"))


def test_missing_weights_file_names_the_offline_options(tmp_path):
    with pytest.raises(UserError, match=r"does not exist\. Offline options"):
        load_backbone("dinov2_vits14", "timm", str(tmp_path / "nope.pth"))
    # the folder the file was downloaded to: it was said not to exist
    with pytest.raises(UserError, match=r"is a folder; pass the weights file in it, such as "):
        load_backbone("dinov2_vits14", "timm", str(tmp_path))


def test_timm_pretrained_without_cache_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"no official weights at .*dinov2_vits14_pretrain\.pth"):
        load_backbone("dinov2_vits14", "timm", "pretrained")


def test_hub_offline_without_cache_fails_loudly(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        from urllib.error import URLError

        raise URLError("offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(UserError, match=r"could not load dinov2_vits14 through torch.hub.*timm"):
        load_backbone("dinov2_vits14", "hub", "pretrained")


def test_random_weights_warn_loudly(caplog):
    load_backbone("dinov2_vits14", "timm", "random")
    assert "UNTRAINED" in caplog.text


def expected_vits14_flops(h: int, w: int, layers: int, classes: int) -> int:
    """Matrix-multiply FLOPs of ViT-S/14 + head, counted by hand (a multiply-add is 2)."""
    d, patches = 384, (h // 14) * (w // 14)
    n = patches + 1
    per_block = 2 * n * d * (3 * d + d + 4 * d + 4 * d) + 2 * 2 * n * n * d
    embed = 2 * patches * d * 3 * 14 * 14
    head = 2 * patches * d * layers * classes
    return 12 * per_block + embed + head


def test_flop_count_includes_attention(vit):
    model = Segmentor(with_layers(vit), num_classes=2).eval()
    flops = count_flops(model, torch.zeros(1, 3, 56, 70))
    assert flops == pytest.approx(expected_vits14_flops(56, 70, 4, 2), rel=1e-6)


@pytest.mark.parametrize("source", ["timm", "hub"])
def test_model_summary_script(capsys, source):
    # model.py's main in this process: a process of its own would import torch and timm again.
    # The hub model holds the official mask_token, timm's not: the count was 384 apart.
    from model import get_args_parser, main

    hub_dir = ["--hub-dir", str(FAKE_HUB)] if source == "hub" else []
    main(get_args_parser().parse_args(
        ["--backbone-source", source, *hub_dir, "--imgsz", "100", "60"]))  # fmt: skip
    out = capsys.readouterr().out
    assert (
        "Parameters: 22,056,192 frozen (backbone; the unused mask_token of the official "
        "weights left out), 6,146 trainable (head)"
    ) in out
    assert "output logits: (1, 2, 60, 100)" in out
    assert "head logits: (1, 2, 4, 7)" in out
    flops = expected_vits14_flops(56, 98, 4, 2) / 1e9
    assert f"FLOPs per 100x60 image: {flops:.1f} GFLOPs" in out


# tracebacks from the model before: an empty or negative image, a head of 0 or -1 classes
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--imgsz", "0", "0"], "--imgsz must be at least 14 14"),
        (["--imgsz", "-14", "28"], "--imgsz must be at least 14 14"),
        (["--num-classes", "0"], "--num-classes must be between 2 and 255, not 0"),
        (["--num-classes", "-1"], "--num-classes must be between 2 and 255, not -1"),
    ],
)
def test_model_summary_refuses_bad_sizes(flags, message):
    from model import get_args_parser, main

    with pytest.raises(UserError, match=message):
        main(get_args_parser().parse_args(["--backbone-source", "timm", *flags]))


def test_model_summary_refuses_a_size_that_cannot_fit_in_memory(monkeypatch):
    """Its one image at --imgsz 10000 10000 was killed outright on the CPU; the advice names
    only --imgsz, model.py having no --batch."""
    from model import get_args_parser, main

    small_memory(monkeypatch, 4)
    monkeypatch.setattr(sys, "argv", ["model.py"])
    with pytest.raises(UserError) as caught:
        main(
            get_args_parser().parse_args(["--backbone-source", "timm", "--imgsz", "10000", "10000"])
        )
    assert re.fullmatch(
        r"--imgsz 10000 10000 \(714x714 patches through dinov2_vits14\) at 1 image a batch "
        r"needs at least 7\.0 GB of memory, and this machine has 4\.0 GB free: lower --imgsz",
        str(caught.value),
    ), str(caught.value)


def test_a_cast_network_keeps_the_pixel_normalization_exact():
    model = Segmentor(load_backbone("dinov2_vits14", "timm", None), 2).cast(torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.pixel_mean.dtype == torch.float32  # .to(bfloat16) would make 123.675 123.5
    assert model.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])


def test_a_cast_network_runs_its_head_in_float32(vit):
    # Some of DINOv2's feature channels have means large next to their spread. Cast to bfloat16,
    # the head's BatchNorm rounded such a running mean by up to a quarter of the spread (100.3
    # to 100.5), which shifted every pixel's logits alike: from features in bfloat16's steps,
    # its logits were up to 0.048 off the float32 head's (of 1.5)
    model = Segmentor(with_layers(vit, 1), num_classes=3).eval()
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 384, 3, 4, generator=g)
    large = torch.arange(0, 384, 8)  # a channel in 8, with means of 50 to 200
    features[:, large] += torch.linspace(50, 200, len(large)).view(-1, 1, 1)
    features = features.bfloat16().float()
    # float32 statistics of those channels, as training estimates them
    model.head.bn.running_mean.copy_(features.mean((0, 2, 3)))
    model.head.bn.running_var.copy_(features.var((0, 2, 3)))
    half = copy.deepcopy(model).cast(torch.bfloat16)  # a copy: vit is shared
    images = torch.randint(0, 256, (1, 3, 28, 42), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        want = model.patch_logits(features, from_features=True)
        torch.testing.assert_close(half.patch_logits(features, from_features=True).float(), want)
        assert half.patch_logits(images).dtype == torch.float32  # through the bfloat16 backbone
    assert half.dtype == half.backbone.vit.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
    head = {t.dtype for t in half.head.state_dict().values() if t.is_floating_point()}
    assert head == {torch.float32}


def test_a_cast_network_keeps_the_spread_of_channels_with_large_means(vit):
    # DINOv2's final LayerNorm gives some feature channels means large next to their spread (its
    # bias here: 50 to 200, next to about 1), which bfloat16 holds in steps of 0.25 to 1. Cast
    # with the blocks, the norm handed the head those channels up to 0.91 off the float32 ones;
    # in float32, on the bfloat16 blocks' tokens, 0.04
    vit = copy.deepcopy(vit)  # not the shared one
    large = torch.arange(0, 384, 8)
    with torch.no_grad():
        vit.norm.bias[large] = torch.linspace(50, 200, len(large))
    model = Segmentor(with_layers(vit, 1), num_classes=3).eval()
    half = copy.deepcopy(model).cast(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 28, 42), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        want, got = model.features(images), half.features(images)
    assert (got.float() - want)[:, large].abs().max() < 0.1
    assert half.dtype == torch.bfloat16 and got.dtype == torch.float32


def test_pixels_are_normalized_as_dinov2_was_trained():
    # DINOv2's own preprocessing: ToTensor (0..1), then Normalize with the ImageNet mean and std
    # of the RGB channels, typed here rather than taken from config
    bb = load_backbone("dinov2_vits14", "timm", None, layers=1)
    model = Segmentor(bb, 2).eval()
    images = torch.randint(0, 256, (1, 3, 28, 42), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = bb((images / 255 - mean) / std)[0]
        torch.testing.assert_close(model.features(images), expected, rtol=1e-4, atol=1e-4)


def test_last_block_features_are_the_final_normalized_patch_tokens_in_grid_order(vit):
    # the "linear" head reads the model's output tokens: after the final LayerNorm, without the
    # class token, laid out row by row on the (H/14, W/14) patch grid
    x = torch.randn(1, 3, 42, 70, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (features,) = with_layers(vit, 1)(x)
        tokens = vit.forward_features(x)[:, vit.num_prefix_tokens :]  # (1, 3 * 5, 384)
    assert features.shape == (1, 384, 3, 5)
    torch.testing.assert_close(features.flatten(2).transpose(1, 2), tokens)


def test_logits_are_upsampled_bilinearly_from_pixel_centres(vit):
    # what the README promises (and tells ONNX users to do): the patch-grid logits resized
    # bilinearly, half-pixel aligned, to the output size; training's loss sees exactly these
    model = Segmentor(with_layers(vit, 1), num_classes=3).eval()
    images = torch.randint(0, 256, (1, 3, 42, 70), dtype=torch.uint8)
    with torch.no_grad():
        grid = model.patch_logits(images)  # (1, 3, 3, 5)
        for size in ((42, 70), (61, 45)):
            want = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
            torch.testing.assert_close(model(images, size=size), want)


def test_the_heads_channels_hold_the_blocks_in_depth_order(vit):
    # a checkpoint's head weights expect blocks 8, 9, 10, 11 in that order, block 11 (the
    # final normalized tokens) last: another order would load and silently mislabel every pixel
    model = Segmentor(with_layers(vit, 4), num_classes=2).eval()
    images = torch.randint(0, 256, (1, 3, 42, 70), dtype=torch.uint8)
    x = (images.float() - model.pixel_mean) / model.pixel_std
    with torch.no_grad():
        chunks = model.features(images).split(384, dim=1)
        tokens = vit.forward_features(x)[:, vit.num_prefix_tokens :]  # (1, 3 * 5, 384)
        for chunk, block in zip(chunks, (8, 9, 10, 11), strict=True):
            (alone,) = vit.get_intermediate_layers(x, n=[block], reshape=True, norm=True)
            torch.testing.assert_close(chunk, alone)
    torch.testing.assert_close(chunks[-1].flatten(2).transpose(1, 2), tokens)


def test_layers_take_the_last_of_the_official_head_blocks():
    # --layers 1 is the official "linear" head on the last block, 4 the "+ms" head's blocks
    assert BACKBONES["dinov2_vits14"].blocks(1) == (11,)
    assert BACKBONES["dinov2_vits14"].blocks(2) == (10, 11)
    assert BACKBONES["dinov2_vitl14"].blocks(4) == (20, 21, 22, 23)
    assert BACKBONES["dinov2_vitg14_reg"].blocks(4) == (36, 37, 38, 39)
    for spec in BACKBONES.values():  # every depth: 12, 24, 40
        for layers in (1, 2, 3, 4):
            assert spec.blocks(layers) == tuple(range(spec.depth - layers, spec.depth))
        for layers in (0, 5):
            with pytest.raises(UserError, match=f"--layers must be between 1 and 4, not {layers}"):
                spec.blocks(layers)


@pytest.mark.parametrize("source", ["timm", "hub"])
def test_a_row_that_does_not_describe_its_model_is_refused(monkeypatch, source):
    """A row added with another architecture's timm_name sized the head by the row: the first
    forward failed in BatchNorm. A wrong swiglu would convert the giant's weights wrongly."""
    vitb = dataclasses.replace(BACKBONES["dinov2_vitb14"], timm_name="vit_small_patch14_dinov2",
                               hub_name="dinov2_vits14")  # fmt: skip
    monkeypatch.setitem(BACKBONES, "dinov2_vitb14", vitb)
    made = "vit_small_patch14_dinov2" if source == "timm" else "the hub's dinov2_vits14"
    hub_dir = FAKE_HUB if source == "hub" else None
    wrong = r"embed_dim 768 there, 384 built; num_heads 12 there, 6 built\): fix the row"
    with (
        meta_device(),
        pytest.raises(UserError, match=rf"row dinov2_vitb14 .*{made} \({wrong}"),
    ):
        load_backbone("dinov2_vitb14", source, None, hub_dir=hub_dir)
    vitg = dataclasses.replace(BACKBONES["dinov2_vitg14_reg"], swiglu=False, registers=0)
    monkeypatch.setitem(BACKBONES, "dinov2_vitg14_reg", vitg)
    with (
        meta_device(),
        pytest.raises(UserError, match=r"registers 0 there, 4 built; swiglu"),
    ):
        load_backbone("dinov2_vitg14_reg", source, None, hub_dir=hub_dir)


def test_a_row_of_other_blocks_of_an_official_model_loads_its_official_weights(
    torch_home, monkeypatch, tmp_path
):
    # the README's recipe: one row, through both sources and the official weights' cache
    dpt = dataclasses.replace(BACKBONES["dinov2_vits14"], head_blocks=(2, 5, 8, 11))
    monkeypatch.setitem(BACKBONES, "dinov2_vits14_dpt", dpt)
    assert official_weights_name("dinov2_vits14_dpt") == "dinov2_vits14_pretrain.pth"
    hub = load_backbone("dinov2_vits14_dpt", "hub", "pretrained")
    timm = load_backbone("dinov2_vits14_dpt", "timm", "pretrained", layers=2)
    assert (hub.blocks, timm.blocks) == ((2, 5, 8, 11), (8, 11))
    ckpt = tmp_path / "dpt.pth"
    save_checkpoint(ckpt, Segmentor(timm, 2), classes=DEFAULT_CLASSES.to_dict(), imgsz=[56, 56])
    model, _ = load_checkpoint(ckpt, backbone_source="hub", backbone="dinov2_vits14_dpt")
    assert (model.backbone.name, model.backbone.blocks) == ("dinov2_vits14_dpt", (8, 11))


def test_a_checkpoint_keeps_the_blocks_its_head_was_trained_on(tmp_path, vit, monkeypatch):
    """A row's head_blocks changed after training fed the old head other blocks' features, of
    the same shape: every pixel mislabelled, silently."""
    model = Segmentor(with_layers(vit, 2), 2).eval()
    ckpt = tmp_path / "ckpt.pth"
    save_checkpoint(ckpt, model, classes=DEFAULT_CLASSES.to_dict(), imgsz=[56, 56])
    changed = dataclasses.replace(BACKBONES["dinov2_vits14"], head_blocks=(2, 5, 8, 11))
    monkeypatch.setitem(BACKBONES, "dinov2_vits14", changed)
    loaded, _ = load_checkpoint(ckpt)
    assert loaded.backbone.blocks == (10, 11)
    images = torch.randint(0, 256, (1, 3, 28, 42), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    payload = torch.load(ckpt, weights_only=True)
    for edited in ([11, 10], [10, 12], [11], [10.0, 11.0]):
        payload["blocks"] = edited
        torch.save(payload, tmp_path / "edited.pth")
        match = (
            rf"its blocks {re.escape(repr(edited))} are not 2 increasing block indices of its 12"
        )
        with pytest.raises(UserError, match=match):
            load_checkpoint(tmp_path / "edited.pth")
    del payload["blocks"]  # written before blocks were recorded: the row's
    torch.save(payload, tmp_path / "old.pth")
    assert load_checkpoint(tmp_path / "old.pth")[0].backbone.blocks == (8, 11)


def test_safetensors_weights_are_read_without_pickle(tmp_path, weights_file):
    """A .safetensors file (timm's Hugging Face weights are one) was called damaged, or a
    pickled model, by PyTorch releases whose torch.load does not read the format."""
    from safetensors.torch import save_file

    official = torch.load(weights_file, weights_only=True)
    save_file(official, tmp_path / "model.safetensors")
    loaded = load_backbone("dinov2_vits14", "hub", str(tmp_path / "model.safetensors"),
                           hub_dir=FAKE_HUB, layers=1).official_state_dict()  # fmt: skip
    for key in official:
        torch.testing.assert_close(loaded[key], official[key], rtol=0, atol=0)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc")
    with pytest.raises(UserError, match=r"model\.safetensors is not a readable safetensors file"):
        load_backbone("dinov2_vits14", "timm", str(tmp_path / "model.safetensors"))
    # the suffix in capitals (a download through Windows) is the same format
    (tmp_path / "model.safetensors").rename(tmp_path / "MODEL.SAFETENSORS")
    with pytest.raises(UserError, match=r"MODEL\.SAFETENSORS is not a readable safetensors file"):
        load_backbone("dinov2_vits14", "timm", str(tmp_path / "MODEL.SAFETENSORS"))


@pytest.mark.skipif(
    sys.platform != "linux", reason="a file name that is not UTF-8: Linux allows it"
)
def test_safetensors_weights_are_read_from_a_path_that_is_not_utf8(tmp_path, weights_file):
    """safetensors' load_file takes the path to Rust as UTF-8, which a Latin-1 name on Linux
    (Python's surrogates) is not: the file was called unreadable, "Is it truncated?"."""
    from safetensors.torch import save_file

    official = torch.load(weights_file, weights_only=True)
    path = tmp_path / os.fsdecode(b"poids_\xe9t\xe9.safetensors")
    save_file(official, path)
    loaded = load_backbone("dinov2_vits14", "hub", str(path), hub_dir=FAKE_HUB, layers=1)
    loaded = loaded.official_state_dict()
    for key in official:
        torch.testing.assert_close(loaded[key], official[key], rtol=0, atol=0)
