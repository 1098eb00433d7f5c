"""Fine-tuning benchmark: the pipeline itself, run per (dataset, variant, seed), resumable.

Every run is the real command (`train_hybrid_pipeline.py`, as a user types it) with its own
BC checkpoint directory per seed (BC trained once per seed and dataset, reused by that seed's
variants with --skip_bc), 200k online steps, 10-episode periodic evaluations on fixed seeds and
the 20-episode test evaluation on other seeds. What a run logged is copied as one JSON line
into benchmarks/results/finetune.jsonl when it finishes; a rerun skips finished runs.
`--worker i/n` takes every n-th requested run from the i-th and runs those not yet in the
results file. A run on other bytes of a dataset than the file's runs of it (the same recipe
generated on another CPU) stops the script instead of joining them. `analyze_finetune.py`
turns the lines into tables and plots (rliable).

Variants (each differs from `hybrid`, the walker2d entry as it was before 2026-11-28, in one
thing; the ablations measured before positive offline advantages became that entry's setting
keep signed ones, so they differ from `hybrid-signed_offline` in one thing). Today's walker2d
default, hparam.yml's `Walker2d-v4-hybrid` as it is, is `hybrid-gated_anchor_offline_critic_only`:
  bc_ppo                  --mix_ratio 0: PPO started from BC (same warm-ups and schedules)
  hybrid                  the former default (offline_advantages positive: offline samples
                          enter the policy gradient only where their V-trace advantage is > 0;
                          no anchor; on ant and humanoid signed, their entries' setting until
                          test AC)
  hybrid-signed_offline   offline_advantages signed, as online (the default until this
                          benchmark showed otherwise)
  hybrid-offline_improvement  offline_policy_updates 20: 20 updates on offline samples alone
                          before the first rollout, kept only if they evaluate >= BC
  hybrid-log_std_decay_2  log_std_decay 2.0: exploration noise ends at e^-2 of BC's, not e^-1
  hybrid-positive_bc_coeff_0.05  --bc_coeff 0.05 (10x the default) with positive advantages
  hybrid-anchor           anchor_coeff 1.0, anchor_decay 0.95: the mean action is held near
                          BC's by a KL penalty whose weight decays per update (DAPG's schedule)
  bc_ppo-anchor           the same anchor on PPO started from BC
  hybrid-anchor_offline_critic_only  the anchor, and offline samples train the critic only
                          (offline_advantages none): the data's values without their actions
  hybrid-offline_critic_only  offline samples train the critic only, no anchor
  hybrid-start_anchor     anchor_coeff 10, anchor_decay 0.95, anchor_episodes 10: the anchor
                          holds on the states of BC's own 10 deterministic episodes, where the
                          evaluated policy goes, not on the update's (noisy rollouts fall early)
  hybrid-start_anchor_completed  the same, on the states of those of the 10 episodes that ran
                          to the time limit (anchor_keep completed): a weak BC policy is held
                          only where it walks, not where it falls
  hybrid-start_anchor_1   the same as hybrid-start_anchor at weight 1: the penalty is measured
                          in units of BC's noise, which is 3.5x narrower on expert-v0 (floored
                          at log_std_min) than on medium-v0, so weight 10 is ~12x stiffer there
  bc_ppo-start_anchor     hybrid-start_anchor at --mix_ratio 0: is its edge the anchor's or
                          the offline data's?
  hybrid-start_anchor_uni_o4  the start anchor with Uni-O4's steps as hybrid-uni_o4_separate_clip
                          takes them: two mechanisms against different failures, together
  bc_ppo-start_anchor_uni_o4  the same at --mix_ratio 0
  hybrid-start_anchor_average  hybrid-start_anchor with policy_average_steps 10000: the
                          anchor against the gap to PPO-from-BC, the average against single dips
  hybrid-start_anchor_uni_o4_average  hybrid-start_anchor_uni_o4 with the same average
  hybrid-gated_anchor     hybrid-start_anchor with anchor_gate bc_gain: its weight times
                          clip(R_bc / R_data - 1, 0, 1), BC's episodes' return over the data's
                          (full where BC doubles its data, none where it does no better)
  hybrid-null_anchor      hybrid-start_anchor at anchor_coeff 1e-9, ungated: the anchor's
                          episodes and random draws (its rows come from NumPy's global RNG, so
                          the minibatch order changes) without its pull; against `hybrid` on the
                          same seeds, what a change of random stream alone does to a run (test P)
  hybrid-gated_anchor_offline_critic_only  the gated default with offline_advantages none:
                          offline samples train the critic and the BC term, not the policy
                          gradient (test W: the default stalls at its data's level on
                          walker2d simple-v0, data no better than BC)
  hybrid-gated_anchor_offline_critic_only_online_mean  that default with policy_gradient_mean
                          online: the clipped-surrogate loss summed over the minibatch and
                          divided by its online rows, not all its rows, so the online policy
                          gradient keeps PPO's size (the joint clip leaves the actor's step
                          proportional to it: test X)
  hybrid-gated_anchor_offline_critic_only_no_bc  that default with --bc_coeff 0: the offline
                          samples train the critic only (test Y)
  hybrid-gated_anchor_offline_critic_only_bc_decay  that default with bc_decay 0.95: the BC
                          term's weight decays per update as the anchor's does (test Y)
  hybrid-gated_anchor_offline_critic_only_no_offline_value  that default with
                          offline_value_weight 0: after the warm-ups the critic learns from the
                          online rows alone, as bc_ppo's does (test Z)
  hybrid-gated_anchor_offline_critic_only_offline_inert  that default with --bc_coeff 0 and
                          offline_value_weight 0: after the warm-ups the offline rows are only
                          zeros in the actor's surrogate mean (test AG)
  hybrid-gated_anchor_offline_critic_only_offline_inert_online_mean  that, with
                          policy_gradient_mean online: the offline rows do nothing after the
                          warm-ups, PPO-from-BC in distribution (tests AG, AI)
  bc_ppo-log_std_shift    bc_ppo with --log_std_subtract 1e-6: another random path, nothing
                          else changed (test AH)
  hybrid-log_std_shift    --log_std_subtract 1e-6: the exploration noise smaller by one part in a
                          million, the random stream untouched; against `hybrid`, what the
                          smallest change to the parameters does to a run (test Q)
  hybrid-policy_average   policy_average_steps 10000: what is evaluated, kept and handed over is
                          an exponential moving average of the actor's weights with a time
                          constant of one evaluation interval; rollouts use the live policy
  hybrid-restarts         deterministic_restarts 0.5: half the training episodes start where
                          the current deterministic policy walked for a random number of steps
                          (the evaluated policy's states; the prefix's env steps are reported)
  hybrid-restarts_matched the same at the same env interaction as hybrid: run with --timesteps
                          131072, the prefixes adding ~72k env steps (measured: 202.8k in all)
  hybrid-positive_offline offline_advantages positive, set explicitly: the same as `hybrid` on
                          walker2d, a variant on ant and humanoid (their `hybrid` signed, their
                          entries none since test AC)
  hybrid-small_steps      learning_rate 3e-5, clip_range 0.05: Uni-O4's actor step sizes
  hybrid-critic_lr        critic_learning_rate 3e-4: the critic 6x faster than the actor
  hybrid-uni_o4_steps     both: actor 3e-5, critic 2e-4, clip 0.05 (Uni-O4's wm.sh)
  hybrid-rollback         rollback_drop 0.3: an evaluation more than 30% below the best so far
                          sends training back to the best evaluation's policy and optimizer
                          (policy_rollback.py); bc_ppo-rollback likewise. On seeds where the
                          base run never falls that far the run is the base run: its records
                          are derived by rollback_records.py, which checks that claim
  hybrid-uni_o4_separate_clip  Uni-O4's steps as Uni-O4 takes them: grad_clip separate, actor
                          3e-5, critic 2e-4, clip 0.05 (hybrid-uni_o4_steps kept the joint
                          clip); bc_ppo-uni_o4_separate_clip likewise at mix 0
  hybrid-mix_0.25, hybrid-mix_0.75  --mix_ratio 0.25 / 0.75: the offline share's dose-response
                          (bc_ppo is 0, hybrid 0.5)
  hybrid-separate_clip    grad_clip separate: the actor's and the critic's gradients clipped
                          each at max_grad_norm, not jointly (gradient_clipping.py)
  hybrid-separate_clip_matched  the same with the actor's rate at 1.5e-6 (critic 5e-5): the
                          joint clip's mean actor step (grad_clip_diag.py), so only the
                          coupling to the critic's gradient changes
Signed ablations:
  hybrid-no_critic_only   critic_only_updates 0
  hybrid-constant_lr      lr_schedule constant
  hybrid-mean_centering   offline_advantage_centering mean (SB3's rule per source)
  hybrid-bc_coeff_0.05    --bc_coeff 0.05 (10x the default)
  hybrid-signed_offline_improvement  offline_policy_updates 20 with signed advantages
  hybrid-signed_offline_improvement_ungated  the same, always kept (the first runs of the
                          variant, made before the gate existed, are relabelled to this name)
  hybrid-log_std_decay_0  log_std_decay 0: explore with BC's noise all run (the default until
                          this benchmark showed otherwise); bc_ppo-log_std_decay_0 likewise
  hybrid-log_std_subtract_1  --log_std_subtract 1.0 with log_std_decay 0: cut the noise to
                          e^-1 of BC's at once instead of over the run
  hybrid-previous         critic-only updates, lr schedule, rho centring and noise schedule off:
                          the method as it stood before this round

Results of runs made before a default changed were relabelled so that names keep the meanings
above (their `config` field shows what ran): `hybrid-positive_offline` is now `hybrid`, the
`hybrid` of that time `hybrid-signed_offline`, `hybrid-offline_improvement[_ungated]` with
signed advantages `hybrid-signed_offline_improvement[_ungated]`; before log_std_decay became
the default, `hybrid`/`bc_ppo` of that time are `hybrid-log_std_decay_0`/`bc_ppo-log_std_decay_0`.

  python benchmarks/finetune.py --datasets medium-v0 --seeds 0 1 2 3 4 \\
      --variants hybrid bc_ppo --worker 0/2
  # QUICKSTART's other envs on their bundled data (test AC: their default since 2026-11-29 is
  # hybrid-offline_critic_only; hybrid keeps their former signed offline advantages)
  python benchmarks/finetune.py --env ant --datasets simple-v0 --seeds 0 1 2 \\
      --variants hybrid-offline_critic_only hybrid bc_ppo --timesteps 500000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "finetune.jsonl"
RUNS = REPO / "benchmarks" / "runs" / "finetune"
ENTRY = REPO / "training_files" / "train_hybrid_pipeline.py"
# QUICKSTART's hparam keys per --env
KEYS = {"walker2d": ("Walker2d-v4-bc-large", "Walker2d-v4-hybrid"),
        "ant": ("Ant-v4-bc-large", "Ant-v4-hybrid"),
        "humanoid": ("Humanoid-v4-bc-large", "Humanoid-v4-hybrid")}

# What every walker2d variant is a change of: the walker2d entry before the gated anchor became
# its default (2026-11-28), with positive offline advantages, so `hybrid`, `bc_ppo` and every
# ablation keep the runs they recorded (docs/RESULTS.md: test L'). The default became the
# `hybrid-gated_anchor` variant, and since test W (2026-11-28, session 27)
# `hybrid-gated_anchor_offline_critic_only`.
PREVIOUS_WALKER2D_DEFAULT = {"anchor_coeff": 0.0, "anchor_episodes": 0, "anchor_gate": "none",
                             "offline_advantages": "positive"}
NO_DECAY = {"log_std_decay": 0.0}
# The ablations below were measured when signed offline advantages were the default: they keep
# it, so a rerun reproduces them; they are variants of `hybrid-signed_offline`.
SIGNED = {"offline_advantages": "signed"}
# What every variant is a change of, per env: the ant and humanoid entries had signed offline
# advantages until test AC (2026-11-29, docs/RESULTS.md), so their `hybrid` keeps them there
# and their default since then is `hybrid-offline_critic_only`.
PREVIOUS_DEFAULTS = {"walker2d": PREVIOUS_WALKER2D_DEFAULT, "ant": SIGNED, "humanoid": SIGNED}
ANCHOR = {"anchor_coeff": 1.0, "anchor_decay": 0.95}
START_ANCHOR = {**ANCHOR, "anchor_coeff": 10.0, "anchor_episodes": 10}
# the walker2d default's anchor since 2026-11-28: the start anchor, weighted by BC's gain
# over its data
GATED_ANCHOR = {**START_ANCHOR, "anchor_gate": "bc_gain"}
# the walker2d default since test W: that anchor, offline samples out of the policy gradient
GATED_CRITIC_ONLY = {**GATED_ANCHOR, "offline_advantages": "none"}
# that default with the offline rows out of the value loss (test AG's variants add --bc_coeff 0)
OFFLINE_INERT = {**GATED_CRITIC_ONLY, "offline_value_weight": 0.0}
# Uni-O4's step sizes for walker2d-medium (ppo_finetune/scripts/mujoco_loco/wm.sh: actor 3e-5,
# critic 2e-4; clip 0.05 its default)
UNI_O4_STEPS = {"learning_rate": 3e-5, "critic_learning_rate": 2e-4, "clip_range": 0.05}
VARIANTS: dict[str, dict] = {
    "bc_ppo": {"flags": ["--mix_ratio", "0"]},
    "hybrid": {},
    "hybrid-signed_offline": {"hparams": SIGNED},
    "hybrid-offline_improvement": {"hparams": {"offline_policy_updates": 20}},
    "hybrid-log_std_decay_2": {"hparams": {"log_std_decay": 2.0}},
    "hybrid-positive_bc_coeff_0.05": {"flags": ["--bc_coeff", "0.05"]},
    "hybrid-positive_offline": {"hparams": {"offline_advantages": "positive"}},
    "hybrid-anchor": {"hparams": ANCHOR},
    "bc_ppo-anchor": {"flags": ["--mix_ratio", "0"], "hparams": ANCHOR},
    "hybrid-anchor_offline_critic_only": {"hparams": {**ANCHOR, "offline_advantages": "none"}},
    "hybrid-start_anchor": {"hparams": START_ANCHOR},
    "hybrid-start_anchor_completed": {"hparams": {**START_ANCHOR, "anchor_keep": "completed"}},
    "hybrid-start_anchor_1": {"hparams": {**START_ANCHOR, "anchor_coeff": 1.0}},
    "bc_ppo-start_anchor": {"flags": ["--mix_ratio", "0"], "hparams": START_ANCHOR},
    "hybrid-offline_critic_only": {"hparams": {"offline_advantages": "none"}},
    "hybrid-policy_average": {"hparams": {"policy_average_steps": 10000}},
    "hybrid-restarts": {"hparams": {"deterministic_restarts": 0.5}},
    "hybrid-restarts_matched": {"hparams": {"deterministic_restarts": 0.5}},  # --timesteps 131072
    # Uni-O4's walker2d-medium actor step sizes (lr_a 3e-5 in ppo_finetune/scripts/mujoco_loco/
    # wm.sh, clip 0.05 its default): smaller policy steps, against the falls that come with
    # training. Here one learning rate serves actor and critic; Uni-O4's critic has its own, 2e-4.
    "hybrid-small_steps": {"hparams": {"learning_rate": 3e-5, "clip_range": 0.05}},
    # the critic 6x faster than the actor: SB3's PPO default rate, near Uni-O4's ratio (2e-4/3e-5)
    "hybrid-critic_lr": {"hparams": {"critic_learning_rate": 3e-4}},
    # Uni-O4's step sizes together (actor 3e-5, critic 2e-4 in wm.sh, clip 0.05): the two above
    # each measured one part alone
    "hybrid-uni_o4_steps": {"hparams": UNI_O4_STEPS},
    # an evaluation more than 30% below the best sends training back to the best's state
    # (seeds where the base run never falls that far: rollback_records.py)
    "hybrid-rollback": {"hparams": {"rollback_drop": 0.3}},
    "bc_ppo-rollback": {"flags": ["--mix_ratio", "0"], "hparams": {"rollback_drop": 0.3}},
    # the actor's and the critic's gradients clipped each on its own (Uni-O4), not jointly (SB3)
    "hybrid-separate_clip": {"hparams": {"grad_clip": "separate"}},
    # the same at the joint clip's mean actor step: under it the actor's clipped gradient is so
    # small that Adam's eps cuts its steps to ~3% (docs/RESULTS.md), so 5e-5 x 0.03; the critic keeps 5e-5
    "hybrid-separate_clip_matched": {"hparams": {"grad_clip": "separate", "learning_rate": 1.5e-6,
                                                 "critic_learning_rate": 5e-5}},
    # Uni-O4's step rule as Uni-O4 applies it (ppo_finetune/ppo.py: an Adam per network, each
    # gradient clipped at 0.5 on its own; wm.sh: actor 3e-5, critic 2e-4; clip 0.05):
    # hybrid-uni_o4_steps kept the joint clip, under which the actor keeps 2-4% of Adam's step
    "hybrid-uni_o4_separate_clip": {"hparams": {**UNI_O4_STEPS, "grad_clip": "separate"}},
    "bc_ppo-uni_o4_separate_clip": {"flags": ["--mix_ratio", "0"],
                                    "hparams": {**UNI_O4_STEPS, "grad_clip": "separate"}},
    "hybrid-start_anchor_uni_o4": {"hparams": {**START_ANCHOR, **UNI_O4_STEPS,
                                               "grad_clip": "separate"}},
    "bc_ppo-start_anchor_uni_o4": {"flags": ["--mix_ratio", "0"],
                                   "hparams": {**START_ANCHOR, **UNI_O4_STEPS, "grad_clip": "separate"}},
    # the anchors' expert dips are single evaluations between full ones; the weights' average
    # (hybrid-policy_average: fewest expert dips) should damp them (session 18)
    "hybrid-start_anchor_average": {"hparams": {**START_ANCHOR, "policy_average_steps": 10000}},
    # test J (session 21): the start anchor only as far as BC outscores its data
    "hybrid-gated_anchor": {"hparams": GATED_ANCHOR},
    # test P (session 26): the gated anchor's random stream without its pull (docs/RESULTS.md)
    "hybrid-null_anchor": {"hparams": {**START_ANCHOR, "anchor_coeff": 1e-9}},
    # test W: the default with no offline policy gradient (offline samples train the critic and
    # the BC term only), the candidate against the stall on data no better than BC
    "hybrid-gated_anchor_offline_critic_only": {"hparams": GATED_CRITIC_ONLY},
    # test X (session 28): that default with the policy-gradient loss over the online rows'
    # count, so the offline rows (no policy gradient) no longer halve the actor's step (rejected)
    "hybrid-gated_anchor_offline_critic_only_online_mean": {
        "hparams": {**GATED_CRITIC_ONLY, "policy_gradient_mean": "online"}},
    # test Y (session 29): the default without its BC term, and with the BC term's weight decaying
    # per update as the anchor's does (DAPG's lambda1 0.95): is the BC term's pull towards weak data,
    # which grows as the noise schedule shrinks sigma, why the default lags bc_ppo on simple-v0?
    # (no: both rejected on simple-v0 seeds 0-9, docs/RESULTS.md)
    "hybrid-gated_anchor_offline_critic_only_no_bc": {"flags": ["--bc_coeff", "0"],
                                                      "hparams": GATED_CRITIC_ONLY},
    "hybrid-gated_anchor_offline_critic_only_bc_decay": {
        "hparams": {**GATED_CRITIC_ONLY, "bc_decay": 0.95}},
    # test Z (session 30): the default with the offline rows out of the value loss after the
    # warm-ups: are they (late in a run, V-trace targets near the critic's own values) the lag?
    "hybrid-gated_anchor_offline_critic_only_no_offline_value": {
        "hparams": {**GATED_CRITIC_ONLY, "offline_value_weight": 0.0}},
    # test AG (session 35): after the warm-up the offline rows without the BC term or the value
    # loss (only zeros in the actor's surrogate mean), and with those zeros out too (bc_ppo up
    # to the random stream): which part of the default costs its lag on simple-v0? (tests AI, AJ,
    # session 36: the fully inert variant is bc_ppo in distribution and level with it over 40
    # seeds; the default's lag over 100 seeds is ~3, not resolved)
    "hybrid-gated_anchor_offline_critic_only_offline_inert": {
        "flags": ["--bc_coeff", "0"], "hparams": OFFLINE_INERT},
    "hybrid-gated_anchor_offline_critic_only_offline_inert_online_mean": {
        "flags": ["--bc_coeff", "0"], "hparams": {**OFFLINE_INERT, "policy_gradient_mean": "online"}},
    # test Q (session 26): the same question with the random stream kept and the noise moved by 1e-6
    "hybrid-log_std_shift": {"flags": ["--log_std_subtract", "1e-6"]},
    # test AH (session 35): bc_ppo on another random path, nothing else changed: were the 20
    # bc_ppo runs the simple-v0 lag is measured against lucky?
    "bc_ppo-log_std_shift": {"flags": ["--mix_ratio", "0", "--log_std_subtract", "1e-6"]},
    "hybrid-start_anchor_uni_o4_average": {"hparams": {**START_ANCHOR, **UNI_O4_STEPS,
                                                       "grad_clip": "separate",
                                                       "policy_average_steps": 10000}},
    # the offline share's dose-response: bc_ppo is mix 0, hybrid 0.5 (QUICKSTART's default)
    "hybrid-mix_0.25": {"flags": ["--mix_ratio", "0.25"]},
    "hybrid-mix_0.75": {"flags": ["--mix_ratio", "0.75"]},
    "hybrid-no_critic_only": {"hparams": {"critic_only_updates": 0, **SIGNED}},
    "hybrid-constant_lr": {"hparams": {"lr_schedule": "constant", **SIGNED}},
    "hybrid-mean_centering": {"hparams": {"offline_advantage_centering": "mean", **SIGNED}},
    "hybrid-bc_coeff_0.05": {"flags": ["--bc_coeff", "0.05"], "hparams": SIGNED},
    "hybrid-signed_offline_improvement": {"hparams": {"offline_policy_updates": 20, **SIGNED}},
    "hybrid-signed_offline_improvement_ungated": {"hparams": {
        "offline_policy_updates": 20, "offline_improvement_gate": False, **SIGNED}},
    "hybrid-log_std_decay_0": {"hparams": {**NO_DECAY, **SIGNED}},
    "bc_ppo-log_std_decay_0": {"flags": ["--mix_ratio", "0"], "hparams": NO_DECAY},
    "hybrid-log_std_subtract_1": {"flags": ["--log_std_subtract", "1.0"],
                                  "hparams": {**NO_DECAY, **SIGNED}},
    # test H (session 20): the noise held from the start at the default schedule's end, e^-1 of
    # BC's (is the strong-BC early dip paid for training under BC's full noise?)
    "hybrid-low_noise": {"flags": ["--log_std_subtract", "1.0"], "hparams": NO_DECAY},
    "hybrid-previous": {"hparams": {"critic_only_updates": 0, "lr_schedule": "constant",
                                    "offline_advantage_centering": "mean", **NO_DECAY, **SIGNED}},
}


def records(path: Path = RESULTS) -> list[dict]:
    """The results file's runs; a line cut by a crash is skipped (that run simply reruns)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def finished(path: Path = RESULTS) -> set[tuple]:
    return {(r.get("env", "walker2d"), r["dataset"], r["variant"], r["seed"], r["timesteps"])
            for r in records(path)}


