#!/usr/bin/env bash
# The fine-tuning benchmark behind docs/RESULTS.md, in priority order, on two workers (one
# per core, one torch thread each). Resumable: finished runs are skipped on a rerun, so the
# same script continues where a stopped session left it.
set -u
cd "$(dirname "$0")/.."
phase() {
  for w in 0 1; do python benchmarks/finetune.py "$@" --worker "$w/2" & done
  wait
}
# 1. headline on medium data: HybridPPO against PPO-from-BC, 25 seeds (10-14 and 15-24 added
# in later sessions, each decided before they ran, to narrow the CI of P(hybrid > bc_ppo))
phase --datasets medium-v0 --seeds $(seq 0 24) --variants hybrid bc_ppo
# 2. expert data, 10 seeds (5-9 added later, to check the goals on more seeds)
phase --datasets expert-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid
# 3. positive advantages against the previous default (signed); offline improvement on top
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-signed_offline
phase --datasets expert-v0 --seeds 0 1 2 3 4 --variants hybrid-signed_offline
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-offline_improvement
phase --datasets expert-v0 --seeds 0 1 2 3 4 --variants hybrid-offline_improvement
phase --datasets medium-v0 --seeds 0 1 2 3 --variants hybrid-log_std_decay_2 \
  hybrid-positive_bc_coeff_0.05
# the mean-action anchor (against the early dips), on both methods
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-anchor
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 --variants bc_ppo-anchor
phase --datasets expert-v0 --seeds 0 1 2 3 --variants hybrid-anchor
# offline samples out of the policy gradient (offline_advantages none), with and without anchor
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-anchor_offline_critic_only \
  hybrid-offline_critic_only
phase --datasets medium-v0 --seeds 10 11 12 13 14 --variants hybrid-anchor_offline_critic_only
phase --datasets expert-v0 --seeds 0 1 2 3 4 --variants hybrid-anchor_offline_critic_only
phase --datasets expert-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-offline_critic_only
# the anchor held on BC's own deterministic-episode states (anchor_episodes): all of them, or
# those of the episodes that ran to the time limit (anchor_keep completed)
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 --variants hybrid-start_anchor
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 \
  --variants hybrid-start_anchor_completed
phase --datasets expert-v0 --seeds 0 1 2 3 4 --variants hybrid-start_anchor_completed
# the same at weight 1 on expert data: were its early dips there the penalty's stiffness?
phase --datasets expert-v0 --seeds 0 1 2 3 4 --variants hybrid-start_anchor_1
# an exponential moving average of the actor's weights as the evaluated and handed-over policy
phase --datasets expert-v0 --seeds $(seq 0 9) --variants hybrid-policy_average
phase --datasets medium-v0 --seeds $(seq 0 24) --variants hybrid-policy_average
# training episodes started where the current deterministic policy walked (deterministic_restarts
# 0.5): screened on medium seeds 15-24 (the late collapses), then the unselected seeds and expert
phase --datasets medium-v0 --seeds $(seq 15 24) --variants hybrid-restarts
phase --datasets medium-v0 --seeds $(seq 0 9) --variants hybrid-restarts
phase --datasets expert-v0 --seeds 0 1 2 3 4 --variants hybrid-restarts
# 4. ablations of the signed method (measured while it was the default)
phase --datasets medium-v0 --seeds 0 1 2 3 4 --variants hybrid-log_std_decay_0 \
  bc_ppo-log_std_decay_0 hybrid-log_std_subtract_1
phase --datasets expert-v0 --seeds 0 1 2 3 4 --variants hybrid-log_std_decay_0
phase --datasets medium-v0 --seeds 0 1 2 --variants hybrid-no_critic_only hybrid-constant_lr \
  hybrid-mean_centering hybrid-previous hybrid-bc_coeff_0.05
phase --datasets medium-v0 --seeds 3 --variants hybrid-bc_coeff_0.05
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 --variants hybrid-signed_offline_improvement \
  hybrid-signed_offline_improvement_ungated
phase --datasets expert-v0 --seeds 0 1 2 3 4 --variants hybrid-signed_offline_improvement
# 5. QUICKSTART's other envs on their bundled data, one seed (learning curves)
python benchmarks/finetune.py --env ant --datasets simple-v0 --seeds 0 --variants hybrid bc_ppo \
  hybrid-positive_offline --timesteps 500000 &
