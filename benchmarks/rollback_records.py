"""Records of the rollback variants for the seeds on which no rollback would trigger.

A run with `rollback_drop` is its base run (`hybrid`, `bc_ppo`) until the first evaluation that
falls past the drop: the rollback only snapshots state until then and draws no random number
(tested: `PolicyRollbackTest`). So on a seed whose recorded base curve never falls that far, the
rollback run is the base run, and running it again would spend ~6 CPU-minutes to reproduce a
known record. This script

1. checks that claim on every rollback run that did run: its curve must equal its base's, seed
   for seed, up to and including the evaluation that triggered its first rollback (a run with
   none: all of it, and its test evaluations);
2. for the seeds whose base curve never falls past the drop, appends the base record
   relabelled (`variant`, `config.rollback_drop`, `rollbacks: []`) with `derived_from`
   naming the base, so that analyze_finetune.py compares the variants on the same seeds.

It refuses to derive anything if a check fails. The base run's wall time is kept.

  python benchmarks/rollback_records.py --seeds $(seq 0 24)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training_files"))
from finetune import RESULTS, VARIANTS, append_result  # noqa: E402
from policy_rollback import fell_past  # noqa: E402

BASES = {"hybrid-rollback": "hybrid", "bc_ppo-rollback": "bc_ppo"}


def first_rollback(curve: list[dict], drop: float) -> int | None:
    """Index of the first evaluation more than drop * |best| below the best before it
    (policy_rollback.PolicyRollback's rule), or None."""
    best = None
    for i, ev in enumerate(curve):
        if best is not None and fell_past(best, ev["mean_reward"], drop):
            return i
        if best is None or ev["mean_reward"] > best:
            best = ev["mean_reward"]
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["medium-v0"])
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(25)))
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    records = [json.loads(line) for line in args.results.read_text().splitlines() if line]
    walker = [r for r in records if r.get("env", "walker2d") == "walker2d"
              and r["timesteps"] == 200_000]
    by_key = {(r["dataset"], r["variant"], r["seed"]): r for r in walker}

    failures, checked = [], 0
    for (dataset, variant, seed), run in by_key.items():
        if variant not in BASES or run.get("derived_from"):
            continue
        base = by_key.get((dataset, BASES[variant], seed))
        fell = next((i for i, ev in enumerate(run["curve"]) if "rollback_to" in ev), None)
        if base is None:
            continue
        upto = len(run["curve"]) if fell is None else fell + 1
        same = ([ev["mean_reward"] for ev in run["curve"][:upto]]
                == [ev["mean_reward"] for ev in base["curve"][:upto]])
        if fell is None:  # the whole run, and what its models scored on the test episodes
            tests = lambda r: (r["final_test_eval"]["mean_reward"],  # noqa: E731
                               r["result"]["test_eval"]["mean_reward"])
            same = same and len(run["curve"]) == len(base["curve"]) and tests(run) == tests(base)
        checked += 1
        if not same:
            failures.append(f"{dataset} {variant} seed {seed}")
    print(f"checked {checked} rollback runs against their base runs up to the first rollback: "
          + ("all equal" if not failures else "DIFFERENT: " + ", ".join(failures)))
    if failures:
        sys.exit("not deriving records: the runs are not their base runs until a rollback")

    for dataset in args.datasets:
        for variant, base_name in BASES.items():
            drop = VARIANTS[variant]["hparams"]["rollback_drop"]
            for seed in args.seeds:
                base = by_key.get((dataset, base_name, seed))
                if (dataset, variant, seed) in by_key or base is None:
                    continue
                if first_rollback(base["curve"], drop) is not None:
                    continue  # it would roll back: only a real run says what follows
                record = copy.deepcopy(base)
                record["variant"] = variant
                record["config"]["rollback_drop"] = drop
                record["rollbacks"] = []
                record["derived_from"] = {
                    "variant": base_name,
                    "reason": f"no evaluation of the base run falls more than {drop} x |best| "
                              "below the best before it, so no rollback triggers and the run "
                              "is the base run (rollback_records.py)"}
                append_result(record, args.results)
                print(f"derived {dataset} {variant} seed {seed} from {base_name}")


if __name__ == "__main__":
    main()