def worker_share(requested: list, worker: str) -> list:
    """The runs worker "i/n" owns: every n-th requested run from the i-th. Taken over the runs
    requested, not over those still pending, so workers started at different times still own
    disjoint shares (over the pending list, a worker that starts after the other has finished a
    run takes runs the other one holds: session 21 lost six runs and ran one twice that way)."""
    try:
        index, count = (int(x) for x in worker.split("/"))
    except ValueError:
        raise ValueError(f"--worker {worker!r}: expected i/n, e.g. 0/2") from None
    if not 0 <= index < count:
        raise ValueError(f"--worker {worker!r}: i must be in 0..n-1")
    return requested[index::count]


def hparam_file(variant: str, runs: Path, env: str = "walker2d") -> Path | None:
    """hparam.yml with the variant's changes to the hybrid entry (None: the file as it is),
    made to the env's PREVIOUS_DEFAULTS so that recorded runs stay reproducible."""
    base = PREVIOUS_DEFAULTS.get(env, {})
    changes = {**base, **VARIANTS[variant].get("hparams", {})}
    if not changes:
        return None
    bc_key, hybrid_key = KEYS[env]
    data = yaml.safe_load((REPO / "hparam.yml").read_text())
    data = {bc_key: data[bc_key], hybrid_key: {**data[hybrid_key], **changes}}
    path = runs / "hparams" / f"{env}_{variant}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def command(dataset: str, variant: str, seed: int, timesteps: int, runs: Path = RUNS,
            env: str = "walker2d", bc_runs: Path | None = None) -> tuple[list[str], str, Path]:
    """The pipeline's command line for one run (from argv[1] on), the run's tag and its log file.
    BC checkpoints are per seed under `bc_runs` (default: `runs`)."""
    tag = f"{dataset}_{variant}_seed{seed}" if env == "walker2d" else f"{env}_{dataset}_{variant}_seed{seed}"
    bc_key, hybrid_key = KEYS[env]
    save_file = runs / "models" / f"{tag}.zip"
    log_file = runs / "logs" / f"{tag}.json"
    args = ["--dataset", "mujoco", "--env", env,
            "--names", dataset, "--hparam_bc", bc_key, "--hparam_hybrid", hybrid_key,
            "--seed", str(seed), "--skip_bc", "--total_timesteps", str(timesteps),
            "--bc_checkpoint_dir", str((bc_runs or runs) / "bc" / f"seed{seed}"),  # per env inside
            "--save_file", str(save_file), "--log_file", str(log_file),
            "--no_progress", "--torch_threads", "1", "--device", "cpu",
            # two runs share the two cores (--worker): split's worker would only add contention
            # (the same samples either way; README: Speed)
            "--vec_env", "dummy",
            *VARIANTS[variant].get("flags", [])]
    hparams = hparam_file(variant, runs, env)
    if hparams is not None:
        args += ["--hparam_file", str(hparams)]
    return args, tag, log_file


