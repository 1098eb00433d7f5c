"""Pick the best BC checkpoint from the metrics CSVs, and decide whether BC must (re)train.

Only the CSV of the current names counts: validation losses of different datasets are not
comparable. A damaged row or an unloadable zip is skipped with a warning, never a crash: a run
killed mid-epoch must not make the next run unusable.
"""

from __future__ import annotations

import csv
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from bc import checkpoint_file, metrics_file, read_settings
from errors import PipelineError


@dataclass(frozen=True)
class BestCheckpoint:
    path: Path
    epoch: int
    train_loss: float
    val_loss: float
    epochs_trained: int  # the CSV's highest epoch


def _rows(csv_path: Path) -> list[tuple[int, float, float]]:
    rows = []
    with open(csv_path, newline="", errors="replace") as fh:  # bad bytes -> a skipped row
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != ["epoch", "train_loss", "val_loss"]:
            warnings.warn(f"{csv_path}: unexpected header {header}, skipping the file", stacklevel=3)
            return rows
        for line_no, row in enumerate(reader, start=2):
            try:
                epoch, train_loss, val_loss = int(row[0]), float(row[1]), float(row[2])
                if len(row) != 3 or not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                    raise ValueError
            except (ValueError, IndexError):
                warnings.warn(f"{csv_path}:{line_no}: skipping unusable row {row}", stacklevel=3)
                continue
            rows.append((epoch, train_loss, val_loss))
    return rows


def _loads(path: Path) -> bool:
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        _, params, _ = load_from_zip_file(path, device="cpu")
    except Exception as exc:  # a truncated or foreign zip raises many types
        warnings.warn(f"skipping checkpoint {path.name}: it does not load ({exc})", stacklevel=3)
        return False
    if params is None or "policy" not in params:
        # A truncated zip can still open (zipfile finds the inner .pth's end record) and
        # come back empty instead of raising.
        warnings.warn(f"skipping checkpoint {path.name}: it has no policy parameters "
                      "(truncated or not an SB3 model)", stacklevel=3)
        return False
    return True


def find_best_checkpoint(directory: Path, name: str) -> BestCheckpoint:
    """Lowest val_loss among rows whose checkpoint exists and loads."""
    if not directory.is_dir():
        raise PipelineError(f"BC checkpoint dir not found: {directory}")
    csv_path = metrics_file(directory, name)
    if not csv_path.exists():
        others = sorted(p.name for p in directory.glob("*_metrics.csv"))
        if others:
            print(f"Ignoring metrics of other datasets: {', '.join(others)}")
        raise PipelineError(f"No metrics CSV files found in {directory}")
    rows = _rows(csv_path)
    epochs_trained = max((r[0] for r in rows), default=0)
    for epoch, train_loss, val_loss in sorted(rows, key=lambda r: (r[2], r[0])):
        path = checkpoint_file(directory, name, epoch, val_loss)
        if not path.exists():
            warnings.warn(f"{csv_path.name}: checkpoint of epoch {epoch} is missing ({path.name})",
                          stacklevel=2)
            continue
        if _loads(path):
            return BestCheckpoint(path, epoch, train_loss, val_loss, epochs_trained)
    raise PipelineError("Pipeline failed: No BC checkpoint available")


def has_checkpoint(directory: Path, name: str) -> bool:
    """Cheap check (no loading) used to decide between reuse and training."""
    return metrics_file(directory, name).exists() and any(directory.glob(f"{name}_epoch*.zip"))


@dataclass(frozen=True)
class BCDecision:
    """Train or reuse, why, and how the stored checkpoints' settings differ from this run's."""

    train: bool
    reason: str
    differences: list[str] = field(default_factory=list)

    def as_log(self) -> dict:
        return {"train": self.train, "reason": self.reason, "differences": self.differences}


def _flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_differences(stored: dict | None, wanted: dict) -> list[str]:
    """Human-readable `field: stored -> wanted` lines; [] when the settings match."""
    if stored is None:
        return ["no record of the settings they were trained with (trained by an earlier "
                "version, or the run that trained them was interrupted)"]
    old, new = _flat(stored), _flat(wanted)
    return [f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def decide_bc(directory: Path, name: str, wanted: dict | None, skip_bc: bool,
              force_retrain: bool, stdin=None, ask=input) -> BCDecision:
    """QUICKSTART's step 1: reuse or retrain. Prompts only when stdin is a terminal.

    `wanted` is this run's BC settings record (bc.settings_record); None skips the comparison.
    Matching settings: reuse (a terminal is still asked). Different settings: a terminal is
    shown the difference and asked; without one BC retrains and says why; --skip_bc reuses
    anyway and says what differs."""
    stdin = stdin or sys.stdin
    if force_retrain:
        print("--force_bc_retrain: training BC from scratch")
        return BCDecision(True, "--force_bc_retrain")
    if not directory.is_dir():
        print(f"BC checkpoint dir not found: {directory}")
        return BCDecision(True, "no checkpoint dir")
    if not has_checkpoint(directory, name):
        print(f"No BC checkpoint for {name} in {directory}"
              + ("; --skip_bc has nothing to reuse, training BC" if skip_bc else ", training BC"))
        return BCDecision(True, "no checkpoint")
    diffs = [] if wanted is None else settings_differences(read_settings(directory, name), wanted)
    what = "; ".join(diffs)
    if skip_bc:
        print(f"--skip_bc: reusing the BC checkpoints of {name} in {directory}"
              + (f", although they were trained with other settings: {what}" if diffs else ""))
        return BCDecision(False, "--skip_bc", diffs)
    if stdin is None or not stdin.isatty():  # sys.stdin is None under some daemons
        if diffs:
            print(f"Found BC checkpoints for {name} in {directory} trained with other settings "
                  f"({what}); stdin is not a terminal, retraining BC (the earlier checkpoints "
                  "move to superseded/; pass --skip_bc to reuse them anyway)")
            return BCDecision(True, "settings differ (no terminal)", diffs)
        print(f"Found BC checkpoints for {name} in {directory}; stdin is not a terminal, reusing "
              "them (pass --force_bc_retrain to retrain)")
        return BCDecision(False, "settings match (no terminal)")
    if diffs:
        print(f"The BC checkpoints of {name} in {directory} were trained with other settings:")
        for line in diffs:
            print(f"  {line}")
    while True:
        try:
            answer = ask(f"BC checkpoints for {name} exist in {directory}. [r]euse or re[t]rain? [r] ")
        except EOFError:  # Ctrl-D: no answer is not an answer
            print()
            raise PipelineError("No answer at the reuse/retrain prompt (end of input); rerun and "
                                "answer r or t, or pass --skip_bc or --force_bc_retrain") from None
        answer = answer.strip().lower()
        if answer in ("", "r", "reuse"):
            return BCDecision(False, "reuse (answered at the prompt)", diffs)
        if answer in ("t", "retrain"):
            return BCDecision(True, "retrain (answered at the prompt)", diffs)
        print("Please answer r (reuse) or t (retrain).")


def should_train_bc(directory: Path, name: str, skip_bc: bool, force_retrain: bool,
                    stdin=None, ask=input, wanted: dict | None = None) -> bool:
    return decide_bc(directory, name, wanted, skip_bc, force_retrain, stdin, ask).train
