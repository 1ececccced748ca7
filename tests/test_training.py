"""The training utilities both trainers share (sdcourse.training): loss weights, seeding, EMA, checkpoints."""

import numpy as np
import torch

from sdcourse import train_mini, training


def test_checkpoints_are_written_atomically(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    folder = tmp_path / "checkpoint"
    training.save_checkpoint(folder, 7, {"m": model}, optimizer, None, {"seconds": 1.5})
    training.save_checkpoint(folder, 8, {"m": model}, optimizer, None, {"seconds": 2.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no .tmp / .old left behind
    clone = torch.nn.Linear(3, 2)
    clone_optimizer = torch.optim.AdamW(clone.parameters())
    meta = training.load_checkpoint(folder, {"m": clone}, clone_optimizer, None)
    assert meta["step"] == 8 and meta["seconds"] == 2.5
    assert torch.equal(clone.weight, model.weight)
    assert torch.equal(clone_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_loss_weights_cap_clean_and_floor_noisy_timesteps():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**train_mini.noise_scheduler_config())
    timesteps = torch.tensor([0, 300, 999])
    snr = scheduler.alphas_cumprod[timesteps] / (1 - scheduler.alphas_cumprod[timesteps])
    assert snr[0] > 5 and 0.25 < snr[1] < 5 and snr[2] < 0.25
    plain = training.snr_weights(scheduler, timesteps, gamma=5.0)
    torch.testing.assert_close(plain, torch.stack([5 / snr[0], torch.tensor(1.0), torch.tensor(1.0)]))
    floored = training.snr_weights(scheduler, timesteps, gamma=5.0, floor=0.25)
    torch.testing.assert_close(floored[:2], plain[:2])
    # In x0 terms (weight × snr) the noisiest timestep now counts 0.25 instead of its snr (≈ 0.005).
    torch.testing.assert_close(floored[2] * snr[2], torch.tensor(0.25))


def test_loss_weights_for_v_prediction_give_the_same_x0_weights():
    """A v error is an x0 error times √(snr + 1): the weights differ, the x0 weights do not."""
    from diffusers import DDPMScheduler

    timesteps = torch.tensor([0, 300, 999])
    epsilon = DDPMScheduler(**train_mini.noise_scheduler_config())
    v = DDPMScheduler(**{**train_mini.noise_scheduler_config(), "prediction_type": "v_prediction"})
    snr = epsilon.alphas_cumprod[timesteps] / (1 - epsilon.alphas_cumprod[timesteps])
    w_eps = training.snr_weights(epsilon, timesteps, gamma=5.0, floor=0.25)
    w_v = training.snr_weights(v, timesteps, gamma=5.0, floor=0.25)
    torch.testing.assert_close(w_v * (snr + 1), w_eps * snr)
    torch.testing.assert_close(w_v * (snr + 1), torch.stack([torch.tensor(5.0), snr[1], torch.tensor(0.25)]))


def test_step_randomness_depends_only_on_the_key():
    draw = lambda *key: (training.step_rng(*key).random(3), torch.randn(3, generator=training.step_generator(*key)))
    (a_np, a_torch), (b_np, b_torch), (c_np, c_torch) = draw(0, 1, 2), draw(0, 1, 2), draw(0, 2, 1)
    assert np.array_equal(a_np, b_np) and torch.equal(a_torch, b_torch)
    assert not np.array_equal(a_np, c_np) and not torch.equal(a_torch, c_torch)


def test_offset_noise_is_one_constant_per_example_and_channel():
    offset = training.offset_noise((8, 4, 16, 16), torch.Generator().manual_seed(0), 0.15)
    assert offset.shape == (8, 4, 1, 1)
    torch.testing.assert_close(offset, 0.15 * torch.randn(8, 4, 1, 1, generator=torch.Generator().manual_seed(0)))


def test_ema_warms_up_and_leaves_integer_buffers_alone():
    model = torch.nn.BatchNorm1d(2)  # a float weight and an integer num_batches_tracked
    ema = training.EMA({"m": model}, decay=0.999)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
        model.num_batches_tracked += 5
    ema.update({"m": model}, step=0)  # decay min(0.999, 1/10): the first step moves 90 % of the way
    torch.testing.assert_close(ema.weights["m.weight"], start + 0.9)
    assert ema.weights["m.num_batches_tracked"] == 0
    ema.copy_to({"m": model})
    torch.testing.assert_close(model.weight.detach(), start + 0.9)