def checkout(path: Path) -> Path:
    """The git checkout `path` lies in (a worktree's .git is a file); `path` if none."""
    path = path.resolve()
    return next((folder for folder in (path, *path.parents) if (folder / ".git").exists()), path)


def without_machine_paths(entry: dict, cmd: list[str], roots: set[Path]) -> tuple[dict, list[str]]:
    """The run log entry and command with paths relative to their checkout (and ~ for HOME),
    so committed results name no machine's folders; the longest root first, in case one
    checkout lies inside another."""
    text = json.dumps(entry)
    for root in sorted(roots, key=lambda p: len(str(p)), reverse=True):
        text = text.replace(f"{root}/", "")
        cmd = [c[len(f"{root}/"):] if c.startswith(f"{root}/") else c for c in cmd]
    return json.loads(text.replace(str(Path.home()), "~")), cmd


def run_one(dataset: str, variant: str, seed: int, timesteps: int, runs: Path = RUNS,
            env: str = "walker2d") -> dict:
    args, tag, log_file = command(dataset, variant, seed, timesteps, runs, env)
    log_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(ENTRY), *args]
    started = time.time()
    out_file = runs / "stdout" / f"{tag}.txt"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if code != 0:
        raise RuntimeError(f"{tag} exited {code}; see {out_file}")
    (entry,) = json.loads(log_file.read_text())
    # runs may lie in another checkout than this script's (a worktree's runs in the main one)
    entry, cmd = without_machine_paths(entry, cmd, {REPO, checkout(runs)})
    return {"env": env, "dataset": dataset, "variant": variant, "seed": seed, "timesteps": timesteps,
            "command": cmd[1:], "wall_time_s": round(time.time() - started, 1),
            "bc": entry["bc"], "warmup": entry["warmup"], "curve": entry["evaluations"],
            "best_eval": entry["best_eval"], "final_test_eval": entry["final_test_eval"],
            "result": entry["result"], "config": entry["config"]["hybrid"],
            "dataset_info": entry["dataset"],
            **{key: entry[key] for key in ("restarts", "rollbacks", "anchor_gate")
               if key in entry}}


