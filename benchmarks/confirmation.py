"""What the confirmation step (hparam `confirm_episodes`) would have handed over in runs made
before it existed, measured on those runs' own models.

For each finished walker2d run in finetune.jsonl whose handed-over model was not BC, it finds
that model file and checks it is the right one (re-scored on the run's periodic-evaluation
seeds it must reproduce the recorded best evaluation exactly; the BC checkpoint likewise its
step-0 one), then scores it and the run's BC policy on the confirmation episodes the pipeline
now uses (`confirm_best`: 20 new selection episodes, the same for both). If the best scores below BC there, the run would have handed over BC, whose
test score the run already recorded. One JSON line per run is appended as it finishes; a rerun
skips runs already there. `--worker i/n` takes every n-th run from the i-th.

  python benchmarks/confirmation.py --variants hybrid bc_ppo --runs_dir benchmarks/runs/finetune
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training_files"))

from evaluation import SELECTION_SEED_OFFSET, evaluate  # noqa: E402
from hybrid_training import confirm_best  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs" / "finetune"
ENV_ID = "Walker2d-v4"
CONFIRM_EPISODES = 20  # the walker2d entry's confirm_episodes


def under(runs_dir: Path, recorded: str) -> Path:
    """A path the benchmark recorded (…/models/x.zip, …/bc/seedN/…) inside runs_dir."""
    parts = Path(recorded).parts
    for anchor in ("models", "bc"):
        if anchor in parts:
            return runs_dir.joinpath(*parts[parts.index(anchor):])
    raise ValueError(recorded)


def find(record: dict, recorded: str, evaluation: dict,
         runs_dirs: list[Path]) -> tuple[Path, dict] | None:
    """The file the run used, with its re-evaluation: the first candidate that reproduces
    `evaluation` on the run's periodic-evaluation seeds (same policy, same episodes); names
    repeat across run dirs."""
    from stable_baselines3 import PPO

    for runs_dir in runs_dirs:
        path = under(runs_dir, recorded)
        if not path.is_file():
            continue
        again = evaluate(PPO.load(path, device="cpu"), ENV_ID, {}, evaluation["episodes"],
                         SELECTION_SEED_OFFSET + record["seed"], record["dataset_info"]["ref_scores"])
        if abs(again["mean_reward"] - evaluation["mean_reward"]) <= 1e-3 * abs(evaluation["mean_reward"]):
            return path, again
    return None


def measure(record: dict, runs_dirs: list[Path]) -> dict:
    key = {k: record.get(k, "walker2d") if k == "env" else record[k]
           for k in ("env", "dataset", "variant", "seed")}
    model = find(record, record["result"]["model"], record["best_eval"], runs_dirs)
    bc_file = find(record, record["bc"]["best_checkpoint"], record["curve"][0], runs_dirs)
    if model is None or bc_file is None:
        return {**key, "found": False}
    cfg = SimpleNamespace(env_id=ENV_ID, env_kwargs={}, eval_episodes=record["best_eval"]["episodes"],
                          confirm_episodes=CONFIRM_EPISODES)
    c = confirm_best(model[0], bc_file[0], cfg, record["seed"], "cpu", record["dataset_info"]["ref_scores"])
    test = record["result"]["test_eval"]["normalized_score"]
    bc_test = record["bc"]["test_eval"]["normalized_score"]
    return {**key, "found": True, "source": record["result"]["source"],
            "confirm_best": c["best"]["normalized_score"], "confirm_bc": c["bc"]["normalized_score"],
            "kept": c["kept"], "test_without": test, "test_with": test if c["kept"] else bc_test,
            "bc_test": bc_test}


def summary(rows: list[dict]) -> str:
    found = [r for r in rows if r["found"]]
    lines = ["| dataset | variant | runs | best rejected | handed over < BC on the test: without / "
             "with | mean test without / with | mean BC test |", "|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in found:
        groups.setdefault((r["dataset"], r["variant"]), []).append(r)
    for (dataset, variant), rs in sorted(groups.items()):
        worse = lambda k: sum(r[k] < r["bc_test"] - 1e-9 for r in rs)  # noqa: E731
        lines.append(f"| {dataset} | {variant} | {len(rs)} | {sum(not r['kept'] for r in rs)} | "
                     f"{worse('test_without')} / {worse('test_with')} | "
                     f"{np.mean([r['test_without'] for r in rs]):.1f} / "
                     f"{np.mean([r['test_with'] for r in rs]):.1f} | "
                     f"{np.mean([r['bc_test'] for r in rs]):.1f} |")
    lost = len(rows) - len(found)
    if lost:
        lines.append(f"\n{lost} runs left out: their model file was not found or did not "
                     f"reproduce the recorded best evaluation.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--datasets", nargs="+", default=["medium-v0", "expert-v0"])
    p.add_argument("--runs_dir", type=Path, nargs="+", default=[RUNS],
                   help="finetune.py's --runs_dir(s), searched in order")
    p.add_argument("--finetune_results", type=Path, default=RESULTS / "finetune.jsonl")
    p.add_argument("--results", type=Path, default=RESULTS / "confirmation.jsonl")
    p.add_argument("--worker", default="0/1", help="i/n: take every n-th run from the i-th")
    args = p.parse_args()
    torch.set_num_threads(1)
    i, n = map(int, args.worker.split("/"))

    runs = {}
    for line in args.finetune_results.read_text().splitlines():
        r = json.loads(line)
        if r.get("env", "walker2d") == "walker2d" and r["dataset"] in args.datasets \
                and r["variant"] in args.variants and r["result"]["source"] != "bc" \
                and not r["config"].get("confirm_episodes"):  # runs made with it: as they are
            runs[(r["dataset"], r["variant"], r["seed"])] = r  # the last record of a seed wins
    done = {}
    if args.results.exists():
        for line in args.results.read_text().splitlines():
            r = json.loads(line)
            done[(r["dataset"], r["variant"], r["seed"])] = r
    pending = [k for k in sorted(runs) if k not in done][i::n]
    for k in pending:
        row = measure(runs[k], args.runs_dir)
        with open(args.results, "a") as fh:  # one line per run: a crash keeps finished runs
            fh.write(json.dumps(row) + "\n")
        done[k] = row
        print(k, "kept" if row.get("kept") else ("REJECTED" if row["found"] else "not found"),
              flush=True)
    table = summary([done[k] for k in sorted(runs) if k in done])
    args.results.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
