"""The shared training-step helper and sampling through diffusers' pipelines compute exactly what the code
they replaced computed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lifelong.encoding import encode_text
from lifelong.generation import GenerateConfig, denoise, initial_noise
from lifelong.step import diffusion_loss, draw_noise


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


def old_loop(base, config, cond, uncond, seeds, guide=None, context=None):
    """The sampler generation.py ran before it went through diffusers' pipelines: DDIM with classifier-free
    guidance from the seeds' noise (or, for ICGen, from the context noised to the first of the last
    round(steps × strength) steps), ``guide`` moving the latents before each step's prediction."""
    scheduler = base.sampling_scheduler()
    scheduler.set_timesteps(config.steps)
    timesteps, x = scheduler.timesteps, initial_noise(base, seeds)
    if context is not None:
        timesteps = timesteps[len(timesteps) - max(1, round(len(timesteps) * config.icgen_strength)) :]
        x = scheduler.add_noise(context.expand_as(x), x, timesteps[:1].repeat(len(x)))
    else:
        x = x * scheduler.init_noise_sigma
    embeddings = torch.cat([uncond.expand(len(x), -1, -1), cond.expand(len(x), -1, -1)])
    for index, t in enumerate(timesteps):
        x = x if guide is None else guide(index, t, x, scheduler)
        model_input = scheduler.scale_model_input(torch.cat([x, x]), t)
        out_uncond, out_cond = base.pipe.unet(model_input, t, embeddings).sample.float().chunk(2)
        x = scheduler.step(out_uncond + config.guidance_scale * (out_cond - out_uncond), t, x).prev_sample
    return x


@pytest.mark.parametrize("scale", [4.0, 0.5])  # diffusers alone would skip the unconditional branch at 0.5
def test_sampling_loop_gives_the_latents_of_the_hand_written_ddim_cfg_loop(tiny_base, scale):
    """Text-to-image through diffusers' pipeline: bit for bit the latents of the loop it replaced."""
    base, config = tiny_base, GenerateConfig(steps=4, guidance_scale=scale)
    with torch.no_grad():
        cond, uncond = encode_text(base, ["a dog"]), encode_text(base, [""])
        latents = denoise(base, [3, 4], cond, uncond, config)
        x = old_loop(base, config, cond, uncond, [3, 4])
    assert torch.equal(latents, x)


@pytest.mark.parametrize("steps, strength", [(4, 0.5), (5, 0.3), (4, 0.99), (4, 0.05)])
def test_icgen_through_image_to_image_gives_the_latents_of_the_hand_written_start(tiny_base, steps, strength):
    """ICGen through diffusers' image-to-image pipeline keeps the same steps as before (round, at least one:
    5 × 0.3 keeps 2, 4 × 0.05 keeps 1, where int() would keep 1 and 0) and gives the same latents."""
    base, config = tiny_base, GenerateConfig(steps=steps, guidance_scale=4.0, icgen_strength=strength)
    context = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    seen = []
    with torch.no_grad():
        cond, uncond = encode_text(base, ["a dog"]), encode_text(base, [""])
        latents = denoise(base, [3, 4], cond, uncond, config, seen.append, context=context)
        x = old_loop(base, config, cond, uncond, [3, 4], context=context)
    assert torch.equal(latents, x)
    assert [p.step for p in seen] == list(range(1, max(1, round(steps * strength)) + 1))


class Nudge:
    """A stand-in for attention guidance: moves the latents by a step- and timestep-dependent amount."""

    def __init__(self):
        self.calls = []

    def guide(self, index, t, latents, scheduler):
        self.calls.append((index, int(t)))
        return latents - 0.05 * (index + 1) * scheduler.scale_model_input(latents, t).sin()


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_step_hooks_move_the_latents_where_the_old_loop_did(tiny_base, strength):
    """The guide runs before every step's noise prediction (step 0 in prepare_latents, the others in
    callback_on_step_end), on the same latents and timesteps as in the old loop, also for ICGen."""
    base, config = tiny_base, GenerateConfig(steps=4, guidance_scale=4.0, icgen_strength=strength)
    context = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)) if strength < 1 else None
    new, old = Nudge(), Nudge()
    with torch.no_grad():
        cond, uncond = encode_text(base, ["a dog"]), encode_text(base, [""])
        latents = denoise(base, [3, 4], cond, uncond, config, attention=new, context=context)
        x = old_loop(base, config, cond, uncond, [3, 4], guide=old.guide, context=context)
    assert new.calls == old.calls and len(new.calls) == round(4 * strength)
    assert torch.equal(latents, x)


def test_noisy_bias_makes_the_noisiest_quarter_that_many_times_as_likely(tiny_base):
    steps = tiny_base.train_scheduler.config.num_train_timesteps
    cpu = torch.device("cpu")
    _, uniform = draw_noise(tiny_base, (4000, 1), torch.Generator().manual_seed(0), cpu)
    _, plain = draw_noise(tiny_base, (4000, 1), torch.Generator().manual_seed(0), cpu, noisy_bias=1.0)
    assert torch.equal(uniform, plain)  # 1 is the uniform draw itself, number for number
    _, biased = draw_noise(tiny_base, (4000, 1), torch.Generator().manual_seed(0), cpu, noisy_bias=4.0)
    noisiest = steps - steps // 4
    assert abs(float((uniform >= noisiest).float().mean()) - 0.25) < 0.03
    assert abs(float((biased >= noisiest).float().mean()) - 4 / 7) < 0.03  # 4 × ¼ against ¾ of the mass
    assert int(biased.min()) >= 0 and int(biased.max()) < steps
