"""The hub and timm sources: same official weights, same features, same metrics at 518 px.

The hub side runs tests/fake_dinov2_hub, a minimal stand-in for the official repository
(this machine has no internet); it follows the official model code, not timm's.
"""

import json
import math
import re
import shutil
import warnings
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

import train
from config import BACKBONES, DEFAULT_CLASSES, official_weights_name, parse_args
from conftest import FAKE_HUB, ROOT, load_benchmark, small_memory
from model import (
    FusedAttention,
    Segmentor,
    _with_fused_attention,
    forward_bytes,
    load_backbone,
    load_checkpoint,
    materializes_scores,
    official_weights_url,
    save_checkpoint,
)
from synthetic import OFFICIAL_MODELS, meta_device, meta_official_weights, official_layout
from utils import UserError


def features(backbone, h: int, w: int) -> list[torch.Tensor]:
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return backbone(x)


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg"])
def test_both_sources_load_official_weights_and_agree_at_518(name, weights_file, reg_weights_file):
    path = str(reg_weights_file if name.endswith("_reg") else weights_file)
    hub = load_backbone(name, "hub", path, hub_dir=FAKE_HUB)
    timm = load_backbone(name, "timm", path)
    for a, b in zip(features(hub, 518, 518), features(timm, 518, 518), strict=True):
        assert a.shape == (1, 384, 37, 37)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_sources_at_other_sizes(weights_file, reg_weights_file):
    """What the README states: registers match everywhere, plain models only at 518. Tall and
    wide grids: a positional embedding resampled with its axes swapped would differ."""
    for name, path, exact in (
        ("dinov2_vits14_reg", reg_weights_file, True),
        ("dinov2_vits14", weights_file, False),
    ):
        hub = load_backbone(name, "hub", str(path), hub_dir=FAKE_HUB, layers=1)
        timm = load_backbone(name, "timm", str(path), layers=1)
        for h, w in ((644, 448), (182, 322)):
            (a,), (b,) = features(hub, h, w), features(timm, h, w)
            assert a.shape == (1, 384, h // 14, w // 14)
            rel = ((a - b).norm() / a.norm()).item()
            if exact:
                assert rel < 1e-5
            else:  # offset-0.1 bicubic vs exact-size antialiased resampling of pos_embed
                assert 1e-5 < rel < 0.05


def test_hub_source_uses_a_prefilled_torch_home_offline(torch_home, monkeypatch, weights_file):
    def offline(*args, **kwargs):
        raise URLError("offline")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    hub = load_backbone("dinov2_vits14", "hub", "pretrained")
    timm = load_backbone("dinov2_vits14", "timm", "pretrained")  # reads the same cache file
    assert type(hub.vit).__module__.startswith("hubconf")  # really loaded via torch.hub
    for a, b in zip(features(hub, 518, 518), features(timm, 518, 518), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_hub_attention_runs_fused_with_the_official_results(weights_file):
    """The official layers materialize every (N, N) score matrix; ours must not, yet agree."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fused = load_backbone("dinov2_vits14", "hub", str(weights_file), hub_dir=FAKE_HUB)
    assert not [w for w in caught if "xFormers" in str(w.message)]  # nothing to warn about
    attention = {type(block.attn) for block in fused.vit.blocks}
    assert attention == {FusedAttention}
    with pytest.warns(UserWarning, match="xFormers is not available"):  # as the official code
        official = torch.hub.load(str(FAKE_HUB), "dinov2_vits14", source="local", pretrained=False)
    official.load_state_dict(torch.load(weights_file, weights_only=True), strict=True)
    assert type(official.blocks[0].attn).__name__ == "MemEffAttention"
    assert fused.official_state_dict().keys() == official.state_dict().keys()
    x = torch.randn(2, 3, 98, 126, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = official.get_intermediate_layers(x, n=list(fused.blocks), reshape=True, norm=True)
        got = fused(x)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_the_memory_estimate_counts_scores_where_the_attention_materializes_them(weights_file):
    """bench_attention's official model holds each head's (N, N) scores; FusedAttention and
    timm's fused attention do not, and their estimate is the MLP's hidden layer instead."""
    fused = load_backbone("dinov2_vits14", "hub", str(weights_file), hub_dir=FAKE_HUB)
    with pytest.warns(UserWarning, match="xFormers is not available"):
        official = torch.hub.load(str(FAKE_HUB), "dinov2_vits14", source="local", pretrained=False)
    timm = load_backbone("dinov2_vits14", "timm", str(weights_file))
    assert materializes_scores(official)
    assert not materializes_scores(fused.vit) and not materializes_scores(timm.vit)
    # 300 tokens a side: 6 heads x 300^2 scores outnumber the hidden layer's 4 x 300 x 384
    imgsz = (300 * 14, 14)
    pixels, features = 3 * 300 * 14**2, 4 * 300 * 384
    assert forward_bytes("dinov2_vits14", 4, imgsz, 2, 4, scores=True) == 2 * 4 * (
        pixels + features + 6 * 300**2
    )
    assert forward_bytes("dinov2_vits14", 4, imgsz, 2, 4) == 2 * 4 * (pixels + 2 * features)


def test_a_hub_model_whose_attention_layers_are_not_recognized_runs_them_unchanged(caplog):
    # a later official repository may rename or change its attention classes: warned, not broken
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(8, 2)

    vit = torch.nn.Sequential(Block(), Block())
    layers = [block.attn for block in vit]
    assert _with_fused_attention(vit) is vit
    assert [block.attn for block in vit] == layers
    assert "the hub model's attention layers were not recognized" in caplog.text


def test_hub_dir_without_hubconf_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"has no hubconf\.py"):
        load_backbone("dinov2_vits14", "hub", "random", hub_dir=tmp_path)


def test_a_hub_dir_that_is_no_folder_is_named_as_such(tmp_path):
    # "has no hubconf.py" sent the user looking inside a folder that was not there
    with pytest.raises(UserError, match=r"--hub-dir \S+nope does not exist: point it at a clone"):
        load_backbone("dinov2_vits14", "hub", "random", hub_dir=tmp_path / "nope")
    (tmp_path / "hubconf.py").write_text("")
    with pytest.raises(UserError, match=r"--hub-dir \S+hubconf\.py is a file, not a folder"):
        load_backbone("dinov2_vits14", "hub", "random", hub_dir=tmp_path / "hubconf.py")


def test_an_unknown_source_is_named_not_loaded_as_hub(checkpoint):
    # from Python: "hf" or "Timm" went to torch.hub, and offline its message named hub alone
    with pytest.raises(UserError, match="unknown backbone source 'Timm'; choose hub or timm"):
        load_checkpoint(checkpoint, backbone_source="Timm")


def test_checkpoint_evaluates_the_same_through_either_source_at_518(
    tmp_path, tiny_data, weights_file
):
    torch.manual_seed(0)
    backbone = load_backbone("dinov2_vits14", "hub", str(weights_file), hub_dir=FAKE_HUB, layers=2)
    model = Segmentor(backbone, 2)
    model.head.bn.running_mean.normal_()  # an untrained head scores badly but reproducibly
    ckpt = tmp_path / "ckpt.pth"
    save_checkpoint(ckpt, model, classes=DEFAULT_CLASSES.to_dict(), imgsz=[518, 518], epoch=0)
    scores = {}
    for source in ("hub", "timm"):
        out = tmp_path / source
        argv = ["--eval-only", "--model", str(ckpt), "--data", str(tiny_data), "--workers", "0",
                "--out-dir", str(out), "--backbone-source", source]  # fmt: skip
        if source == "hub":  # timm builds the architecture itself: --hub-dir would be a warning
            argv += ["--hub-dir", str(FAKE_HUB)]
        train.main(*parse_args(train.get_args_parser(), argv))
        scores[source] = json.loads((out / "eval_metrics.json").read_text())
    assert scores["hub"]["backbone_source"] == "hub" and scores["timm"]["backbone_source"] == "timm"
    for key in ("miou", "pixel_accuracy"):
        assert scores["hub"][key] == pytest.approx(scores["timm"][key], abs=1e-6)


def test_layout_tables_match_the_shared_layout_file():
    shared = ROOT.parent / "shared" / "dinov2_checkpoint_layout.txt"
    if not shared.is_file():
        pytest.skip("shared/ is not beside this checkout")
    sections = shared.read_text().split("\n## ")[1:]
    assert len(sections) >= 5  # vits14, vitb14, vitl14, vitg14, vits14_reg at least
    for section in sections:
        header, *lines = section.strip().splitlines()
        name = header.split(":")[0]
        counts = re.fullmatch(
            r"\S+: ([\d,]+) values, (\d+) tensors, (\d+) blocks, embed_dim (\d+), heads (\d+)",
            header,
        )
        values, tensors, depth, dim, heads = (int(n.replace(",", "")) for n in counts.groups())
        model = OFFICIAL_MODELS[name]
        assert (model.depth, model.embed_dim, model.num_heads) == (depth, dim, heads), name
        listed = {}  # blocks 1..N-1 repeat block 0's keys
        for line in lines:
            key, shape = line.split("\t")
            for i in range(depth) if key.startswith("blocks.0.") else [None]:
                listed[key if i is None else key.replace("blocks.0.", f"blocks.{i}.", 1)] = tuple(
                    json.loads(shape)
                )
        layout = official_layout(name)
        assert layout == listed, name
        assert (len(layout), sum(math.prod(s) for s in layout.values())) == (tensors, values), name


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_loads_its_official_layout_strictly_through_every_source(
    name, torch_home, monkeypatch, tmp_path
):
    """Each row is the official checkpoint's shape, and that checkpoint loads strictly through the
    hub (--hub-dir, or the TORCH_HOME cache) and timm (a --weights file, or the cache). On the
    meta device: shapes without values, so ViT-g/14's 1.1 billion cost no memory."""
    spec = BACKBONES[name]
    model = OFFICIAL_MODELS[spec.hub_name]  # a row may feed the head other blocks of a model
    row = (spec.embed_dim, spec.depth, spec.num_heads, spec.registers, spec.swiglu)
    assert row == (model.embed_dim, model.depth, model.num_heads, model.registers, model.swiglu)
    if name == spec.hub_name:
        assert spec.head_blocks == tuple(range(spec.depth - 4, spec.depth))  # the official "+ms"

    def offline(*args, **kwargs):
        raise URLError("offline")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    weights = tmp_path / official_weights_name(name)
    torch.save(meta_official_weights(spec.hub_name), weights)
    shutil.copy(weights, torch_home / "hub" / "checkpoints" / official_weights_name(name))
    for source, path, hub_dir in [
        ("hub", str(weights), FAKE_HUB),
        ("hub", "pretrained", None),
        ("timm", str(weights), None),
        ("timm", "pretrained", None),
    ]:
        with meta_device():
            backbone = load_backbone(name, source, path, hub_dir=hub_dir)
        shapes = {key: tuple(shape) for key, shape in backbone.official_shapes().items()}
        assert shapes == official_layout(spec.hub_name), (source, path)
        assert backbone.vit.blocks[0].attn.num_heads == model.num_heads


def test_attention_benchmark_compares_both_paths(capsys):
    # its main in this process: a process of its own would import torch and timm again
    bench = load_benchmark("bench_attention")
    argv = ["--hub-dir", str(FAKE_HUB), "--imgsz", "56", "70", "--reps", "1", "--device", "cpu"]
    bench.main(bench.get_args_parser().parse_args(argv))
    out = capsys.readouterr().out
    assert "official attention" in out and "FusedAttention" in out
    difference = float(out.split("max abs difference ")[1].split(",")[0])
    assert difference < 1e-4


def test_attention_benchmark_counts_the_official_scores_against_memory(monkeypatch):
    """At 2800x2800 the official layers' scores alone take 36 GB (6 heads x 40,000^2 float32),
    where FusedAttention's run needs 0.5 GB: the process was killed outright on the CPU."""
    small_memory(monkeypatch, 16)
    bench = load_benchmark("bench_attention")
    argv = ["--hub-dir", str(FAKE_HUB), "--imgsz", "2800", "2800", "--device", "cpu"]
    with pytest.raises(UserError, match=r"--imgsz 2800 2800 \(200x200 patches .* needs at least 3"):
        bench.main(bench.get_args_parser().parse_args(argv))


# --batch 0 and --imgsz 0 0 were tracebacks, --reps 0 printed "inf ms" and a speed-up of nan
@pytest.mark.parametrize("flags", [["--batch", "0"], ["--reps", "0"], ["--imgsz", "0", "0"]])
def test_attention_benchmark_refuses_empty_runs(flags):
    bench = load_benchmark("bench_attention")
    argv = ["--hub-dir", str(FAKE_HUB), "--device", "cpu", *flags]
    with pytest.raises(UserError, match=r"must be at least"):
        bench.main(bench.get_args_parser().parse_args(argv))


def test_attention_benchmark_offline_names_only_its_own_flag(tmp_path, monkeypatch):
    """Offline without --hub-dir, it named train.py's --weights FILE and --backbone-source timm,
    neither of which this benchmark has."""

    def offline(*args, **kwargs):
        raise URLError("offline")

    bench = load_benchmark("bench_attention")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    argv = ["--imgsz", "28", "28", "--reps", "1", "--device", "cpu"]
    with pytest.raises(UserError, match="--hub-dir DIR") as caught:
        bench.main(bench.get_args_parser().parse_args(argv))
    message = str(caught.value)
    assert "--weights" not in message and "--backbone-source" not in message, message


@pytest.mark.parametrize("source", ["hub", "timm"])
@pytest.mark.parametrize("content", [b"", b"<html>404 Not Found</html>"])
def test_a_damaged_cached_weights_file_is_named_with_the_fix(torch_home, source, content):
    """An interrupted copy or an error page saved under the cache name: a message, no traceback."""
    cached = torch_home / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    cached.write_bytes(content)
    with pytest.raises(UserError, match=rf"cached official weights {cached}.*delete it"):
        load_backbone("dinov2_vits14", source, "pretrained")


def test_offline_checkpoint_loading_names_only_flags_that_apply(tmp_path, monkeypatch):
    """Inference and export take their weights from the checkpoint and have no --weights: the
    offline message must not send users to it (nor to downloading the official file)."""

    def offline(*args, **kwargs):
        raise URLError("offline")

    backbone = load_backbone("dinov2_vits14", "hub", "random", hub_dir=FAKE_HUB, layers=1)
    ckpt = tmp_path / "hub_trained.pth"
    save_checkpoint(ckpt, Segmentor(backbone, 2), classes=DEFAULT_CLASSES.to_dict(), imgsz=[56, 56])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(UserError) as caught:
        load_checkpoint(ckpt)
    message = str(caught.value)
    assert "--backbone-source timm" in message and "--hub-dir" in message
    assert "--weights" not in message, message


def test_offline_a_checkpoint_trained_with_hub_dir_names_that_folder(tmp_path, monkeypatch):
    """--hub-dir is not taken from the checkpoint (it may name another machine's folder): a run
    trained offline with it, then used without it, stopped with the generic offline options and
    never said that --hub-dir was all it lacked."""

    def offline(*args, **kwargs):
        raise URLError("offline")

    backbone = load_backbone("dinov2_vits14", "hub", "random", hub_dir=FAKE_HUB, layers=1)
    ckpt = tmp_path / "hub_dir_trained.pth"
    save_checkpoint(
        ckpt,
        Segmentor(backbone, 2),
        classes=DEFAULT_CLASSES.to_dict(),
        imgsz=[56, 56],
        args={"hub_dir": str(FAKE_HUB)},
    )
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(UserError, match=rf"trained with --hub-dir {FAKE_HUB}: pass --hub-dir"):
        load_checkpoint(ckpt)
    load_checkpoint(ckpt, hub_dir=FAKE_HUB)  # which is the fix it names


@pytest.mark.parametrize("source", ["timm", "hub"])
@pytest.mark.parametrize("key", ["pos_embed", "register_tokens"])
def test_a_register_checkpoint_missing_a_backbone_key_is_named(
    tmp_path, reg_weights_file, source, key
):
    """timm converts the official register layout itself: without the check it raised
    KeyError: 'pos_embed', or a reshape error that named no key."""
    backbone = load_backbone("dinov2_vits14_reg", "timm", str(reg_weights_file), layers=1)
    ckpt = tmp_path / "edited.pth"
    save_checkpoint(ckpt, Segmentor(backbone, 2), classes=DEFAULT_CLASSES.to_dict(), imgsz=[56, 56])
    payload = torch.load(ckpt, weights_only=True)
    del payload["model"]["backbone"][key]
    torch.save(payload, ckpt)
    with pytest.raises(UserError, match=rf"{ckpt} does not fit .*1 missing keys \(e.g. {key}\)"):
        load_checkpoint(ckpt, backbone_source=source, hub_dir=FAKE_HUB if source == "hub" else None)


@pytest.mark.parametrize("source", ["hub", "timm"])
def test_cached_weights_of_another_model_are_named_with_the_fix(
    torch_home, reg_weights_file, source
):
    """timm's reading of the cache called the file --weights and hinted --backbone
    dinov2_vits14_reg, which reads another cache file; the hub source said to delete it."""
    cached = torch_home / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    cached.write_bytes(reg_weights_file.read_bytes())
    with pytest.raises(UserError, match=rf"cached official weights {cached}.*delete it") as caught:
        load_backbone("dinov2_vits14", source, "pretrained")
    assert "--backbone" not in str(caught.value)


def test_offline_random_weights_on_the_hub_source_names_the_flag_that_works(tmp_path, monkeypatch):
    """--weights random still needs the hub code: offline, the message must say to add
    --backbone-source timm, not suggest --weights random, which was just passed."""

    def offline(*args, **kwargs):
        raise URLError("offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(UserError) as caught:
        load_backbone("dinov2_vits14", "hub", "random")
    message = str(caught.value)
    assert "--backbone-source timm --weights random" in message, message
    assert "--hub-dir" in message
    assert "--weights FILE" not in message, message


def test_a_hub_clone_without_the_model_says_to_update_it(tmp_path):
    # a clone from before the register models: the offline options were no help
    (tmp_path / "hubconf.py").write_text("def dinov2_vits14(**kwargs):\n    pass\n")
    with pytest.raises(UserError, match=rf"--hub-dir {tmp_path} has no dinov2_vits14_reg: .*git"):
        load_backbone("dinov2_vits14_reg", "hub", None, hub_dir=tmp_path)


def test_hub_code_that_fails_to_import_is_a_message(tmp_path):
    """A partial clone, or one whose modules need a package this environment lacks: torch.hub
    raised the ModuleNotFoundError of hubconf.py as a traceback."""
    (tmp_path / "hubconf.py").write_text("import dinov2_not_installed\n")
    with pytest.raises(UserError, match=rf"--hub-dir {tmp_path} failed to import .*dinov2_not"):
        load_backbone("dinov2_vits14", "hub", None, hub_dir=tmp_path)


class _OpensAFile:
    """Unpickled without weights_only, this creates the file it names."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_the_hub_source_reads_cached_weights_with_weights_only(torch_home, tmp_path):
    """torch.hub.load(..., pretrained=True) loads the cache file with weights_only=False: a
    pickle there ran, then load_state_dict raised a TypeError traceback."""
    cached = torch_home / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    marker = tmp_path / "pickle_ran"
    torch.save(_OpensAFile(marker), cached)
    with pytest.raises(UserError, match=rf"cached official weights {cached}.*delete it"):
        load_backbone("dinov2_vits14", "hub", "pretrained")
    assert not marker.exists()


def test_the_hub_source_downloads_missing_weights_into_the_cache(torch_home, monkeypatch):
    cached = torch_home / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    official = cached.read_bytes()
    cached.unlink()
    fetched = []

    def download(url, dst, *args, **kwargs):
        fetched.append(url)
        Path(dst).write_bytes(official)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    hub = load_backbone("dinov2_vits14", "hub", "pretrained")
    # the URL of the official hubconf.py
    assert fetched == [
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"
    ]
    assert official_weights_url("dinov2_vitl14_reg") == (
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth"
    )
    assert cached.is_file()
    loaded = hub.official_state_dict()
    for key, value in torch.load(cached, weights_only=True).items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_the_hub_source_offline_without_cached_weights_names_the_options(torch_home, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("offline")

    (torch_home / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth").unlink()
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(UserError, match=r"could not download .*Offline options: fill"):
        load_backbone("dinov2_vits14", "hub", "pretrained")


def test_hub_dir_with_the_timm_source_is_a_warning_naming_the_flag(tmp_path, caplog):
    """--hub-dir with --backbone-source timm, or with a checkpoint trained through timm, was
    silently ignored: the user believed the backbone came from that clone."""
    with caplog.at_level("WARNING", logger="dinoseg"):
        backbone = load_backbone("dinov2_vits14", "timm", "random", hub_dir=FAKE_HUB, layers=1)
    assert f"--hub-dir {FAKE_HUB} has no effect with --backbone-source timm" in caplog.text
    ckpt = tmp_path / "timm_trained.pth"
    save_checkpoint(ckpt, Segmentor(backbone, 2), classes=DEFAULT_CLASSES.to_dict(), imgsz=[56, 56])
    caplog.clear()
    with caplog.at_level("WARNING", logger="dinoseg"):
        load_checkpoint(ckpt, hub_dir=FAKE_HUB)
    assert caplog.text.count("has no effect") == 1, caplog.text
    assert f"--hub-dir {FAKE_HUB} has no effect: {ckpt} was trained through timm" in caplog.text
    assert "--backbone-source hub" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="dinoseg"):
        load_checkpoint(ckpt, backbone_source="hub", hub_dir=FAKE_HUB)
    assert "has no effect" not in caplog.text


@pytest.mark.parametrize("hub_dir", [None, FAKE_HUB])
def test_a_torch_home_that_cannot_be_written_is_named_not_taken_for_no_network(
    tmp_path, monkeypatch, hub_dir
):
    """A TORCH_HOME torch.hub cannot write (a read-only home in a container; here a file, as
    root may write anywhere) failed the hub code's or the weights' download with "Offline
    options: fill the torch.hub cache on a machine with internet", online too."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    (tmp_path / "home").write_text("not a folder")
    with pytest.raises(UserError) as caught:
        load_backbone("dinov2_vits14", "hub", "pretrained", hub_dir=hub_dir)
    message = str(caught.value)
    assert f"torch.hub cannot write its cache folder {tmp_path / 'home' / 'hub'}" in message
    assert "set TORCH_HOME to a folder you can write" in message
    assert "Offline options" not in message