def data_clash(record: dict, path: Path = RESULTS) -> str | None:
    """Why `record` must not join the results file, or None. A bundled recipe regenerates the
    same bytes on one machine but other episodes on another CPU (the last bit of a matrix
    product differs and the walker's falls amplify it), and runs on other data cannot be
    paired seed for seed with those already there."""
    digest = [source.get("sha256") for source in record["dataset_info"]["sources"]]
    for other in records(path):
        if (other.get("env", "walker2d"), other["dataset"]) != (record["env"], record["dataset"]):
            continue
        theirs = [source.get("sha256") for source in other["dataset_info"]["sources"]]
        if theirs != digest:
            return (f"{record['env']} {record['dataset']} here has sha256 {str(digest[0])[:8]}, "
                    f"but {path.name} holds runs on sha256 {str(theirs[0])[:8]} (generated on another "
                    f"machine?); give these runs their own --results file")
    return None


def append_result(record: dict, path: Path = RESULTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", choices=list(KEYS), default="walker2d",
                   help="QUICKSTART's --env; its hparam keys are QUICKSTART's (default: walker2d)")
    p.add_argument("--datasets", nargs="+", default=["medium-v0"])
    p.add_argument("--variants", nargs="+", default=["hybrid", "bc_ppo"], choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--timesteps", type=int, default=200_000)
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON-lines results file")
    p.add_argument("--runs_dir", type=Path, default=RUNS, help="models, BC checkpoints, logs")
    p.add_argument("--worker", default="0/1", help="i/n: this worker's share of the requested runs")
    args = p.parse_args()
    requested = [(d, v, s) for d in args.datasets for s in args.seeds for v in args.variants]
    try:
        share = worker_share(requested, args.worker)
    except ValueError as exc:
        p.error(str(exc))
    # Two workers on one seed share its BC (the pipeline's BC lock makes the second wait, then
    # reuse it).
    done = finished(args.results)
    mine = [run for run in share if (args.env, *run, args.timesteps) not in done]
    print(f"{len(requested)} runs requested, this worker's share {len(share)}, "
          f"{len(mine)} of them to run", flush=True)
    for dataset, variant, seed in mine:
        print(f"-> {dataset} {variant} seed {seed}", flush=True)
        try:
            record = run_one(dataset, variant, seed, args.timesteps, args.runs_dir.resolve(),
                             args.env)
        except RuntimeError as exc:  # one failed run must not stop the others
            print(f"   FAILED: {exc}", flush=True)
            continue
        clash = data_clash(record, args.results)
        if clash:
            sys.exit(f"ERROR: {clash}")
        append_result(record, args.results)
        res, bc = record["result"]["test_eval"], record["bc"]["test_eval"]
        key = "normalized_score" if res.get("normalized_score") is not None else "mean_reward"
        print(f"   done in {record['wall_time_s']} s: {record['result']['source']} model, test "
              f"{key} {res[key]:.1f} (BC {bc[key]:.1f})", flush=True)


if __name__ == "__main__":
    main()
