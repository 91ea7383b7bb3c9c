"""Loading the embedder a :class:`~organizer.embed.runtime.Plan` says: open_clip in torch, or
the exported towers (:class:`~organizer.embed.onnx.OnnxEmbedder`). The local engine plans
from this machine (:func:`load`); the Ray engine's actors build from the plan its driver
settled for the whole cluster (:func:`build`), so both embed the same way.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from organizer.embed.onnx import OnnxEmbedder
from organizer.embed.runtime import Capabilities, Plan, plan

if TYPE_CHECKING:
    from organizer.embed import Embedder, ModelSpec


def load(
    spec: ModelSpec,
    device: str = "auto",
    precision: str = "auto",
    runtime: str = "auto",
    offline: bool = False,
) -> Embedder:
    """The embedder for ``spec`` on this machine, as :func:`~organizer.embed.runtime.plan`
    decides from these options and what the machine has.

    Raises:
        OptionsError: options this machine cannot run (see :func:`~organizer.embed.runtime.plan`).
        ModelError, WeightsUnavailableError: as :func:`organizer.embed.openclip.load`.
    """
    chosen = plan(device, precision, runtime, Capabilities.probe())
    if chosen.warning:
        warnings.warn(chosen.warning, stacklevel=2)
    return build(spec, chosen, offline)


def build(spec: ModelSpec, chosen: Plan, offline: bool = False) -> Embedder:
    """The embedder for ``spec`` that runs as ``chosen`` says (its warning said already).

    Raises:
        ModelError, WeightsUnavailableError: as :func:`organizer.embed.openclip.load`.
    """
    if chosen.exported:
        return OnnxEmbedder(spec, chosen, offline=offline)
    from organizer.embed import openclip  # torch: only now

    return openclip.load(spec, str(chosen.device), str(chosen.precision), offline)
