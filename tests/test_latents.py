"""Tests for sdcourse.latents: VAE encode/decode, compression, channels, noising, interpolation."""

import io
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from sdcourse import latents as L  # noqa: E402
from sdcourse.models import mini_available  # noqa: E402
from sdcourse.testing import SD_VAE_CONFIG, TINY_VAE_CONFIG, build_vae, make_scheduler, tiny_pipeline  # noqa: E402
from sdcourse.world import render, sample_scenes  # noqa: E402


@pytest.fixture(scope="module")
def vae():
    return tiny_pipeline().vae


@pytest.fixture(scope="module")
def images():
    """Three shapes-world scenes as uint8 (64, 64, 3) arrays."""
    return [render(scene).image for scene in sample_scenes(3, seed=0)]


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


# --- encode / decode ---------------------------------------------------------------------


def test_encode_shape_and_scaling(vae, images):
    latents = L.encode(vae, images)
    assert latents.shape == (3, 4, 16, 16)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1
    with torch.no_grad():
        expected = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=1e-5)


def test_encode_accepts_pil_arrays_and_tensors_alike(vae, images):
    image = images[0]
    from_uint8 = L.encode(vae, image)
    from_pil = L.encode(vae, Image.fromarray(image))
    from_float = L.encode(vae, image.astype(np.float32) / 255)
    from_tensor = L.encode(vae, torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1)
    assert from_uint8.shape == (1, 4, 16, 16)
    for other in (from_pil, from_float, from_tensor):
        torch.testing.assert_close(other, from_uint8, atol=1e-5, rtol=1e-5)
    # A 4-D array is a batch.
    assert L.encode(vae, np.stack(images)).shape == (3, 4, 16, 16)


