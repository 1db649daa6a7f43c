"""Load a Stable-Diffusion-1.x base pipeline once, freeze it, and give it concept slots.

Any SD-1.x-architecture diffusers pipeline works: a hub id, a local folder, or the bundled model under
``assets/base-model`` (the default when nothing else is configured). Nothing here knows which one it is.
"""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import torch
from accelerate import Accelerator, PartialState
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO_ROOT / "assets" / "base-model"
BUNDLED_EVAL_CLIP = REPO_ROOT / "assets" / "eval-clip"
BUNDLED_EVAL_IDENTITY = REPO_ROOT / "assets" / "eval-identity"
BASE_MODEL_ENV = "LIFELONG_BASE_MODEL"
COMPILE_ENV = "LIFELONG_COMPILE"

# Which sampler generation uses (BaseModel.sampling_scheduler), one rule:
# - a base that ships one of these samples with it, as its config says: ODE solvers, whose steps add no noise
#   of their own, so a seed's initial noise fixes the image (DPM-Solver only with a non-SDE algorithm_type);
# - a base that ships DDIM samples with DDIM as it always did (steps_offset=1, clip_sample=False,
#   set_alpha_to_one=False: SD-1.x's sampling settings, whatever its config says), the bundled model included;
# - anything else (DDPM, a training schedule that wants ~1,000 steps; ancestral and SDE samplers, which draw
#   fresh noise at each step; a class not listed) samples with that DDIM, built from the shipped config.
SHIPPED_SAMPLERS = frozenset(
    {
        "PNDMScheduler",  # what SD-1.x checkpoints ship
        "LMSDiscreteScheduler",
        "EulerDiscreteScheduler",
        "HeunDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
    }
)


def default_model() -> str:
    """The base model to use when none is given: $LIFELONG_BASE_MODEL, else the bundled one."""
    return os.environ.get(BASE_MODEL_ENV) or str(BUNDLED_MODEL)


def public_model_name(model: str) -> str:
    """How a model is named outside this server: a hub id as it is, a local folder by its own name only
    (its path says how this machine is laid out, which a message or an exported file must not)."""
    path = Path(model)
    if model and (path.is_absolute() or model.startswith((".", "~")) or path.exists()):
        return path.name
    return model


def compile_requested() -> bool:
    """Whether $LIFELONG_COMPILE asks for compile: for one-shot commands, where compiling rarely pays."""
    return os.environ.get(COMPILE_ENV) == "1"


def compile_default(device: torch.device) -> bool:
    """Whether sampling compiles the UNet when the config leaves it open: $LIFELONG_COMPILE, else on CPUs."""
    if os.environ.get(COMPILE_ENV) in ("0", "1"):
        return compile_requested()
    return device.type == "cpu"


def slot_token(slot: int) -> str:
    """The tokenizer token that carries concept slot ``slot``; users never type it."""
    return f"<|slot{slot}|>"


@dataclass(frozen=True)
class BaseConfig:
    model: str = ""  # hub id or local folder; "" means default_model()
    device: str = ""  # "" picks the accelerator accelerate finds, else the CPU
    # "auto": bfloat16 on CUDA devices that have it (else float16), float32 elsewhere; or a dtype's name.
    # bf16 weights, because training autocasts to bf16: float16 weights would be cast again in every op
    dtype: str = "auto"
    concept_slots: int = 32  # how many concepts one session can hold
    # torch.compile the UNet for plain sampling: a one-off compile (~50 s per batch shape on a 2-core CPU,
    # seconds once cached; generate.warm_up does it ahead), then ~25 % faster images.
    # None: $LIFELONG_COMPILE ("1" or "0") when set, else on for CPUs, where it was measured to pay
    compile: bool | None = None
    # recompute each UNet block's activations in the backward pass instead of keeping them (diffusers'
    # gradient checkpointing, learning only), for one more forward pass per training row: SD-1.5 at 512 px
    # holds 0.25 instead of 0.88 GB per row (docs/BENCHMARKS.md, "Memory at 512 px"), so every batch
    # LearnConfig allows (up to 64) fits an A10G. None: on CUDA devices, where memory is what runs out; a
    # CPU has the RAM and not the time
    gradient_checkpointing: bool | None = None


