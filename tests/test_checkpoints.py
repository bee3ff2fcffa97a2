"""Checkpoint files (scripts/checkpoints.py): a file, a list or a folder of them, each checked
against the network in one line before any loads; ensembles; fine-tuning's start; half precision."""

from __future__ import annotations

import json

import pytest
import torch

from scripts.checkpoints import (
    check_checkpoint,
    checkpoint_files,
    ensemble,
    load_initial_weights,
    recorded_setting,
    save_half_precision,
)


def test_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="checkpoint .*model.pt not found: train first"):
        check_checkpoint(str(tmp_path / "model.pt"))


def small_unet(channels=(4, 8)):
    from monai.networks.nets import UNet

    return UNet(2, 3, 1, channels, (2,), num_res_units=1, norm="instance")


def test_a_checkpoint_of_this_network_passes_as_weights_or_as_a_last_pt(tmp_path):
    import torch

    network = small_unet()
    torch.save(network.state_dict(), tmp_path / "model.pt")
    torch.save({"model": network.state_dict(), "trainer": {"epoch": 1}}, tmp_path / "last.pt")
    for name in ("model.pt", "last.pt"):
        assert check_checkpoint(str(tmp_path / name), small_unet()) == str(tmp_path / name)


@pytest.mark.parametrize(
    "saved, expected",
    [
        ("wider", "weights of another shape, e.g. "),  # the same architecture with other channels
        ("other", "15 of the network's weights missing, 2 unknown, e.g. "),
        ("list", "not a dictionary of weights"),
    ],
)
def test_a_checkpoint_of_another_network_is_one_line_saying_which_recipe_to_run_with(tmp_path, saved, expected):
    import torch

    weights = {
        "wider": lambda: small_unet((8, 16)).state_dict(),
        "other": lambda: torch.nn.Linear(2, 2).state_dict(),
        "list": lambda: [1, 2, 3],
    }[saved]()
    torch.save(weights, tmp_path / "model.pt")
    with pytest.raises(SystemExit) as error:
        check_checkpoint(str(tmp_path / "model.pt"), small_unet())
    message = str(error.value)
    assert message.startswith(f"error: checkpoint {tmp_path / 'model.pt'} holds the weights of another network (")
    assert expected in message.splitlines()[0] and len(message.splitlines()) == 1
    assert message.endswith("or pass the checkpoint of this network") and "flexunet_resnext.yaml" in message


@pytest.mark.parametrize("content", [b"not a checkpoint", b"", b"PK\x03\x04 a broken zip"])
def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, content):
    (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(
        SystemExit, match=r"model.pt cannot be read as PyTorch weights \(\w+\): pass a model.pt saved by training$"
    ):
        check_checkpoint(str(tmp_path / "model.pt"), small_unet())


def test_a_torchscript_network_brings_its_own_weights_and_is_not_checked(tmp_path):
    import torch

    scripted = torch.jit.script(small_unet())
    scripted.save(str(tmp_path / "model.ts"))
    assert check_checkpoint(str(tmp_path / "model.ts"), torch.jit.load(str(tmp_path / "model.ts"))) == str(
        tmp_path / "model.ts"
    )


def saved(path, network):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def seeded_unet(seed):
    torch.manual_seed(seed)
    return small_unet()


def test_a_folder_names_its_fold_members_in_fold_order_else_its_model(tmp_path):
    for fold in (10, 2, 0):  # fold10 comes after fold2: numbers, not names, order them
        saved(tmp_path / "ensemble" / f"fold{fold}" / "model.pt", small_unet())
    saved(tmp_path / "ensemble" / "model.pt", small_unet())  # beside the folds: the folds are the model
    (tmp_path / "ensemble" / "fold3").mkdir()  # a fold not trained yet is no member
    assert checkpoint_files(str(tmp_path / "ensemble")) == [
        tmp_path / "ensemble" / f"fold{k}" / "model.pt" for k in (0, 2, 10)
    ]
    saved(tmp_path / "single" / "model.pt", small_unet())
    assert checkpoint_files(tmp_path / "single") == [tmp_path / "single" / "model.pt"]
    files = [str(tmp_path / "single" / "model.pt"), str(tmp_path / "ensemble" / "fold2" / "model.pt")]
    assert checkpoint_files(files) == [tmp_path / "single" / "model.pt", tmp_path / "ensemble" / "fold2" / "model.pt"]


def test_an_empty_folder_or_a_missing_member_of_a_list_is_one_line_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        SystemExit,
        match=f"^error: checkpoint folder {tmp_path / 'empty'} holds neither "
        r"fold<k>/model.pt nor model.pt: train first",
    ):
        check_checkpoint(str(tmp_path / "empty"), small_unet())
    good = saved(tmp_path / "good.pt", small_unet())
    with pytest.raises(SystemExit, match=f"^error: checkpoint {tmp_path / 'gone.pt'} not found: train first"):
        ensemble(small_unet(), [str(good), str(tmp_path / "gone.pt")])
    with pytest.raises(SystemExit, match="^error: ckpt_path is an empty list"):
        ensemble(small_unet(), [])


