"""The window inferer (scripts/inferers.py): uint8 windows scaled on the way in, channels-last
layout, flip TTA as the mean of the flipped-back outputs, ensembles as the mean of the members'
probabilities, and the warm-up thread."""

from __future__ import annotations

import torch

import scripts.inferers
from scripts.inferers import WindowInferer


def network(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3)).eval()


def test_uint8_windows_give_what_their_0_to_1_floats_give():
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    inferer, model = WindowInferer(amp=False), network()
    with torch.no_grad():
        torch.testing.assert_close(inferer(pixels, model), inferer(pixels.float() / 255, model))
        assert inferer(pixels, model).dtype == torch.float32
    prepared = inferer._prepared(pixels)  # laid out channels-last while still uint8, then scaled
    assert prepared.dtype == torch.float32 and prepared.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(prepared, pixels.float() / 255)


def test_channels_last_changes_the_layout_not_the_values():
    inputs = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = network()(inputs)
        torch.testing.assert_close(WindowInferer(amp=False)(inputs, network()), expected)
        torch.testing.assert_close(WindowInferer(amp=False, channels_last=False)(inputs, network()), expected)


def test_flip_tta_is_the_mean_of_the_four_flipped_back_outputs():
    inputs, model = torch.rand(1, 3, 16, 20), network()
    with torch.no_grad():
        flipped = [
            torch.flip(model(torch.flip(inputs, dims)), dims) if dims else model(inputs)
            for dims in ((), (2,), (3,), (2, 3))
        ]
        tta = WindowInferer(amp=False, tta=True)(inputs, model)
    torch.testing.assert_close(tta, sum(flipped) / 4)
    assert not torch.allclose(tta, flipped[0])  # the flips do change this network's output


def test_an_ensemble_gives_the_logit_of_its_members_mean_probability_each_with_its_flips():
    inputs, members = torch.rand(2, 3, 16, 20), [network(seed) for seed in (0, 1, 2)]
    batches = []
    members[0].register_forward_pre_hook(lambda module, args: batches.append(args[0]))
    with torch.no_grad():
        tta = WindowInferer(amp=False, tta=True)
        alone = [tta(inputs, member) for member in members]
        batches.clear()
        output = tta(inputs, torch.nn.ModuleList(members))
        assert len(batches) == 4 and all(batch.shape == inputs.shape for batch in batches)  # its 4 flips, whole batches
        single = WindowInferer(amp=False, tta=True)(inputs, torch.nn.ModuleList(members[:1]))
    expected = sum(torch.sigmoid(logits) for logits in alone) / 3
    torch.testing.assert_close(torch.sigmoid(output), expected)
    assert not torch.allclose(torch.sigmoid(output), torch.sigmoid(alone[0]), atol=1e-3)  # the members differ
    torch.testing.assert_close(torch.sigmoid(single), torch.sigmoid(alone[0]))  # one member: its own probability


def test_warm_up_runs_in_a_thread_and_leaves_the_weights_loaded_after_it(monkeypatch):
    monkeypatch.setattr(scripts.inferers, "WARM_UP_DEVICES", ("cpu",))  # the GPU path, on the CPU
    inferer, model, trained = WindowInferer(amp=False), network(), network()
    with torch.no_grad():
        trained[0].weight.mul_(2)
    inferer.warm_up(model, batch_size=2, roi=16, device="cpu")
    assert inferer._warming is not None  # started, not run in line
    model.load_state_dict(trained.state_dict())  # as the checkpoint loader does, maybe while it runs
    inputs = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        output = inferer(inputs, model)
        torch.testing.assert_close(output, trained(inputs))
    assert inferer._warming is None  # the call waited for it
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_after_a_warm_up_a_short_batch_runs_padded_to_the_warm_up_batch(monkeypatch):
    monkeypatch.setattr(scripts.inferers, "WARM_UP_DEVICES", ("cpu",))  # the GPU path, on the CPU
    inferer, model = WindowInferer(amp=False), network()
    shapes = []
    model.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(inputs[0].shape)))
    inferer.warm_up(model, batch_size=4, roi=16, device="cpu")
    inputs = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        output = inferer(inputs, model)
        torch.testing.assert_close(output, model(inputs))
    assert shapes[:2] == [(4, 3, 16, 16), (4, 3, 16, 16)]  # the warm-up's batch, then the short one padded
    assert output.shape == (3, 1, 14, 14)


def test_warm_up_does_nothing_on_a_cpu():
    inferer = WindowInferer()
    inferer.warm_up(network(), batch_size=2, roi=16, device="cpu")
    assert inferer._warming is None
