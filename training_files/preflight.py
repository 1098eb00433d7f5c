"""Can every output be written? Asked before any data is generated or anything trained.

A model that cannot be saved, or a run log that cannot be appended, should cost seconds at
the start, not a finished training run. Nothing is created here: a missing checkpoint
directory stays missing (its absence is QUICKSTART's informational first-run line), so each
check walks up to the nearest existing ancestor, which must be a directory we can create a
file in. Standard library only, so a bad path fails before torch is imported.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from errors import PipelineError


def dir_problem(directory: Path) -> str | None:
    """None when files can be created in `directory` (made later if absent), else why not."""
    here = Path(directory)
    while not here.exists():
        if here.is_symlink():
            return f"{here} is a dangling symbolic link"
        if here.parent == here:
            break
        here = here.parent
    if not here.is_dir():
        return f"{here} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=here):
            pass
    except OSError as exc:
        return f"cannot create files in {here} ({exc.strerror})"
    return None


def check_file(what: str, path: Path, example: str = "model.zip") -> None:
    """`path` must be a creatable/replaceable file: not a directory, in a writable place."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"{what} {path} is a directory; give a file path, "
                            f"e.g. {path / example}")
    problem = dir_problem(path.parent)
    if problem:
        raise PipelineError(f"Cannot write {what} {path}: {problem}")


def check_dir(what: str, directory: Path) -> None:
    problem = dir_problem(directory)
    if problem:
        raise PipelineError(f"Cannot write {what} under {directory}: {problem}")


def model_file(save_file: Path) -> Path:
    """Where the hybrid model goes: the name with .zip appended unless it ends in .zip (SB3
    appends it only to a name without a suffix; every save here goes through this name)."""
    save_file = Path(save_file)
    return save_file if save_file.suffix == ".zip" else save_file.with_name(save_file.name + ".zip")


def best_model_file(save_file: Path) -> Path:
    """`<save stem>_best.zip` beside the model (the best evaluation's policy)."""
    final = model_file(save_file)
    return final.with_name(final.stem + "_best.zip")


def check_log_file(log_file: Path) -> None:
    check_file("the run log (--log_file)", log_file, example="pipeline_runs.json")


def check_outputs(save_file: Path, checkpoint_dir: Path, tensorboard_dir: Path) -> None:
    """Every location a run writes to, except the run log (checked first, by the caller)."""
    given = Path(save_file)
    check_file("--save_file", given)  # a directory given as --save_file is refused as such
    check_file("the hybrid model (--save_file)", model_file(given))
    check_file("the best hybrid model", best_model_file(given))
    check_dir("BC checkpoints (--bc_checkpoint_dir)", checkpoint_dir)
    check_dir("TensorBoard logs", tensorboard_dir)