def test_one_bad_member_stops_the_ensemble_before_any_weights_load(tmp_path):
    network = seeded_unet(0)
    before = {key: value.clone() for key, value in network.state_dict().items()}
    saved(tmp_path / "fold0" / "model.pt", seeded_unet(1))
    (tmp_path / "fold1").mkdir()
    torch.save(small_unet((8, 16)).state_dict(), tmp_path / "fold1" / "model.pt")
    with pytest.raises(SystemExit) as error:
        ensemble(network, str(tmp_path))
    bad = tmp_path / "fold1" / "model.pt"
    assert str(error.value).startswith(f"error: checkpoint {bad} holds the weights of another")
    assert len(str(error.value).splitlines()) == 1
    for key, value in network.state_dict().items():  # the good member's weights were not loaded either
        torch.testing.assert_close(value, before[key])


def test_one_checkpoint_loads_into_the_network_itself_and_several_into_copies_of_it(tmp_path):
    members = [seeded_unet(seed) for seed in (1, 2)]
    paths = [saved(tmp_path / f"fold{k}" / "model.pt", member) for k, member in enumerate(members)]
    network = seeded_unet(0)
    assert ensemble(network, str(paths[0])) is network
    torch.testing.assert_close(network.state_dict(), members[0].state_dict())
    loaded = ensemble(seeded_unet(0), str(tmp_path))
    assert isinstance(loaded, torch.nn.ModuleList) and len(loaded) == 2
    for member, expected in zip(loaded, members, strict=True):
        torch.testing.assert_close(member.state_dict(), expected.state_dict())
    assert loaded[0].model[0].conv.unit0.conv.weight is not loaded[1].model[0].conv.unit0.conv.weight


def test_half_precision_weights_load_into_the_float_network_within_rounding(tmp_path):
    trained = seeded_unet(3)
    half = save_half_precision(saved(tmp_path / "model.pt", trained), tmp_path / "shipped" / "model.pt")
    stored = torch.load(half, weights_only=True)
    assert {value.dtype for value in stored.values() if value.is_floating_point()} == {torch.float16}
    network = ensemble(seeded_unet(0), str(tmp_path / "shipped"))
    assert {value.dtype for value in network.state_dict().values()} == {torch.float32}
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(network.state_dict()[key], value, atol=2e-3, rtol=1e-3)


def test_fine_tuning_starts_from_one_model_and_refuses_an_ensemble(tmp_path):
    saved(tmp_path / "start" / "model.pt", seeded_unet(4))
    network = seeded_unet(0)
    load_initial_weights(network, None)  # from scratch: nothing changes
    torch.testing.assert_close(network.state_dict(), seeded_unet(0).state_dict())
    load_initial_weights(network, str(tmp_path / "start"))
    torch.testing.assert_close(network.state_dict(), seeded_unet(4).state_dict())
    for fold in (0, 1):
        saved(tmp_path / "ensemble" / f"fold{fold}" / "model.pt", small_unet())
    with pytest.raises(
        SystemExit,
        match=r"holds an ensemble of 2; fine-tuning starts from one model: pass one of "
        r"its files, e.g. .*fold0/model.pt$",
    ):
        load_initial_weights(network, str(tmp_path / "ensemble"))