python benchmarks/finetune.py --env humanoid --datasets simple-v0 --seeds 0 \
  --variants hybrid bc_ppo hybrid-positive_offline --timesteps 500000 &
wait
# test AC (2026-11-29, docs/RESULTS.md): offline samples out of the policy gradient there, 3 seeds
python benchmarks/finetune.py --env ant --datasets simple-v0 --seeds 0 1 2 \
  --variants hybrid-offline_critic_only hybrid bc_ppo --timesteps 500000 &
python benchmarks/finetune.py --env humanoid --datasets simple-v0 --seeds 0 1 2 \
  --variants hybrid-offline_critic_only hybrid bc_ppo --timesteps 500000 &
wait
phase --env humanoid --datasets simple-v0 --seeds 3 4 \
  --variants hybrid-offline_critic_only hybrid --timesteps 500000
python benchmarks/analyze_finetune.py
# 6. the measurements around the goals: how noisy one 10-episode evaluation of a BC policy is
# (the early-dip rule's noise floor), and what the confirmation step changes in these runs
python benchmarks/eval_noise.py --seeds $(seq 0 24)
for w in 0 1; do python benchmarks/confirmation.py --variants hybrid bc_ppo --worker "$w/2" & done
wait
# 7. diagnostic: do the late falls follow the schedules? Both methods stretched to 300k steps
# (own results file and runs directory: the 200k records stay apart)
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid bc_ppo --timesteps 300000 \
  --results benchmarks/results/finetune_300k.jsonl --runs_dir benchmarks/runs/finetune_300k
# 8. smaller policy steps (Uni-O4's lr 3e-5, clip 0.05): fewer falls, and at what cost?
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-small_steps
phase --datasets expert-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-small_steps
# 9. the critic at a learning rate of its own (6x the actor's, as Uni-O4 gives its critic)
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-critic_lr
# 10. Uni-O4's step sizes together: actor 3e-5, critic 2e-4, clip 0.05
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-uni_o4_steps
# 11. rollback (rollback_drop 0.3) on both methods: real runs on the seeds whose base run falls past
# the drop (until then a run is its base run, bit for bit); rollback_records.py checks that on
# every real run and derives the records of the other seeds from their base runs
phase --datasets medium-v0 --seeds 1 5 8 9 10 16 18 21 22 24 --variants hybrid-rollback
phase --datasets medium-v0 --seeds 0 1 2 5 8 10 13 15 16 18 20 21 22 23 24 --variants bc_ppo-rollback
phase --datasets medium-v0 --seeds 0 --variants hybrid-rollback  # one seed without a rollback, run
python benchmarks/rollback_records.py --seeds $(seq 0 24)
# 12. the offline share's dose-response: mix 0 (bc_ppo), 0.25, 0.5 (hybrid), 0.75
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-mix_0.25 hybrid-mix_0.75
# 13. actor and critic gradients clipped apart (Uni-O4) instead of jointly (SB3). First the
# diagnostic: how the joint clip sizes the actor's steps (it set the matched variant's rate);
# then separate clipping at the default rate and at the joint clip's mean actor step
python benchmarks/grad_clip_diag.py --seed 1
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-separate_clip \
  hybrid-separate_clip_matched
python benchmarks/analyze_finetune.py
python benchmarks/late_falls.py
# 14. the start anchor's 15-seed edge over bc_ppo tested on fresh seeds (decided before they
# ran), then its expert check (weight 10 on all of BC's episodes; stopped after seed 3: two
# seeds below 90% of BC already missed the rule)
phase --datasets medium-v0 --seeds 15 16 17 18 19 20 21 22 23 24 --variants hybrid-start_anchor
phase --datasets expert-v0 --seeds 0 1 2 3 --variants hybrid-start_anchor
# 15. Uni-O4's step sizes with each network clipped on its own, on both methods; the expert
# runs stopped after seed 1 (not a default candidate); fresh seeds 15-24 by the rule
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-uni_o4_separate_clip \
  bc_ppo-uni_o4_separate_clip
phase --datasets expert-v0 --seeds 1 --variants hybrid-uni_o4_separate_clip
phase --datasets medium-v0 --seeds 15 16 17 18 19 20 21 22 23 24 \
  --variants hybrid-uni_o4_separate_clip bc_ppo-uni_o4_separate_clip
