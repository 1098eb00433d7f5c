"""Tables and plots of benchmarks/results/finetune.jsonl, aggregated with rliable.

Per dataset and variant, over seeds (Agarwal et al. 2021): IQM with 95% stratified-bootstrap
CIs of the last-3-evaluation mean (normalised score), of the test score of the model each run
hands over, and the probability that a variant beats `bc_ppo` (and that the variant an
ablation differs from in one thing beats it). A seed's "BC score" is its evaluation at step 0
(the BC actor, same episode seeds as every later evaluation). Dip figures are each seed's
worst evaluation relative to that score. Last, on walker2d, one table of what each mechanism
bought against the variant it differs from in one thing, in the goals' terms (mechanism_table).

  python benchmarks/analyze_finetune.py   # -> finetune_summary.md/.json, finetune_*.png
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from rliable import library as rly  # noqa: E402
from rliable import metrics  # noqa: E402
from scipy.stats import t as student_t  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPS = 5_000  # bootstrap resamples per CI: Monte Carlo error well under the CIs' widths here
EARLY_STEPS = 50_000
HEADLINE_SEEDS = 5  # variants with fewer seeds are plotted apart, as ablations
# rliable hands random_state (its documented way to a reproducible bootstrap) to arch, whose
# newer versions warn on every call that they will drop it; the tables stay exact either way.
warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning, "arch")


def load(path: Path) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """(env, dataset) -> variant -> runs (the last record of each seed wins)."""
    runs: dict = defaultdict(lambda: defaultdict(dict))
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        runs[(r.get("env", "walker2d"), r["dataset"])][r["variant"]][r["seed"]] = r
    return {d: {v: [by_seed[s] for s in sorted(by_seed)] for v, by_seed in vs.items()}
            for d, vs in runs.items()}


def score(evaluation: dict) -> float:
    """Normalised score, or the raw return where no reference scores exist (humanoid)."""
    normalised = evaluation.get("normalized_score")
    return evaluation["mean_reward"] if normalised is None else normalised


def normalised(variants: dict[str, list[dict]]) -> bool:
    """Whether these runs' evaluations carry normalised scores (data with reference scores)."""
    return all(r["curve"][0].get("normalized_score") is not None
               for rs in variants.values() for r in rs)


def periodic(curve: list[dict]) -> list[dict]:
    """The periodic evaluations; the offline-improvement gate's extra step-0 evaluation (a
    candidate that was kept or rejected, marked by a note) is reported on its own."""
    return [e for e in curve if not e.get("note")]


def per_run(r: dict) -> dict:
    curve = periodic(r["curve"])
    gate = next((e for e in r["curve"] if e.get("note", "").startswith("offline improvement")), None)
    scores = np.array([score(e) for e in curve])
    steps = np.array([e["timesteps"] for e in curve])
    bc = scores[0]
    early = scores[(steps > 0) & (steps <= EARLY_STEPS)]
    # The final evaluation mostly scores the 200k policy again (the linear schedule is at 0 for
    # the last update): last3_distinct is the mean over the three evaluations before it.
    return {"seed": r["seed"], "bc_score": bc, "last3": float(scores[-3:].mean()),
            "last3_distinct": float(scores[-4:-1].mean()),
            "final": float(scores[-1]), "best": float(scores.max()),
            "worst_early_pct": float(100 * early.min() / bc) if len(early) else float("nan"),
            "worst_pct": float(100 * scores[1:].min() / bc) if len(scores) > 1 else float("nan"),
            "bc_test": score(r["bc"]["test_eval"]),
            "final_test": score(r["final_test_eval"]),
            "result_test": score(r["result"]["test_eval"]),
            "result_source": r["result"]["source"],
            "gate_delta": float(score(gate) - bc) if gate else float("nan"),
            "gate_kept": bool(gate and gate["note"].endswith("kept")),
            "prefix_steps": (r.get("restarts") or {}).get("env_steps"),
            "online_steps": curve[-1]["timesteps"],
            "warmup_ev": r["warmup"].get("warmup/explained_variance"),
            "warmup_rmse_frac": r["warmup"].get("warmup/rmse_fraction_of_mean"),
            "wall_min": r["wall_time_s"] / 60}


def time_limit(variants: dict[str, list[dict]]) -> int | None:
    """The episode time limit (gym's spec) of the one env these runs used; None if several."""
    import gymnasium as gym

    env_ids = {r["config"]["env_id"] for rs in variants.values() for r in rs}
    return gym.spec(env_ids.pop()).max_episode_steps if len(env_ids) == 1 else None


