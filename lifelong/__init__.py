"""Lifelong Studio: teach a text-to-image diffusion model concepts one after another, without forgetting."""
