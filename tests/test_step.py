"""The shared training-step and sampling helpers compute exactly what the code they replaced computed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lifelong.encoding import encode_text
from lifelong.generate import GenerateConfig, denoise, initial_noise
from lifelong.step import diffusion_loss


def test_diffusion_loss_is_the_noise_timestep_add_noise_mse_block(tiny_base):
    base = tiny_base
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    embeddings = encode_text(base, ["a dog"]).expand(3, -1, -1)
    predict = lambda noisy, t: base.pipe.unet(noisy, t, embeddings).sample.float()  # noqa: E731
    with torch.no_grad():
        result = diffusion_loss(base, latents, torch.Generator().manual_seed(7), predict)
        generator = torch.Generator().manual_seed(7)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (3,), generator=generator)
        noisy = base.train_scheduler.add_noise(latents, noise, timesteps)
        expected = F.mse_loss(base.pipe.unet(noisy, timesteps, embeddings).sample.float(), noise)
    assert base.train_scheduler.config.num_train_timesteps == 1000
    assert torch.equal(result.timesteps, timesteps) and torch.equal(result.noise, noise)
    assert torch.equal(result.loss, expected)


def test_sampling_loop_gives_the_latents_of_the_hand_written_ddim_cfg_loop(tiny_base):
    base, config = tiny_base, GenerateConfig(steps=4, guidance_scale=4.0)
    with torch.no_grad():
        cond, uncond = encode_text(base, ["a dog"]), encode_text(base, [""])
        latents = denoise(base, initial_noise(base, [3, 4]), cond, uncond, config)
        scheduler = base.sampling_scheduler()
        scheduler.set_timesteps(config.steps)
        x = initial_noise(base, [3, 4]) * scheduler.init_noise_sigma
        embeddings = torch.cat([uncond.expand(2, -1, -1), cond.expand(2, -1, -1)])
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(torch.cat([x, x]), t)
            out_uncond, out_cond = base.pipe.unet(model_input, t, embeddings).sample.float().chunk(2)
            x = scheduler.step(out_uncond + 4.0 * (out_cond - out_uncond), t, x).prev_sample
    assert torch.equal(latents, x)