@dataclass
class BaseModel:
    """A frozen pipeline plus what training and concept slots need.

    The pipeline's weights are shared by every session in the process; a session's state is written into
    them for the duration of ``lock`` (see ``adapters.use_state``) and taken out again afterwards.
    """

    pipe: StableDiffusionPipeline
    config: BaseConfig
    train_scheduler: DDPMScheduler
    slot_token_ids: list[int]
    lock: threading.RLock
    accelerator: Accelerator  # mixed precision for training: bf16 autocast on GPUs that have it
    # the frozen UNet's dtype, read once: diffusers' ModelMixin.dtype walks every module (~2 ms on the bundled
    # UNet), and sampling and training need it at every step
    dtype: torch.dtype
    # the slot tokens' embedding rows as loaded: every job starts from them and puts back what it found
    # (adapters.use_state), so no concept of one session is ever seen by another's prompt
    pristine_rows: torch.Tensor
    pristine: dict[str, torch.Tensor] = field(default_factory=dict)  # target weights as loaded (adapters.py)
    compiled_unet: torch.nn.Module | None = None  # made on first use by sampling_unet()
    # set by adapters.trainable while a trainable set is attached: sampling then (after-learn memory
    # samples) runs the UNet eagerly, as the compiled graph is for the bare UNet and would recompile
    trainable_attached: bool = False

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def resolution(self) -> int:
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    @property
    def name(self) -> str:
        return self.config.model

    def sampling_unet(self) -> torch.nn.Module:
        """The UNet that plain sampling calls: compiled once when the config asks, else the UNet itself.

        The compiled module shares the UNet's parameters, so concept weights written in place reach it.
        Sampling with swapped attention processors calls ``pipe.unet`` instead (a swap would recompile).
        """
        if not self.config.compile or self.trainable_attached:
            return self.pipe.unet
        if self.compiled_unet is None:
            # compiling a module returns an OptimizedModule, a Module; the stubs only promise a callable
            self.compiled_unet = cast(torch.nn.Module, torch.compile(self.pipe.unet))
        return self.compiled_unet

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether learning recomputes UNet activations in the backward pass (``BaseConfig``)."""
        chosen = self.config.gradient_checkpointing
        return self.device.type == "cuda" if chosen is None else chosen

    def sampling_scheduler(self) -> SchedulerMixin:
        """A fresh sampler for one generation (schedulers keep per-run state, so never share one between
        calls): the base's own when it ships one of SHIPPED_SAMPLERS, else DDIM (see SHIPPED_SAMPLERS)."""
        shipped = self.pipe.scheduler
        sde = "sde" in str(shipped.config.get("algorithm_type", ""))
        if type(shipped).__name__ in SHIPPED_SAMPLERS and not sde:
            return type(shipped).from_config(shipped.config)
        return self.ddim_scheduler()

    def ddim_scheduler(self) -> DDIMScheduler:
        """A fresh DDIM sampler on the base's noise schedule: the default sampler; DFKD's teacher walks."""
        return DDIMScheduler.from_config(
            self.pipe.scheduler.config, steps_offset=1, clip_sample=False, set_alpha_to_one=False
        )


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``BaseConfig.dtype`` on ``device``."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_base(config: BaseConfig | str | None = None) -> BaseModel:
    """Load a pipeline from a hub id or folder (``from_pretrained``; a string is ``BaseConfig(model=…)``), move
    it to the device and freeze it."""
    config = BaseConfig(model=config) if isinstance(config, str) else config or BaseConfig()
    model = config.model or default_model()
    device = torch.device(config.device) if config.device else PartialState().device
    dtype = resolve_dtype(config.dtype, device)
    pipe = StableDiffusionPipeline.from_pretrained(
        model, dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    compile_unet = config.compile if config.compile is not None else compile_default(device)
    resolved = replace(config, model=model, device=str(device), compile=compile_unet)
    return prepare_base(pipe, resolved, device)


def prepare_base(
    pipe: StableDiffusionPipeline, config: BaseConfig, device: torch.device | None = None
) -> BaseModel:
    """Freeze a pipeline in place and add the concept slot tokens; the pipeline becomes the base."""
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.eval()
    tokens = [slot_token(i) for i in range(config.concept_slots)]
    pipe.tokenizer.add_tokens(tokens, special_tokens=True)
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    embeddings = pipe.text_encoder.get_input_embeddings()
    if max(ids) >= embeddings.num_embeddings:
        pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
        pipe.text_encoder.requires_grad_(False)
    train_scheduler = DDPMScheduler.from_config(pipe.scheduler.config, steps_offset=1, clip_sample=False)
    device = pipe.unet.device
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if bf16 else "no")
    rows = pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone()
    return BaseModel(
        pipe, config, train_scheduler, list(ids), threading.RLock(), accelerator, pipe.unet.dtype, rows
    )


def from_pipe(pipe: StableDiffusionPipeline, config: BaseConfig | None = None) -> BaseModel:
    """A base from a pipeline you built, as diffusers' ``from_pipe`` reuses one: a deep copy of it, frozen and
    given concept slots, so ``pipe`` itself is left exactly as it was (its tokenizer, weights, gradients and
    device). The copy costs the pipeline's memory once more; ``load_base(model_id)`` avoids that."""
    config = config or BaseConfig(model=getattr(pipe, "name_or_path", "") or "")
    return prepare_base(copy.deepcopy(pipe), config)


_loaded: dict[BaseConfig, BaseModel] = {}
_load_lock = threading.Lock()


def get_base(config: BaseConfig | None = None) -> BaseModel:
    """The process-wide base model for ``config``, loaded on first use (the one global we keep)."""
    config = config or BaseConfig()
    # keyed by the model $LIFELONG_BASE_MODEL names now, not by an empty field
    config = replace(config, model=config.model or default_model())
    with _load_lock:
        if config not in _loaded:
            _loaded[config] = load_base(config)
        return _loaded[config]
