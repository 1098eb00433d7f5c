"""A new user's first run, timed: QUICKSTART's minimal command on a fresh clone, empty HOME.

Clones the repository's committed HEAD into a temporary folder, points HOME (and so the Minari
and D4RL directories) at an empty folder, runs the command exactly as QUICKSTART writes it, and
records its wall time and the per-stage seconds the pipeline logs (dataset generation, BC
training, BC evaluation, critic warm-up, rollouts, updates, periodic evaluation,
confirmation, test evaluation) in benchmarks/results/first_run.json. Run it with nothing else on the machine.

  python benchmarks/first_run.py [--extra_flags "--torch_threads 2"]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "first_run.json"
QUICKSTART_MINIMAL = ["training_files/train_hybrid_pipeline.py", "--dataset", "mujoco", "--env",
                      "walker2d", "--names", "expert-v0", "--hparam_bc", "Walker2d-v4-bc-large",
                      "--hparam_hybrid", "Walker2d-v4-hybrid", "--seed", "42"]


def cpu_model() -> dict | None:
    """The processor's name and AVX flags as Linux reports them (None elsewhere): results
    differ by CPU, and a virtual machine's name alone often does not tell CPUs apart."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    field = lambda name: next((l.split(":", 1)[1].strip() for l in lines if l.startswith(name)), "")
    return {"model": field("model name"),
            "avx": sorted(flag for flag in field("flags").split() if flag.startswith("avx"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--extra_flags", default="", help="appended to the command (default: none)")
    p.add_argument("--label", default="quickstart_minimal")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
        clone, home = Path(tmp) / "clone", Path(tmp) / "home"
        home.mkdir()
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True,
                                text=True, check=True).stdout.strip()
        env = {k: v for k, v in os.environ.items()
               if k not in ("MINARI_DATASETS_PATH", "D4RL_DATASET_DIR")}
        env["HOME"] = str(home)
        cmd = [sys.executable, *QUICKSTART_MINIMAL, *shlex.split(args.extra_flags)]
        started = time.time()
        proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
        wall = time.time() - started
        if proc.returncode != 0:
            sys.exit(f"the command failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        entry = json.loads((clone / "logs" / "pipeline_runs.json").read_text())[-1]
    record = {"label": args.label, "commit": commit, "command": ["python", *cmd[1:]], "wall_time_s": round(wall, 1),
              "stage_seconds": entry["seconds"], "cpus": os.cpu_count(), "cpu": cpu_model(),
              # another CPU generates other bytes of the same recipe (README, "Data without internet")
              "dataset_sha256": [s.get("sha256") for s in entry["dataset"]["sources"]],
              "bc_test": entry["bc"]["test_eval"]["normalized_score"],
              "result": {k: entry["result"][k] for k in ("source",)} | {
                  "test": entry["result"]["test_eval"]["normalized_score"]},
              "confirmation": {k: (v["normalized_score"] if isinstance(v, dict) else v)
                               for k, v in entry["result"].get("confirmation", {}).items()},
              "final_test": entry["final_test_eval"]["normalized_score"],
              "last_lines": proc.stdout.strip().splitlines()[-2:]}
    runs = json.loads(OUT.read_text()) if OUT.exists() else []
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(runs + [record], indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