python benchmarks/analyze_finetune.py
python benchmarks/late_falls.py
# 16. the start anchor at mix 0 (is its edge over bc_ppo the anchor's or the offline data's?);
# the start anchor with Uni-O4's steps, clipped apart, on medium, then its expert check (stopped
# after seed 3: seed 2 at 89% of BC already missed the rule), and the same at mix 0
phase --datasets medium-v0 --seeds $(seq 0 24) --variants bc_ppo-start_anchor
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants hybrid-start_anchor_uni_o4
phase --datasets expert-v0 --seeds 0 1 2 3 --variants hybrid-start_anchor_uni_o4
phase --datasets medium-v0 --seeds 0 1 2 3 4 5 6 7 8 9 --variants bc_ppo-start_anchor_uni_o4
python benchmarks/analyze_finetune.py
python benchmarks/late_falls.py
# 17. the start anchor with the averaged actor (the average damps single-evaluation dips), and
# that with Uni-O4's steps clipped apart: expert first, seeds in the order 2, 3, 0, 1, 4-9 (the
# anchor's worst first), each stopped at its first evaluation < 90% of BC (the second variant
# at seed 2; the first at seed 8, after seeds 0-7 had run); then, not a test, the first on
# medium seeds 0-24; and whether the anchor enlarges the actor's share of Adam's step
phase --datasets expert-v0 --seeds 2 3 0 1 4 5 6 7 8 9 --variants hybrid-start_anchor_average
phase --datasets expert-v0 --seeds 2 --variants hybrid-start_anchor_uni_o4_average
phase --datasets medium-v0 --seeds $(seq 0 24) --variants hybrid-start_anchor_average
python benchmarks/grad_clip_diag.py --seed 8 --dataset expert-v0 --variants hybrid hybrid-start_anchor \
  --out benchmarks/results/grad_clip_diag_expert_seed8.md