def test_encode_sample_draws_from_the_latent_distribution(vae, images):
    mean = L.encode(vae, images[0])
    a = L.encode(vae, images[0], sample=True, generator=generator(1))
    b = L.encode(vae, images[0], sample=True, generator=generator(1))
    c = L.encode(vae, images[0], sample=True, generator=generator(2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, mean)


def test_scaling_factor_is_applied_on_encode_and_undone_on_decode(images):
    vae = build_vae(TINY_VAE_CONFIG, seed=0)
    scaled = L.encode(vae, images[0])
    decoded_scaled = L.decode(vae, scaled, output_type="np")
    vae.register_to_config(scaling_factor=1.0)
    unscaled = L.encode(vae, images[0])
    torch.testing.assert_close(scaled, unscaled * TINY_VAE_CONFIG["scaling_factor"], atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(L.decode(vae, unscaled, output_type="np"), decoded_scaled, atol=1e-5)


def test_decode_returns_clamped_pil_images(vae, images):
    latents = L.encode(vae, images)
    decoded = L.decode(vae, latents)
    assert len(decoded) == 3
    assert all(isinstance(image, Image.Image) and image.size == (64, 64) for image in decoded)
    # Far-out latents push the decoder beyond [-1, 1]: the result is clamped, not wrapped.
    raw = L.decode_pixels(vae, latents * 200)
    assert raw.min() < -1 or raw.max() > 1
    clamped = L.decode(vae, latents * 200, output_type="np")
    assert clamped.min() >= 0 and clamped.max() <= 1
    np.testing.assert_allclose(clamped, (raw / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), atol=1e-6)
    # One (C, h, w) latent decodes too.
    assert len(L.decode(vae, latents[0])) == 1


def test_size_not_divisible_by_vae_factor_is_a_clear_error(vae):
    with pytest.raises(ValueError, match=r"height=70 must be divisible by the VAE factor 4"):
        L.encode(vae, np.zeros((70, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"width=66 must be divisible by the VAE factor 4"):
        L.encode(vae, Image.new("RGB", (66, 64)))
    with pytest.raises(ValueError, match=r"height=30 must be divisible by the VAE factor 4"):
        L.encode(vae, torch.zeros(3, 30, 32))


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ([], ValueError, "images is empty"),
        ([np.zeros((64, 64, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)], ValueError, "same size"),
        (torch.full((3, 64, 64), 2.0), ValueError, r"\[-1, 1\]"),
        (np.full((64, 64, 3), 3.0, np.float32), ValueError, r"\[0, 1\]"),
        (np.zeros((64, 64, 3), np.int64), ValueError, "dtype"),
        (np.zeros((64, 64), np.uint8), ValueError, r"\(H, W, 3\)"),
    ],
)
def test_bad_images_are_clear_errors(vae, bad, error, message):
    with pytest.raises(error, match=message):
        L.encode(vae, bad)


def test_decode_rejects_wrong_latent_shape(vae):
    with pytest.raises(ValueError, match=r"latents must be shaped \(B, 4, h, w\)"):
        L.decode(vae, torch.zeros(1, 3, 16, 16))


# --- compression ---------------------------------------------------------------------------


def test_compression_factor_of_real_sd_from_config_alone():
    result = L.compression_factor(SD_VAE_CONFIG, 512, 512)
    assert result["vae_factor"] == 8
    assert result["latent_shape"] == (4, 64, 64)
    assert result["pixels"] == 786_432
    assert result["latents"] == 16_384
    assert result["ratio"] == 48
    # Any size divisible by 8 keeps the 3·8·8/4 = 48× ratio; SD 2's 768 px gives 4×96×96.
    assert L.compression_factor(SD_VAE_CONFIG, 768, 768)["latent_shape"] == (4, 96, 96)
    with pytest.raises(ValueError, match="width=500 must be divisible by the VAE factor 8"):
        L.compression_factor(SD_VAE_CONFIG, 512, 500)


def test_compression_factor_matches_the_tiny_vae_encoder(vae, images):
    result = L.compression_factor(vae, 64, 64)
    latents = L.encode(vae, images[0])
    assert result["latent_shape"] == tuple(latents.shape[1:])
    assert result["latents"] == latents[0].numel()
    assert result["pixels"] == images[0].size
    assert result["ratio"] == images[0].size / latents[0].numel() == 12
    assert L.compression_factor(vae.config, 64, 64) == result


def test_reconstruction_error_is_the_mse_of_decode_encode(vae, images):
    result = L.reconstruction_error(vae, images)
    reconstructed = L.decode(vae, L.encode(vae, images), output_type="np")
    expected_mse = np.mean((reconstructed - np.stack(images) / 255.0) ** 2)
    assert result["mse"] == pytest.approx(expected_mse, rel=1e-4)
    assert result["psnr"] == pytest.approx(10 * math.log10(1 / expected_mse), rel=1e-4)
    assert len(result["psnr_per_image"]) == 3
    assert min(result["psnr_per_image"]) <= result["psnr"] <= max(result["psnr_per_image"])


def test_psnr_from_mse():
    assert L.psnr_from_mse(0.01) == pytest.approx(20.0)
    assert L.psnr_from_mse(0.0) == math.inf


# --- channels ------------------------------------------------------------------------------


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def test_show_channels_shared_scale(vae, images):
    latents = L.encode(vae, images[0])
    fig = L.show_channels(latents)
    axes = image_axes(fig)
    assert [ax.get_title() for ax in axes] == ["channel 0", "channel 1", "channel 2", "channel 3"]
    limits = {ax.images[0].get_clim() for ax in axes}
    assert len(limits) == 1
    assert limits.pop() == pytest.approx((latents.min().item(), latents.max().item()))
    for ax, channel in zip(axes, latents[0]):
        np.testing.assert_allclose(ax.images[0].get_array(), channel.numpy())
    assert len(fig.axes) == 5  # four channels + one shared colour bar
    fig.savefig(io.BytesIO(), format="png")  # lays out and draws without error
    plt.close(fig)


def test_show_channels_per_channel_scale(vae, images):
    latents = L.encode(vae, images[0])[0]
    fig = L.show_channels(latents, shared_scale=False)
    for ax, channel in zip(image_axes(fig), latents):
        assert ax.images[0].get_clim() == pytest.approx((channel.min().item(), channel.max().item()))
    assert len(fig.axes) == 8  # a colour bar per channel
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
    with pytest.raises(ValueError, match="batch of 3"):
        L.show_channels(torch.zeros(3, 4, 16, 16))


# --- noise ---------------------------------------------------------------------------------


def test_noise_latents_follows_the_forward_process(vae, images):
    scheduler = make_scheduler("ddim")
    latents = L.encode(vae, images[0])
    timesteps = [0, 250, 500, 999]
    noisy = L.noise_latents(latents, timesteps, scheduler, generator(3))
    assert noisy.shape == (4, 4, 16, 16)

    noise = torch.randn(latents[0].shape, generator=generator(3))
    for t, x_t in zip(timesteps, noisy):
        alpha_bar = scheduler.alphas_cumprod[t]
        expected = alpha_bar.sqrt() * latents[0] + (1 - alpha_bar).sqrt() * noise
        torch.testing.assert_close(x_t, expected, atol=1e-5, rtol=1e-5)

    # The same seed gives the same noise; the image fades out as t grows.
    torch.testing.assert_close(L.noise_latents(latents, timesteps, scheduler, generator(3)), noisy)
    distances = [(x_t - latents[0]).norm().item() for x_t in noisy]
    assert distances == sorted(distances)


def test_noise_latents_rejects_bad_timesteps(vae, images):
    latents = L.encode(vae, images[0])
    with pytest.raises(ValueError, match=r"timesteps must be .* in \[0, 999\]"):
        L.noise_latents(latents, [0, 1000], make_scheduler("ddim"))
    with pytest.raises(ValueError, match="batch of 3"):
        L.noise_latents(L.encode(vae, images), [10], make_scheduler("ddim"))


def test_noised_images_decodes_each_timestep(vae, images):
    scheduler = make_scheduler("ddim")
    pictures = L.noised_images(vae, images[0], [0, 500, 999], scheduler, generator(0))
    assert len(pictures) == 3 and all(p.size == (64, 64) for p in pictures)
    # t=0 keeps (almost) all of the image: it decodes like the clean latents.
    clean = np.asarray(L.decode(vae, L.encode(vae, images[0]))[0], dtype=float)
    assert np.abs(np.asarray(pictures[0], dtype=float) - clean).mean() < np.abs(
        np.asarray(pictures[2], dtype=float) - clean
    ).mean()


# --- interpolation --------------------------------------------------------------------------


@pytest.fixture
def two_noises():
    shape = (1, 4, 64, 64)
    return torch.randn(shape, generator=generator(0)), torch.randn(shape, generator=generator(1))


def test_slerp_endpoints(two_noises):
    a, b = two_noises
    torch.testing.assert_close(L.slerp(a, b, 0.0), a)
    torch.testing.assert_close(L.slerp(a, b, 1.0), b)


def test_slerp_keeps_the_norm_of_gaussian_noise_where_lerp_shrinks_it(two_noises):
    a, b = two_noises
    end_norm = (a.norm() + b.norm()).item() / 2
    for t in (0.25, 0.5, 0.75):
        assert L.slerp(a, b, t).norm().item() == pytest.approx(end_norm, rel=0.01)
    assert ((a + b) / 2).norm().item() < 0.75 * end_norm


def test_slerp_falls_back_to_lerp_when_nearly_parallel():
    a = torch.randn(4, 8, 8, generator=generator(0))
    result = L.slerp(a, 2 * a, 0.5)
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result, 1.5 * a)
    torch.testing.assert_close(L.slerp(a, a, 0.3), a)


def test_interpolate(two_noises):
    a, b = two_noises
    path = L.interpolate(a, b, 5)
    assert len(path) == 5 and all(x.shape == a.shape for x in path)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    torch.testing.assert_close(path[2], L.slerp(a, b, 0.5))
    torch.testing.assert_close(L.interpolate(a, b, 3, method="lerp")[1], (a + b) / 2)
    with pytest.raises(ValueError, match="n=1 must be at least 2"):
        L.interpolate(a, b, 1)
    with pytest.raises(ValueError, match="method='cubic'"):
        L.interpolate(a, b, 3, method="cubic")
    with pytest.raises(ValueError, match="same shape"):
        L.slerp(a, b[:, :2], 0.5)


# --- why latents -----------------------------------------------------------------------------


def test_attention_cost_ratio():
    result = L.attention_cost_ratio(128, 64)
    assert result["tokens_a"] == 128 * 128 and result["tokens_b"] == 64 * 64
    assert result["ratio"] == 16
    assert L.attention_cost_ratio(512, 256)["ratio"] == 16
    assert L.attention_cost_ratio(64, 128)["ratio"] == 1 / 16
    sd = L.attention_cost_ratio(512, 512, vae_factor=8)
    assert sd["latent_tokens_a"] == 64 * 64
    assert sd["pixel_vs_latent"] == 8**4
    assert L.attention_cost_ratio((64, 128), 64, vae_factor=4)["pixel_vs_latent"] == 4**4
    assert L.attention_cost_ratio((64, 128), 64)["ratio"] == 4


# --- real layouts and mini-SD -----------------------------------------------------------------


@pytest.mark.slow
def test_real_sd_vae_encodes_to_the_predicted_shape():
    from sdcourse.testing import real_vae

    vae = real_vae("sd15")
    image = np.zeros((64, 96, 3), np.uint8)
    latents = L.encode(vae, image)
    assert tuple(latents.shape[1:]) == L.compression_factor(vae, 64, 96)["latent_shape"] == (4, 8, 12)
    assert L.compression_factor(vae, 512, 512) == L.compression_factor(SD_VAE_CONFIG, 512, 512)
    assert L.decode(vae, latents)[0].size == (96, 64)


@pytest.mark.skipif(not mini_available(), reason="mini-SD not trained yet")
def test_mini_vae_reconstructs_shapes_world_scenes():
    from sdcourse.models import load_pipeline

    vae = load_pipeline("mini", "text2img").vae
    scenes = [render(scene).image for scene in sample_scenes(16, seed=123)]
    result = L.reconstruction_error(vae, scenes)
    assert result["psnr"] > 25, result
