"""Samplers by name, all on Stable Diffusion's noise schedule.

A scheduler is two things: the training noise schedule (betas → ᾱ_t), which a model is
tied to, and the sampling rule that walks down it, which can be swapped freely. Swap one
into a pipeline with `pipe.scheduler = make_scheduler("euler", pipe.scheduler.config)`.
"""

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "lms": LMSDiscreteScheduler,  # needs scipy
}

# stable-diffusion-v1-5/stable-diffusion-v1-5 scheduler/scheduler_config.json (PNDM there);
# DDIM reads set_alpha_to_one, PNDM skip_prk_steps, the others ignore what they don't know.
# steps_offset=1 matters: pipelines rewrite 0 to 1 only at construction.
SD_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "prediction_type": "epsilon",
}


def make_scheduler(name: str = "ddim", config: dict | None = None):
    """Build scheduler `name` ("ddim", "pndm", "euler", "euler_a", "dpm++", "lms") from a config.

    Defaults to SD's training schedule, so every sampler sees the same betas.
    Swap one into a pipeline with `pipe.scheduler = make_scheduler("euler", pipe.scheduler.config)`.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"name={name!r} is not a scheduler sdcourse knows; choose one of {sorted(SCHEDULERS)}.")
    return SCHEDULERS[name].from_config(SD_SCHEDULER_CONFIG if config is None else config)
