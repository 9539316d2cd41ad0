"""--loss: the Dice loss, the updates that follow it, its flag and its resume."""

import pytest
import torch
import torch.nn.functional as F
import yaml

import train
from config import parse_args
from conftest import PixelClassifier
from engine import dice_loss, train_one_epoch
from leftover_workers import leftover_workers_end_at_once  # noqa: F401 (autouse)
from model import peek_checkpoint
from test_class_weights import RecordingSGD, batches, group_gradients, one_batch_loss, run

CPU = torch.device("cpu")


def one_hot_dice(logits, masks, class_weights=None) -> torch.Tensor:
    """dice_loss written the plain way, with one-hot truth: the reference."""
    k = logits.shape[1]
    labelled = (masks != 255)[:, None]
    probs = logits.softmax(1) * labelled
    true = F.one_hot(masks.where(masks != 255, 0), k).permute(0, 3, 1, 2) * labelled
    overlap, predicted, count = ((x.sum((0, 2, 3))) for x in (probs * true, probs, true))
    weights = (count > 0).float() * (1 if class_weights is None else class_weights)
    dice = 2 * overlap / (predicted + count)
    return (weights * (1 - dice)).nansum() / weights.sum()


def test_dice_of_even_scores_by_hand():
    # p = 0.5 for both classes on the 3 labelled pixels, truth 0, 1, 1 (one pixel ignored):
    # class 0 scores 2 * 0.5 / (1.5 + 1) = 0.4, class 1 scores 2 * 1 / (1.5 + 2) = 4 / 7
    logits = torch.zeros(1, 2, 1, 4)
    masks = torch.tensor([[[0, 1, 255, 1]]])
    assert dice_loss(logits, masks).item() == pytest.approx(1 - (0.4 + 4 / 7) / 2)
    # class weights weigh the classes' scores in the mean
    weighted = dice_loss(logits, masks, torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx(1 - (3 * 0.4 + 4 / 7) / 4)


@pytest.mark.parametrize("class_weights", [None, torch.tensor([0.5, 2.0, 1.0, 4.0])])
def test_dice_and_its_gradient_match_the_one_hot_formula(class_weights):
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 7, requires_grad=True)
    masks = torch.randint(0, 3, (3, 5, 7))  # class 3 is in no mask
    masks[0, :2] = 255
    masks[2, :, 3:] = 255
    got = dice_loss(logits, masks, class_weights)
    (grad,) = torch.autograd.grad(got, logits)
    want = one_hot_dice(logits, masks, class_weights)
    (want_grad,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, want_grad)
    assert grad[masks[:, None].expand_as(grad) == 255].abs().max() == 0, "ignored pixels"


def test_a_perfect_batch_scores_0_and_one_without_labelled_pixels_adds_nothing():
    masks = torch.tensor([[[1, 1], [1, 0]]])
    logits = 50 * F.one_hot(masks, 3).permute(0, 3, 1, 2).float()  # class 2 absent: not scored
    assert dice_loss(logits, masks).item() == pytest.approx(0, abs=1e-6)
    logits = torch.randn(2, 3, 2, 2, requires_grad=True)
    loss = dice_loss(logits, torch.full((2, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0 and logits.grad.abs().max() == 0
    # nor do present classes all weighing 0
    loss = dice_loss(logits, masks.expand(2, 2, 2), torch.tensor([0.0, 0.0, 1.0]))
    assert loss.item() == 0


@pytest.mark.parametrize("loss", ["dice", "ce+dice"])
def test_an_accumulated_update_follows_the_mean_dice_of_its_batches(loss):
    # the Dice loss is taken per batch, as the flag's help says: the group's update follows the
    # mean of its batches' losses, plus, with ce+dice, the cross-entropy of one batch of them all
    torch.manual_seed(0)
    model = PixelClassifier()
    weights = torch.tensor([0.4, 2.0])
    loader = batches()

    def group_loss(group: list) -> torch.Tensor:
        dice = sum(dice_loss(model(im, None), m, weights) for im, m, _ in group) / len(group)
        return dice + one_batch_loss(model, group, weights) if loss == "ce+dice" else dice

    expected = group_gradients(model, loader, 2, group_loss)
    optimizer = RecordingSGD(model)
    stats = train_one_epoch(model, loader, optimizer, CPU, 2, accum=2, class_weights=weights,
                            loss=loss)  # fmt: skip
    assert len(optimizer.seen) == len(expected) == 3
    for got, want in zip(optimizer.seen, expected, strict=True):
        torch.testing.assert_close(got, want)
    # the reported loss is the cross-entropy whatever the updates follow (lr 0: the same model)
    ce_only = train_one_epoch(model, loader, RecordingSGD(model), CPU, 2, class_weights=weights)
    assert stats["loss"] == pytest.approx(ce_only["loss"], rel=1e-6)


def test_dice_training_lifts_the_dice_score():
    # a 1x1 convolution learns a colour rule from the Dice loss alone
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8)
    masks = (images[:, 0] > 0.5).long()
    loader = [(images[i : i + 2], masks[i : i + 2], None) for i in (0, 2)]
    model = PixelClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = dice_loss(model(images, None), masks).item()
    for _ in range(60):
        stats = train_one_epoch(model, loader, optimizer, CPU, 2, loss="dice")
    after = dice_loss(model(images, None), masks).item()
    assert after < before / 4, (before, after)
    assert stats["miou"] > 0.9


def test_a_run_records_its_loss_and_a_resume_keeps_or_changes_it(
    tmp_path, fresh_data, weights_file, caplog
):
    parser = train.get_args_parser()
    assert parse_args(parser, [])[0].loss == "ce"
    (tmp_path / "c.yaml").write_text("loss: dice\n")
    assert parse_args(parser, ["--config", str(tmp_path / "c.yaml")])[0].loss == "dice"
    with pytest.raises(SystemExit):
        parse_args(parser, ["--loss", "focal"])

    out = tmp_path / "out"
    run(fresh_data, out, weights_file, "--loss", "ce+dice", "--epochs", "1",
        "--cache-features", "memory")  # fmt: skip
    assert yaml.safe_load((out / "args.yaml").read_text())["loss"] == "ce+dice"
    last = out / "last_model.pth"
    assert peek_checkpoint(last)["args"]["loss"] == "ce+dice"
    saved = tmp_path / "epoch1.pth"
    saved.write_bytes(last.read_bytes())

    with caplog.at_level("INFO", logger="dinoseg"):
        run(fresh_data, out, weights_file, "--resume", str(last), "--epochs", "2")
    assert "--loss ce+dice" in caplog.text and "(was ce+dice)" not in caplog.text
    assert peek_checkpoint(last)["args"]["loss"] == "ce+dice"

    caplog.clear()
    last.write_bytes(saved.read_bytes())
    run(fresh_data, out, weights_file, "--resume", str(last), "--epochs", "2", "--loss", "ce")
    assert "--loss ce (was ce+dice)" in caplog.text
    assert yaml.safe_load((out / "args.yaml").read_text())["loss"] == "ce"