python benchmarks/analyze_finetune.py
python benchmarks/late_falls.py
# 18. expert seeds 10-19 for `hybrid` and the anchor with the averaged actor, side by side: do
# their expert dip counts differ on fresh seeds? (the rule was written before the runs: the
# issue notes of 2026-11-27, session 18)
phase --datasets expert-v0 --seeds $(seq 10 19) --variants hybrid hybrid-start_anchor_average
# 19. the default, PPO-from-BC and the averaged anchor on medium-v1, other episodes of the same
# medium policy that no setting was chosen on: do the medium-v0 findings hold on other data?
# (written before the runs: the issue notes of 2026-11-27, session 19)
phase --datasets medium-v1 --seeds $(seq 0 9) --variants hybrid bc_ppo hybrid-start_anchor_average
python benchmarks/analyze_finetune.py
python benchmarks/late_falls.py
# 20. test H: the noise held at e^-1 of BC's from the start, on the strong-BC seeds (BC 52.7 and up:
# is the early dip paid for training under BC's full noise?), then, descriptive, on medium-v0's
# weak-BC seeds; the rest of the plan (medium-v1's weak seeds, expert) was dropped once H came
# out inconclusive (written before the runs: the issue notes of 2026-11-27, session 20)
phase --datasets medium-v0 --seeds 0 1 2 5 8 13 23 24 --variants hybrid-low_noise
phase --datasets medium-v1 --seeds 0 5 6 7 9 --variants hybrid-low_noise
phase --datasets medium-v0 --seeds 3 4 6 7 9 --variants hybrid-low_noise
# 21. the default against PPO-from-BC on medium-v1 seeds 10-19, the last for medium-v1 (test G2,
# written before the runs, same notes)
phase --datasets medium-v1 --seeds $(seq 10 19) --variants hybrid bc_ppo
python benchmarks/analyze_finetune.py
python benchmarks/late_falls.py
# 22. test J: the start anchor weighted by BC's gain over its data (anchor_gate bc_gain), on the
# 13 strong-BC medium seeds of test H, expert seeds 0-9 and medium-v0's weak-BC seeds 3, 4, 6, 7,
# 9 (written before the runs: the issue notes of 2026-11-27, session 21)
phase --datasets medium-v0 --seeds 0 1 2 5 8 13 23 24 --variants hybrid-gated_anchor
phase --datasets medium-v1 --seeds 0 5 6 7 9 --variants hybrid-gated_anchor
phase --datasets expert-v0 --seeds $(seq 0 9) --variants hybrid-gated_anchor
phase --datasets medium-v0 --seeds 3 4 6 7 9 --variants hybrid-gated_anchor
# test AA (2026-11-28, docs/RESULTS.md): the walker2d default on these bytes, paired with the
# seeds bc_ppo and hybrid ran above
phase --datasets medium-v0 --seeds $(seq 0 24) --variants hybrid-gated_anchor_offline_critic_only
phase --datasets expert-v0 --seeds $(seq 0 9) --variants hybrid-gated_anchor_offline_critic_only
phase --datasets medium-v1 --seeds $(seq 0 9) --variants hybrid-gated_anchor_offline_critic_only
# test AB (2026-11-29): the same on seeds 10-19
phase --datasets medium-v1 expert-v0 --seeds $(seq 10 19) --variants hybrid-gated_anchor_offline_critic_only
# test AD (2026-11-29, session 34): the headline comparison on 50 medium-v0 seeds (N fixed before the runs)
phase --datasets medium-v0 --seeds $(seq 25 49) --variants hybrid-gated_anchor_offline_critic_only bc_ppo
# test AE (same session): the expert trade-off, the default against hybrid on 30 seeds
phase --datasets expert-v0 --seeds $(seq 20 29) --variants hybrid-gated_anchor_offline_critic_only hybrid
# test AF (2026-11-29, session 35): data no better than BC on these bytes, the default against bc_ppo (N = 20)
phase --datasets simple-v0 --seeds $(seq 0 19) --variants hybrid-gated_anchor_offline_critic_only bc_ppo
# tests AG and AH (same session): the lag's parts; bc_ppo on another random path
phase --datasets simple-v0 --seeds $(seq 0 19) --variants hybrid-gated_anchor_offline_critic_only_offline_inert hybrid-gated_anchor_offline_critic_only_offline_inert_online_mean
phase --datasets simple-v0 --seeds $(seq 0 19) --variants bc_ppo-log_std_shift
# test AI (2026-11-29, session 36): 20 new seeds of the default, bc_ppo and the fully inert variant
phase --datasets simple-v0 --seeds $(seq 20 39) --variants hybrid-gated_anchor_offline_critic_only bc_ppo hybrid-gated_anchor_offline_critic_only_offline_inert_online_mean
# test AJ (same session): 20 more seeds of the default against bc_ppo (the 100-pair pool)
phase --datasets simple-v0 --seeds $(seq 40 59) --variants hybrid-gated_anchor_offline_critic_only bc_ppo
# test AK (2026-11-29, session 37): 50 new seeds of the same pair, the lag's independent replication
phase --datasets simple-v0 --seeds $(seq 60 109) --variants hybrid-gated_anchor_offline_critic_only bc_ppo
# test AM (2026-11-29, session 38): the medium edge's replication on 30 new medium-v1 seeds (N fixed before the runs)
phase --datasets medium-v1 --seeds $(seq 20 49) --variants hybrid-gated_anchor_offline_critic_only bc_ppo
# test AN (2026-11-29, session 39): five times the budget, 1M online steps, medium-v0 seeds 0-7 (N fixed
# before the runs; its own results file, so the 200k tables stay as they are)
phase --datasets medium-v0 --seeds $(seq 0 7) --variants hybrid-gated_anchor_offline_critic_only bc_ppo \
  --timesteps 1000000 --results benchmarks/results/finetune_1m.jsonl --runs_dir benchmarks/runs/long
# test AO (2026-11-29, session 39, written before its runs): the same on 20 new seeds, spanning sessions
phase --datasets medium-v0 --seeds $(seq 8 27) --variants hybrid-gated_anchor_offline_critic_only bc_ppo \
  --timesteps 1000000 --results benchmarks/results/finetune_1m_ao.jsonl --runs_dir benchmarks/runs/long
# test K (same notes): the early-dip rule's noise floor on medium-v1's BC policies
python benchmarks/eval_noise.py --dataset medium-v1 --seeds $(seq 0 19)
python benchmarks/eval_noise.py --seeds $(seq 0 24)  # medium-v0's table, with the new variant
# test AL (2026-11-29, session 37): expert's whole-run 90% rule on unchanged BC policies
python benchmarks/eval_noise.py --dataset expert-v0 --window all --blocks 40 \
    --variant hybrid-gated_anchor_offline_critic_only --seeds $(seq 0 29)
python benchmarks/analyze_finetune.py
python benchmarks/late_falls.py
python benchmarks/gait.py