def episode_ends(variants: dict[str, list[dict]]) -> str | None:
    """Fine-tuned evaluations (after step 0, every variant) split by whether each of their
    episodes ran to the time limit or one ended early (on walker2d: the walker fell). Why:
    a deterministic walker2d evaluation loses most of its score through falls, so this shows
    what a run that never falls scores, i.e. how much room is left above a plateau."""
    limit = time_limit(variants)
    # a record derived from its base run (rollback_records.py) repeats that run's evaluations
    evals = [e for rs in variants.values() for r in rs if not r.get("derived_from")
             for e in periodic(r["curve"])[1:] if e.get("mean_ep_length") is not None]
    if limit is None or not evals:
        return None
    full = np.array([score(e) for e in evals if e["mean_ep_length"] >= limit])
    early = np.array([score(e) for e in evals if e["mean_ep_length"] < limit])
    describe = lambda x: (f"{len(x)} (median {np.median(x):.1f}, max {x.max():.1f})"  # noqa: E731
                          if len(x) else "0")
    return (f"- Evaluations after step 0, all variants: every episode ran to the {limit}-step "
            f"limit in {describe(full)}; at least one ended early in {describe(early)}.")


def iqm(values: np.ndarray) -> float:
    """The IQM alone: what iqm_ci returns first, without its bootstrap (~1 s per call)."""
    return float(metrics.aggregate_iqm(values.reshape(-1, 1)))


def aggregate_ci(values: np.ndarray, aggregate, reps: int = REPS) -> tuple[float, float, float]:
    """rliable's `aggregate` (e.g. metrics.aggregate_iqm) over runs, with its 95%
    stratified-bootstrap CI: (point, low, high)."""
    np.random.seed(0)  # see prob_improvement: the global RNG is drawn from as well
    point, interval = rly.get_interval_estimates(
        {"x": values.reshape(-1, 1)}, lambda x: np.array([aggregate(x)]),
        reps=reps, random_state=np.random.RandomState(0))
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def iqm_ci(values: np.ndarray, reps: int = REPS) -> tuple[float, float, float]:
    return aggregate_ci(values, metrics.aggregate_iqm, reps)


def prob_improvement(x: np.ndarray, y: np.ndarray, reps: int = REPS) -> tuple[float, float, float]:
    """P(X > Y) over runs (ties count half), with a stratified-bootstrap 95% CI."""
    # With a tuple of score arrays the interval also draws from NumPy's global RNG: two calls
    # with the same random_state gave different CIs. Seed it too, so tables regenerate exactly.
    np.random.seed(0)
    point, interval = rly.get_interval_estimates(
        {"p": (x.reshape(-1, 1), y.reshape(-1, 1))}, metrics.probability_of_improvement,
        reps=reps, random_state=np.random.RandomState(0))
    low, high = np.ravel(interval["p"])
    return float(np.ravel(point["p"])[0]), float(low), float(high)


def fmt_ci(t: tuple[float, float, float]) -> str:
    return f"{t[0]:.1f} [{t[1]:.1f}, {t[2]:.1f}]"


# Variants that differ from each other in one thing, not from `hybrid`. A combination's first
# pair names the variant holding its first mechanism alone: the mechanism table's baseline.
VARIANT_PAIRS = [("hybrid-anchor_offline_critic_only", "hybrid-anchor"),
                 # today's default: the gated anchor, then offline samples out of the gradient
                 ("hybrid-gated_anchor_offline_critic_only", "hybrid-gated_anchor"),
                 ("hybrid-start_anchor_completed", "hybrid-start_anchor"),
                 # the two mechanisms together against each alone
                 ("hybrid-start_anchor_uni_o4", "hybrid-start_anchor"),
                 ("hybrid-start_anchor_uni_o4", "hybrid-uni_o4_separate_clip"),
                 ("bc_ppo-start_anchor_uni_o4", "bc_ppo-start_anchor"),
                 # the weights' average added to each (session 18)
                 ("hybrid-start_anchor_average", "hybrid-start_anchor"),
                 ("hybrid-start_anchor_average", "hybrid-policy_average"),
                 ("hybrid-start_anchor_uni_o4_average", "hybrid-start_anchor_uni_o4")]
COMBINED_FROM = {x: y for x, y in reversed(VARIANT_PAIRS)}  # reversed: the first pair wins


