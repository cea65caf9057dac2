"""What a checkpoint holds, and writing and reading it back for an exact resume.

In one process a checkpoint holds the first model's trained weights (weights.safetensors),
``parts`` write their own (PPO's critic.safetensors), and trainer_state.pt holds the rest:
optimisers, schedules, RNG, loop state. Data-parallel, every model and optimiser of the
learner is in dcp/ (``sharding.save``: each rank its shards) and trainer_state.pt holds the
state every rank shares plus each rank's RNG state.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from rlhfkit import distributed
from rlhfkit.errors import RlhfkitError
from rlhfkit.models.lora import trainable_state


def save_checkpoint(
    run: Any, step: int, learner: Any, stateful: dict[str, Any], parts: tuple[Any, ...] = ()
) -> None:
    """Checkpoint the learner's models and optimisers, ``stateful`` and RNG at ``step``."""
    from rlhfkit.train import sharding

    if not learner.distributed:
        state = snapshot(step, stateful)

        def write(directory: Path) -> None:
            save_training_state(directory, learner.models[0], state)
            for part in parts:
                part.save(directory)

        run.save_checkpoint(step, write)
        return
    state = snapshot(step, _shared(stateful))
    state["rng"] = distributed.gather_objects(state["rng"])  # one state per rank
    state["world_size"] = distributed.world_size()

    def write_sharded(directory: Path) -> None:
        sharding.save(directory, learner.models, learner.optimizers)
        if distributed.is_main():
            torch.save(state, directory / "trainer_state.pt")

    run.save_checkpoint(step, write_sharded)


def load_checkpoint(
    directory: Path, learner: Any, stateful: dict[str, Any], parts: tuple[Any, ...] = ()
) -> int:
    """Restore what ``save_checkpoint`` wrote; returns the step it was taken at.

    A sharded checkpoint loads at any world size, one process included (DCP reshards); each
    rank's random stream continues only at the world size that wrote it.
    """
    from rlhfkit.train import sharding
    from rlhfkit.train.runs import set_rng_state

    sharded = (directory / sharding.DCP_DIR).is_dir()
    if learner.distributed and not sharded:
        raise RlhfkitError(
            f"{directory}: written by a run of one process, so it resumes in one process "
            "(without torchrun); a run of several resumes from the sharded checkpoints it "
            "writes itself"
        )
    if not sharded:
        step = restore(load_training_state(directory, learner.models[0]), stateful)
        for part in parts:
            part.load(directory)
        return step
    sharding.load(directory, learner.models, learner.optimizers)
    state = load_trainer_state(directory / "trainer_state.pt")
    shared = _shared(stateful)
    for name, part in shared.items():
        part.load_state_dict(state[name])
    if state["world_size"] == distributed.world_size():
        set_rng_state(state["rng"][distributed.rank()])
    else:
        warnings.warn(
            f"{directory}: saved by {state['world_size']} ranks, resumed on "
            f"{distributed.world_size()}: weights, optimiser and data position continue, but "
            "each rank's random stream starts afresh, so sampling differs from an "
            "uninterrupted run",
            stacklevel=2,
        )
    return state["step"]


def _shared(stateful: dict[str, Any]) -> dict[str, Any]:
    """The parts every rank holds alike: all but the optimisers (sharded, saved by DCP)."""
    return {
        name: part for name, part in stateful.items() if not isinstance(part, torch.optim.Optimizer)
    }


def save_training_state(directory: Path, model: Any, state: dict[str, Any]) -> None:
    """Weights (safetensors) plus optimiser, scheduler, RNG and loop state (torch pickle of
    tensors and plain data only, so that it loads with ``weights_only=True``)."""
    from safetensors.torch import save_file

    weights = {k: v.detach().contiguous().clone() for k, v in trainable_state(model).items()}
    save_file(weights, str(directory / "weights.safetensors"))
    torch.save(state, directory / "trainer_state.pt")


def snapshot(step: int, stateful: dict[str, Any]) -> dict[str, Any]:
    """A loop's resumable state: the step, RNG states and each part's ``state_dict()``."""
    from rlhfkit.train.runs import rng_state

    return {
        "step": step,
        "rng": rng_state(),
        **{name: part.state_dict() for name, part in stateful.items()},
    }


def restore(state: dict[str, Any], stateful: dict[str, Any]) -> int:
    """Load ``snapshot``'s output back into the parts and RNGs; returns the step it was taken at."""
    from rlhfkit.train.runs import set_rng_state

    for name, part in stateful.items():
        if name not in state:
            raise RlhfkitError(
                f"the checkpoint has no saved state for {name!r} (written by an older rlhfkit?); "
                "resume it with the version that wrote it, or start the run afresh"
            )
        part.load_state_dict(state[name])
    set_rng_state(state["rng"])
    return state["step"]


def load_training_state(directory: Path, model: Any) -> dict[str, Any]:
    """Restore the weights into ``model`` and return the rest of the saved state.

    The trainer state loads with ``weights_only=True``: a run directory is data, and a pickle
    that would call code (a file swapped in by someone else) is refused, never run.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(directory / "weights.safetensors"))
    except (OSError, SafetensorError) as e:
        raise RlhfkitError(
            f"{directory / 'weights.safetensors'}: cannot be read ({e}); resume "
            "from an earlier checkpoint (delete this one) or start afresh with "
            "--run.overwrite"
        ) from None
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
    else:
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise RlhfkitError(
                f"{directory}: checkpoint does not fit this model ({e}); "
                "resume with the model the run started from"
            ) from None
    return load_trainer_state(directory / "trainer_state.pt")


def load_trainer_state(file: Path) -> dict[str, Any]:
    """A ``trainer_state.pt`` as tensors and plain data; anything else is refused unrun."""
    import pickle
    import re

    import numpy as np

    # Checkpoints from before rng_state() stored NumPy's state as a list hold one uint32
    # array; rebuilding an array runs no user code, so those still resume.
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # NumPy 2 | 1
    torch.serialization.add_safe_globals(
        [np.ndarray, np.dtype, type(np.dtype(np.uint32)), multiarray._reconstruct]
    )
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"a reference to {found.group(1)}" if found else "objects beyond tensors and data"
        raise RlhfkitError(
            f"{file}: refused to load, it holds {what}, which loading would run; "
            "only resume checkpoints that rlhfkit wrote"
        ) from None
    except (OSError, RuntimeError, EOFError) as e:
        reason = str(e).split(". ")[0] or type(e).__name__
        raise RlhfkitError(
            f"{file}: cannot be read ({reason}); resume from an earlier checkpoint "
            "(delete this one) or start afresh with --run.overwrite"
        ) from None