def test_fine_tuning_refuses_a_model_learnt_at_another_scale(tmp_path):
    saved(tmp_path / "start" / "model.pt", seeded_unet(4))
    (tmp_path / "start" / "best.json").write_text(json.dumps({"working_mpp": 0.5, "downscale": 2, "patch_size": 256}))
    network = seeded_unet(0)
    with pytest.raises(SystemExit, match=r"start/model.pt was trained with working_mpp 0.5 .*--working_mpp 0.5"):
        load_initial_weights(network, str(tmp_path / "start"), {"downscale": 2, "working_mpp": 1.0})
    torch.testing.assert_close(network.state_dict(), seeded_unet(0).state_dict())  # nothing was loaded
    # the same scale starts from it; a recorded patch size is not a scale (the run's own is used)
    load_initial_weights(network, str(tmp_path / "start"), {"downscale": 2, "working_mpp": 0.5})
    torch.testing.assert_close(network.state_dict(), seeded_unet(4).state_dict())


def test_members_trained_at_another_working_resolution_are_one_line_naming_the_file(tmp_path):
    saved(tmp_path / "fold0" / "model.pt", small_unet())
    (tmp_path / "fold0" / "best.json").write_text(json.dumps({"metric": 0.8, "epoch": 5, "downscale": 2}))
    saved(tmp_path / "fold1" / "model.pt", small_unet())
    (tmp_path / "fold1" / "best.json").write_text(json.dumps({"metric": 0.7, "epoch": 5, "downscale": 4}))
    saved(tmp_path / "fold2" / "model.pt", small_unet())  # no record: taken as it is
    with pytest.raises(SystemExit) as error:
        ensemble(small_unet(), str(tmp_path), {"downscale": 2})
    assert str(error.value) == (
        f"error: checkpoint {tmp_path / 'fold1' / 'model.pt'} was trained with downscale 4 "
        f"({tmp_path / 'fold1' / 'best.json'}), this run works at downscale 2: pass "
        "--downscale 4, or only checkpoints trained with downscale 2"
    )
    assert len(ensemble(small_unet(), [str(tmp_path / f"fold{k}" / "model.pt") for k in (0, 2)], {"downscale": 2})) == 2


def test_inference_takes_the_scale_its_models_were_trained_at_and_refuses_members_that_disagree(tmp_path):
    for member, working_mpp in enumerate((1.0, 1.0, 0.5)):
        saved(tmp_path / f"fold{member}" / "model.pt", small_unet())
        (tmp_path / f"fold{member}" / "best.json").write_text(json.dumps({"downscale": 2, "working_mpp": working_mpp}))
    pair = [str(tmp_path / f"fold{k}" / "model.pt") for k in (0, 1)]
    assert recorded_setting(pair, "working_mpp") == 1.0
    assert recorded_setting(pair, "not_recorded") is None
    saved(tmp_path / "plain" / "model.pt", small_unet())  # no record: taken as it is, so it cannot disagree
    assert recorded_setting([*pair, str(tmp_path / "plain" / "model.pt")], "working_mpp") == 1.0
    with pytest.raises(SystemExit) as error:
        recorded_setting(str(tmp_path), "working_mpp")
    message = str(error.value)
    assert "different working_mpp" in message and str(tmp_path / "fold2" / "model.pt") in message
    assert "\n" not in message


def test_a_working_mpp_that_contradicts_the_models_is_one_line_not_a_silent_rescale(tmp_path):
    saved(tmp_path / "model.pt", small_unet())
    (tmp_path / "best.json").write_text(json.dumps({"downscale": 2, "working_mpp": 1.0}))
    with pytest.raises(SystemExit) as error:
        ensemble(small_unet(), str(tmp_path / "model.pt"), {"downscale": 2, "working_mpp": 0.5})
    assert "trained with working_mpp 1.0" in str(error.value) and "pass --working_mpp 1.0" in str(error.value)
    assert ensemble(small_unet(), str(tmp_path / "model.pt"), {"downscale": 2, "working_mpp": 1.0}) is not None