def baseline(variant: str, variants: dict[str, list[dict]]) -> str:
    """The variant an ablation differs from in one thing: `hybrid`, or for the ablations
    measured while signed offline advantages were the default, `hybrid-signed_offline`."""
    signed = lambda v: all(r["config"].get("offline_advantages", "signed") == "signed"  # noqa: E731
                           for r in variants.get(v, []))
    if variant != "hybrid-signed_offline" and "hybrid-signed_offline" in variants \
            and signed(variant) and not signed("hybrid"):
        return "hybrid-signed_offline"
    return "hybrid"


def summarise(runs: dict[tuple[str, str], dict[str, list[dict]]], reps: int = REPS,
              out_dir: Path = RESULTS_DIR) -> tuple[str, dict]:
    md, js = [], {}
    for (env, name), variants in runs.items():
        dataset = f"{env} {name}"
        rows = {v: [per_run(r) for r in rs] for v, rs in variants.items()}
        js[dataset] = {"runs": rows}
        unit = "normalised scores" if normalised(variants) else "raw returns (no reference scores)"
        md += [f"### {dataset}", "",
               f"IQM over seeds [95% stratified-bootstrap CI], {unit}. BC = each seed's "
               "step-0 evaluation (10 episodes, selection seeds); test = 20 episodes on other seeds.", "",
               "| variant | seeds | BC | last-3 mean | final eval | worst eval 0-50k, % of BC (mean / min) "
               "| worst eval overall, % of BC (min) | test: model handed over (source) | test: final model "
               "| test: BC | min / mean wall time |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for v, rs in sorted(rows.items()):
            col = lambda k: np.array([r[k] for r in rs], dtype=float)  # noqa: E731
            sources = ", ".join(f"{s}:{[r['result_source'] for r in rs].count(s)}"
                                for s in ("bc", "best", "final") if any(r["result_source"] == s for r in rs))
            stats = {k: iqm_ci(col(k), reps) for k in ("bc_score", "last3", "final", "result_test",
                                                 "final_test", "bc_test")}
            js[dataset][v] = {"seeds": [r["seed"] for r in rs], **{k: list(t) for k, t in stats.items()},
                              "worst_early_pct_mean": float(np.nanmean(col("worst_early_pct"))),
                              "worst_early_pct_min": float(np.nanmin(col("worst_early_pct"))),
                              "worst_pct_min": float(np.nanmin(col("worst_pct")))}
            md.append(f"| {v} | {len(rs)} | {fmt_ci(stats['bc_score'])} | {fmt_ci(stats['last3'])} | "
                      f"{fmt_ci(stats['final'])} | {np.nanmean(col('worst_early_pct')):.0f}% / "
                      f"{np.nanmin(col('worst_early_pct')):.0f}% | {np.nanmin(col('worst_pct')):.0f}% | "
                      f"{fmt_ci(stats['result_test'])} ({sources}) | {fmt_ci(stats['final_test'])} | "
                      f"{fmt_ci(stats['bc_test'])} | {col('wall_min').min():.1f} / {col('wall_min').mean():.1f} min |")
        md.append("")
        for v, rs in sorted(rows.items()):
            deltas = np.array([r["gate_delta"] for r in rs if not np.isnan(r["gate_delta"])])
            if len(deltas):
                md.append(f"- {v}: offline improvement kept on {sum(r['gate_kept'] for r in rs)} of "
                          f"{len(deltas)} seeds; its step-0 evaluation minus BC's: mean {deltas.mean():+.1f}, "
                          f"min {deltas.min():+.1f}, max {deltas.max():+.1f}")
        if any(not np.isnan(r["gate_delta"]) for rs in rows.values() for r in rs):
            md.append("")
        for v, rs in sorted(rows.items()):  # deterministic restarts: env steps the prefixes took
            extra = np.array([r["prefix_steps"] for r in rs if r["prefix_steps"] is not None])
            if len(extra):
                online = np.mean([r["online_steps"] for r in rs])
                md += [f"- {v}: the deterministic prefixes took {extra.mean():,.0f} env steps per run "
                       f"(min {extra.min():,}, max {extra.max():,}) on top of {online:,.0f} online "
                       f"steps: {100 * extra.mean() / online:.0f}% more env interaction", ""]
        if (ends := episode_ends(variants)) is not None:
            md += [ends, ""]
        pairs = [(v, "bc_ppo") for v in rows if v != "bc_ppo" and "bc_ppo" in rows]
        pairs += [(base, v) for v in rows
                  if v.startswith("hybrid-") and (base := baseline(v, variants)) in rows]
        # a change made to both methods: compare them under it too
        pairs += [(v, "bc_ppo" + v[len("hybrid"):]) for v in rows
                  if v.startswith("hybrid-") and "bc_ppo" + v[len("hybrid"):] in rows]
        pairs += [(x, y) for x, y in VARIANT_PAIRS if x in rows and y in rows]
        if pairs:
            md += ["Probability of improvement, last-3 mean, P(row > column) [95% CI]:", ""]
            for x, y in pairs:
                seeds = sorted(set(r["seed"] for r in rows[x]) & set(r["seed"] for r in rows[y]))
                pick = lambda v, key="last3": np.array([r[key] for r in rows[v]  # noqa: E731
                                                        if r["seed"] in seeds])
                p = prob_improvement(pick(x), pick(y), reps)
                js[dataset][f"P({x} > {y})"] = list(p)
                line = f"- P({x} > {y}) = {p[0]:.2f} [{p[1]:.2f}, {p[2]:.2f}]"
                if y == "bc_ppo":  # the headline pairs: also over three distinct policies
                    q = prob_improvement(pick(x, "last3_distinct"), pick(y, "last3_distinct"), reps)
                    line += f" (180k-200k: {q[0]:.2f} [{q[1]:.2f}, {q[2]:.2f}])"
                md.append(f"{line} over seeds {seeds}")
            md.append("")
        plot_curves(env, name, variants, out_dir)
    md += mechanism_table(runs, reps=reps)
    return "\n".join(md), js


def mechanism_table(runs: dict[tuple[str, str], dict[str, list[dict]]], env: str = "walker2d",
                    reps: int = REPS, min_seeds: int = 3) -> list[str]:
    """One row per mechanism: each variant against the variant it differs from in one thing
    (COMBINED_FROM for combinations, `bc_ppo` for the other bc_ppo-* ones, else baseline()),
    on the seeds both ran, on medium-v0 and, where both ran, expert-v0: what each mechanism
    bought, in the goals' own terms."""
    medium, expert = runs.get((env, "medium-v0"), {}), runs.get((env, "expert-v0"), {})
    base_of = lambda v, vs: (COMBINED_FROM.get(v) or  # noqa: E731
                             ("bc_ppo" if v.startswith("bc_ppo-") else baseline(v, vs)))

    col = lambda rows, k: np.array([r[k] for r in rows])  # noqa: E731
    dips = lambda rows: sum(r["worst_early_pct"] < 90 for r in rows)  # noqa: E731

    def common(vs, v, base):
        seeds = sorted({r["seed"] for r in vs.get(v, [])} & {r["seed"] for r in vs.get(base, [])})
        pick = lambda name: [per_run(r) for r in vs[name] if r["seed"] in seeds]  # noqa: E731
        return seeds, (pick(v), pick(base)) if seeds else ([], [])

    lines = [f"### {env}: which mechanism buys what", "",
             "Each variant against the variant it differs from in one thing, on the seeds both ran. "
             "Medium-v0: last-3 IQM of both, P(variant > baseline) [95% CI], seeds with an early dip "
             "(an evaluation in the first 50k steps below 90% of BC). Expert-v0, on the seeds both "
             "ran: worst evaluation of any seed as % of its BC, and last-3 IQM against BC's IQM.", "",
             "| variant | baseline | medium seeds | last-3 IQM, variant / baseline | P(variant > baseline) "
             "| early dips, variant / baseline | expert seeds | worst, % of BC, variant / baseline "
             "| last-3 IQM, variant / BC |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in sorted(medium):
        base = base_of(v, medium)
        if v in ("hybrid", "bc_ppo") or base not in medium:
            continue
        seeds, (mine, theirs) = common(medium, v, base)
        if len(seeds) < min_seeds:
            continue
        p = prob_improvement(col(mine, "last3"), col(theirs, "last3"), reps)
        row = (f"| {v} | {base} | {len(seeds)} | {iqm(col(mine, 'last3')):.1f} / "
               f"{iqm(col(theirs, 'last3')):.1f} | {p[0]:.2f} [{p[1]:.2f}, {p[2]:.2f}] | "
               f"{dips(mine)} / {dips(theirs)} |")
        e_seeds, (e_mine, e_theirs) = common(expert, v, base_of(v, expert))
        if e_seeds:
            row += (f" {len(e_seeds)} | {col(e_mine, 'worst_pct').min():.0f}% / "
                    f"{col(e_theirs, 'worst_pct').min():.0f}% | {iqm(col(e_mine, 'last3')):.1f}"
                    f" / {iqm(col(e_mine, 'bc_score')):.1f} |")
        else:
            row += " 0 | - | - |"
        lines.append(row)
    return lines + [""] if len(lines) > 6 else []


def panel_title(variant: str, width: int = 38) -> str:
    """A variant's name on two lines at the underscore nearest its middle when it is too long
    for a panel's width (the longest names ran into the next panel)."""
    if len(variant) <= width or "_" not in variant:
        return variant
    cut = min((i for i, c in enumerate(variant) if c == "_"),
              key=lambda i: abs(i - len(variant) // 2))
    return f"{variant[:cut]}_\n{variant[cut + 1:]}"


def mean_curve(rs: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Steps, mean score over seeds and the half-width of its 95% CI (None for one seed)."""
    curves = [periodic(r["curve"]) for r in rs]
    n = min(len(c) for c in curves)
    steps = np.array([e["timesteps"] for e in curves[0][:n]])
    scores = np.array([[score(e) for e in c[:n]] for c in curves])
    # Student's t, not 1.96: the ablation panels have 3-5 seeds
    half = (student_t.ppf(0.975, len(rs) - 1) * scores.std(0, ddof=1) / np.sqrt(len(rs))
            if len(rs) > 1 else None)
    return steps, scores.mean(0), half


# the curves drawn in every panel: how the title names them, and their style
REFERENCES = {"hybrid": ("black", dict(color="black", lw=1.0)),
              "bc_ppo": ("grey dashed", dict(color="grey", lw=1.0, ls="--"))}


def plot_curves(env: str, name: str, variants: dict[str, list[dict]], out_dir: Path) -> None:
    """Small multiples: one panel per variant, each against `hybrid` and `bc_ppo` on the
    variant's own seeds, drawn the same way in every panel (two dozen curves on one axis cannot
    be told apart). Variants run on >= HEADLINE_SEEDS seeds go in one figure, the rest
    (ablations) in another."""
    headline = {v: rs for v, rs in variants.items() if len(rs) >= HEADLINE_SEEDS}
    rest = {v: rs for v, rs in variants.items() if len(rs) < HEADLINE_SEEDS}
    stem = f"finetune_{name}" if env == "walker2d" else f"finetune_{env}_{name}"
    unit = "normalised score" if normalised(variants) else "return"
    for suffix, group in (("", headline or rest), ("_ablations", rest if headline else {})):
        # the headline comparison first, then the variants by name; a reference alone has no panel
        panels = [v for v in ("hybrid",) if v in group] + sorted(v for v in group if v not in REFERENCES)
        if not panels:
            continue
        cols = min(4, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(max(3.3 * cols, 6.5), 2.5 * rows + 0.9), sharex=True,
                                 sharey=True, squeeze=False)
        for ax, v in zip(axes.flat, panels):
            seeds = {r["seed"] for r in group[v]}
            for ref, (_, style) in REFERENCES.items():
                same = [r for r in variants.get(ref, []) if r["seed"] in seeds]
                if ref != v and same:
                    ax.plot(*mean_curve(same)[:2], **style)
            steps, mean, half = mean_curve(group[v])
            color = "black" if v == "hybrid" else "tab:blue"
            ax.plot(steps, mean, color=color, lw=1.4)
            if half is not None:
                ax.fill_between(steps, mean - half, mean + half, alpha=0.2, color=color)
            n = len(group[v])
            ax.set_title(f"{panel_title(v)} ({n} seed{'s' if n > 1 else ''})", fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        for i, ax in enumerate(axes.flat):
            if i >= len(panels):
                ax.set_visible(False)
            elif i + cols >= len(panels):  # nothing drawn below it: label its step axis
                ax.xaxis.set_tick_params(labelbottom=True)
        axes[0, 0].xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
        fig.supxlabel("online env steps", fontsize=9)
        fig.supylabel(f"{unit} (10 episodes)", fontsize=9)
        drawn = [f"{name}: {ref}" for ref, (name, _) in REFERENCES.items() if ref in variants]
        fig.suptitle(f"{env} {name}{' ablations' if suffix else ''}: mean over seeds (shaded: 95% CI "
                     f"of the mean)\n{', '.join(drawn)}, on the panel's seeds", fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / f"{stem}{suffix}.png", dpi=100)
        plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS_DIR / "finetune.jsonl")
    p.add_argument("--reps", type=int, default=REPS,
                   help=f"bootstrap resamples per CI (default {REPS}; fewer for a quick look)")
    p.add_argument("--out_dir", type=Path, default=RESULTS_DIR, help="where tables and plots go")
    args = p.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    md, js = summarise(load(args.results), args.reps, args.out_dir)
    (args.out_dir / "finetune_summary.md").write_text(md + "\n")
    (args.out_dir / "finetune_summary.json").write_text(json.dumps(js, indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
