"""GPU or CPU for a serving container, and what to say when an engine refuses to start one.

``SMSERVE_DOCKER_GPUS`` (:attr:`serving.settings.Settings.docker_gpus`):

- ``auto`` (the default): ask for every GPU (``--gpus all``) when the image
  wants one (its environment sets ``NVIDIA_VISIBLE_DEVICES``, as the GPU
  image and every ``nvidia/cuda`` base do) and the engine has an NVIDIA
  runtime. A GPU image on an engine without one runs its model on the CPU
  (no device request), and the placement's note says so in one line.
- ``all``: always ask; an engine that cannot give a GPU refuses the start,
  and the error shows its whole message.
- ``none``: never ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Values of ``SMSERVE_DOCKER_GPUS``.
GPU_MODES = ("auto", "all", "none")


@dataclass(frozen=True)
class Placement:
    """Where a runner's containers run their model.

    Attributes:
        gpu: the containers ask the engine for every GPU.
        note: one line for the user when that is not what the image wants
            (empty when there is nothing to say).
    """

    gpu: bool
    note: str = ""


def image_wants_gpu(client: Any, image: str) -> bool:
    """True when ``image``'s environment asks the NVIDIA runtime for devices.

    An image the engine does not have counts as not wanting one (starting it
    fails with its own message).
    """
    try:
        config = client.api.inspect_image(image).get("Config") or {}
    except Exception:
        return False
    env = dict(str(item).partition("=")[::2] for item in config.get("Env") or [])
    visible = env.get("NVIDIA_VISIBLE_DEVICES", "").strip().lower()
    return visible not in ("", "void", "none")


def nvidia_runtime(client: Any) -> bool:
    """True when the engine lists an NVIDIA runtime (the NVIDIA Container Toolkit)."""
    try:
        info = client.info()
    except Exception:
        return False
    runtimes = [str(name).lower() for name in (info.get("Runtimes") or {})]
    default = str(info.get("DefaultRuntime") or "").lower()
    return any("nvidia" in name for name in [*runtimes, default])


def place(client: Any, image: str, mode: str) -> Placement:
    """The :class:`Placement` of ``image``'s containers under ``mode`` (see the module doc)."""
    if mode == "all":
        return Placement(True)
    if mode == "none" or not image_wants_gpu(client, image):
        return Placement(False)
    if nvidia_runtime(client):
        return Placement(True, "on the GPU")
    return Placement(False, "on the CPU: the engine has no NVIDIA runtime")


#: Said once per runner with a :class:`Placement` on the CPU for a GPU image.
CPU_FALLBACK = ("no GPU device request: the model runs on the CPU "
                "(SMSERVE_DOCKER_GPUS=all asks for a GPU anyway)")


def start_refused(err: BaseException, index: int, image: str, gpu: bool) -> str:
    """One line for a container start the engine refused: its whole message, and the fix."""
    explanation = getattr(err, "explanation", None)
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    said = " ".join(str(explanation or err).split())
    text = f"the Docker engine could not start container {index} from {image}: {said}"
    if status:
        text += f" (HTTP {status})"
    if gpu:
        text += ("; the container asked for every GPU (--gpus all): run it where the engine "
                 "has the NVIDIA Container Toolkit, or set SMSERVE_DOCKER_GPUS=auto (GPU "
                 "only where one can be had) or none to run the model on the CPU")
    return text
