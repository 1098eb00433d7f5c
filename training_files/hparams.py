"""hparam.yml -> validated, frozen config objects (one per pipeline stage).

Plain YAML only: unlike rl-zoo3, no string is ever evaluated as Python. pydantic does the
validation so that an unknown key (a typo) or a wrong type fails loudly, naming the entry and
the field, instead of silently falling back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from errors import PipelineError

DEFAULT_HPARAM_FILE = Path(__file__).resolve().parent.parent / "hparam.yml"


class _Strict(BaseModel):
    # allow_inf_nan=False: YAML's .nan/.inf must not reach the optimiser (a nan ent_coef
    # trains garbage, an inf clip_range silently disables clipping).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


LayerSize = Annotated[int, Field(gt=0)]


class NetArch(_Strict):
    pi: list[LayerSize] = Field(min_length=1)
    vf: list[LayerSize] = Field(min_length=1)


class PolicyConfig(_Strict):
    """The SB3 ActorCriticPolicy shared by BC and HybridPPO (so checkpoints load untranslated)."""

    net_arch: NetArch
    activation: Literal["tanh", "relu", "elu", "leaky_relu"] = "tanh"
    log_std_init: float = 0.0
    ortho_init: bool = True


class EnvConfig(_Strict):
    env_id: str
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    policy: PolicyConfig


class BCConfig(EnvConfig):
    """Settings of a `*-bc-*` entry. Epochs/batch size come from the command line."""

    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    log_std_min: float = -5.0
    eval_episodes: int = Field(10, ge=0)


class OODConfig(_Strict):
    """Down-weighting of offline actions the current policy finds unlikely.

    z = ||(a - mean_pi(s)) / std_pi(s)|| / sqrt(action_dim) is the RMS standardised distance
    of the dataset action from the policy. weight = 1 for z <= z_threshold, then
    exp(-(z - z_threshold) / temperature), never below min_weight.
    """

    z_threshold: float = Field(2.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    min_weight: float = Field(0.0, ge=0, le=1)


class HybridConfig(EnvConfig):
    """Settings of a `*-hybrid` entry: SB3 PPO's own knobs plus the offline-mixing ones."""

    total_timesteps: int = Field(gt=0)
    n_envs: int = Field(1, gt=0)
    vec_env: Literal["dummy", "subproc", "split"] = "dummy"
    """dummy: all envs step in this process (SB3's DummyVecEnv); subproc: one process per env;
    split: half the envs in one worker process that samples their actions itself, the same
    samples as dummy on two cores (split_vec_env.py)."""
    parallel_update: bool = True
    """The critic's forward and backward of each minibatch run in a second thread beside the
    actor's (critic_thread.py): the same update bit for bit, on two CPU cores (CPU only).
    false: one thread."""
    n_steps: int = Field(2048, gt=1)
    batch_size: int = Field(64, gt=1)
    n_epochs: int = Field(10, gt=0)
    learning_rate: float = Field(3e-4, gt=0)
    lr_schedule: Literal["constant", "linear"] = "constant"
    """linear: the learning rate decays linearly to 0 over the run (Uni-O4 decays it too)."""
    critic_learning_rate: Annotated[float, Field(gt=0)] | None = None
    """The critic's own initial rate, on the same schedule (critic_learning_rate.py); None: one."""
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_range: float = Field(0.2, gt=0)
    ent_coef: float = 0.0
    vf_coef: float = Field(0.5, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    grad_clip: Literal["joint", "separate"] = "joint"
    """joint: max_grad_norm bounds the whole policy's gradient (SB3); separate: the actor's and
    the critic's each on its own, so the critic's error does not scale the actor's step
    (gradient_clipping.py)."""
    target_kl: Annotated[float, Field(gt=0)] | None = None
    log_std_min: float = -20.0
    segment_length: int = Field(64, gt=0)
    warmup_learning_rate: float = Field(1e-3, gt=0)
    warmup_batch_size: int = Field(256, gt=0)
    critic_only_updates: int = Field(0, ge=0)
    """First updates that train only the critic on online+offline targets, actor frozen
    (DPPO's n_critic_warmup_itr)."""
    bc_decay: float = Field(1.0, gt=0, le=1)
    """The BC term's weight is bc_coeff * bc_decay ** update (DAPG's lambda0 * lambda1^k)."""
    offline_advantage_centering: Literal["mean", "rho", "none"] = "mean"
    """How V-trace advantages are normalised per minibatch (see HybridPPO)."""
    offline_policy_updates: int = Field(0, ge=0)
    """PPO updates on offline samples alone before the first rollout (offline improvement from
    the data's rewards, as one-step RL / BPPO do); 0: off."""
    offline_improvement_gate: bool = True
    """Keep the offline-improved policy only if its evaluation (the periodic-evaluation
    episodes) is at least BC's step-0 evaluation; otherwise go on from BC."""
    offline_advantages: Literal["signed", "positive", "none"] = "signed"
    """positive: offline samples enter the policy gradient only where their V-trace advantage
    is positive, max(A, 0) / RMS, not centred (self-imitation of the data's better actions);
    signed: as online; none: offline samples train the critic (and the BC term) only."""
    policy_gradient_mean: Literal["batch", "online"] = "batch"
    """batch: the clipped-surrogate loss is the minibatch's mean (SB3), so offline rows that
    carry no policy gradient (offline_advantages none, or positive's zeros) shrink the online
    rows' part by the offline share; online: the sum over the online rows' count, so the online
    part has PPO's size at any mix_ratio. Under the joint gradient clip the actor's step is
    proportional to its gradient (docs/RESULTS.md: gradient clipping), so batch halves it at mix 0.5;
    online measured worse on walker2d (docs/RESULTS.md: test X)."""
    offline_value_weight: float = Field(1.0, ge=0, le=1)
    """An offline row's weight in the value loss, an online row's being 1; the loss is the
    weighted mean, so 0 leaves the online rows' mean (PPO's critic loss) and the offline rows
    train the critic only in the warm-up. Late in a run rho -> 0 on the data's actions and
    V-trace's targets tend to the critic's own values there (docs/RESULTS.md: test Z)."""
    log_std_decay: float = Field(0.0, ge=0)
    """Exploration noise schedule: log_std falls linearly by this much over the run (on top of
    what PPO learns), so the noisy policy that is trained ends closer to the deterministic one
    that is evaluated. 0: off."""
    anchor_coeff: float = Field(0.0, ge=0)
    """Weight of the penalty that keeps the mean action near the policy fine-tuning started
    from (KL at the start's noise; policy_anchor.py). 0: off."""
    anchor_decay: float = Field(1.0, gt=0, le=1)
    """The anchor's weight is anchor_coeff * anchor_decay ** update (DAPG's lambda1)."""
    anchor_episodes: int = Field(0, ge=0)
    """Where the anchor (anchor_coeff > 0) holds. 0: on each update's states. N > 0: on the
    states of N deterministic episodes of the start policy, run before training (seeds
    seed + 30000 + i): where the evaluated policy goes, which noisy rollouts that fall early
    never reach."""
    anchor_keep: Literal["all", "completed"] = "all"
    """With anchor_episodes > 0, which episodes' states: all, or only those that ran to the time
    limit (no fall), so that a weak start policy is held only where it succeeds (no episode
    completed: no anchor)."""
    anchor_gate: Literal["none", "bc_gain"] = "none"
    """none: the anchor's weight is anchor_coeff. bc_gain: anchor_coeff times
    clip((R_bc - R_data) / |R_data|, 0, 1), R_bc the mean return of the start policy's anchor
    episodes (anchor_episodes > 0), R_data the dataset's mean episode return: the anchor holds
    in full where BC walks twice as far as its data, not at all where it does no better (there
    is little of BC's own to keep; designed with positive offline advantages, which then held
    the actor at the data; policy_anchor.gain_gate)."""
    policy_average_steps: int = Field(0, ge=0)
    """Time constant, in env steps, of an exponential moving average of the actor's weights;
    the average is what is evaluated, kept as the best model and saved, while rollouts come
    from the policy being trained (policy_average.py). 0: off, the last iterate."""
    deterministic_restarts: float = Field(0.0, ge=0, le=1)
    """Fraction of training episodes that start where the current deterministic policy (the
    one evaluated) has walked for a random number of steps (policy_restarts.py); the prefix is
    not trained on and its env steps are reported apart. Needs vec_env dummy (checked when
    the entry loads). 0: off."""
    rollback_drop: float = Field(0.0, ge=0, lt=1)
    """When a periodic evaluation's mean return falls more than this fraction of |best so far|
    below the best, training goes on from the best evaluation's policy and optimizer state
    (policy_rollback.py; the schedules go on). 0: off."""
    ood: OODConfig = Field(default_factory=OODConfig)
    eval_freq: int = Field(10_000, gt=0)
    eval_episodes: int = Field(10, ge=1)
    """Deterministic episodes of each periodic evaluation (the best model is chosen on them)."""
    confirm_episodes: int = Field(0, ge=0)
    """Fresh selection episodes on which the best model must score at least BC's mean return
    to be handed over (else BC is): the best of many noisy evaluations is biased upwards.
    0: off, the best is handed over as measured."""
    test_episodes: int = Field(20, ge=1)
    """Deterministic episodes of the final test evaluation, on seeds never used for selection."""

    @model_validator(mode="after")
    def _rollback_has_one_policy(self) -> HybridConfig:
        if self.rollback_drop > 0 and self.policy_average_steps > 0:
            raise ValueError("rollback_drop needs policy_average_steps 0: the evaluated policy "
                             "(the average) is not the one training would go back to")
        return self

    @property
    def vec_env_kind(self) -> str:
        """The vec env a run builds: split with one env has nothing to split, so dummy."""
        return "dummy" if self.vec_env == "split" and self.n_envs < 2 else self.vec_env

    @model_validator(mode="after")
    def _restarts_run_in_this_process(self) -> HybridConfig:
        if self.deterministic_restarts > 0 and self.vec_env_kind != "dummy":
            raise ValueError(f"deterministic_restarts needs vec_env dummy (got {self.vec_env}): "
                             "its envs call the policy being trained, which lives in this process")
        return self

    @model_validator(mode="after")
    def _gate_has_episodes(self) -> HybridConfig:
        if self.anchor_gate != "none" and self.anchor_episodes == 0:
            raise ValueError(f"anchor_gate {self.anchor_gate} needs anchor_episodes > 0: the "
                             "gate compares the return of those BC episodes with the data's")
        return self

    @model_validator(mode="after")
    def _offline_updates_have_a_policy_gradient(self) -> HybridConfig:
        if self.offline_policy_updates > 0 and self.offline_advantages == "none":
            raise ValueError("offline_policy_updates needs offline_advantages positive or signed: "
                             "with none the offline updates have no policy gradient (only the BC "
                             "term would move the actor)")
        return self

    @model_validator(mode="after")
    def _batch_fits_rollout(self) -> HybridConfig:
        if self.batch_size > self.n_steps * self.n_envs:
            raise ValueError(f"batch_size {self.batch_size} exceeds n_steps*n_envs "
                             f"{self.n_steps * self.n_envs}")
        return self


class _Yaml12FloatLoader(yaml.SafeLoader):
    """SafeLoader that also reads 1e6 and 3e-4 as floats (YAML 1.2); PyYAML's 1.1 rules
    would hand them over as strings and a number written naturally would be rejected.
    A key written twice in one mapping is an error: PyYAML would silently keep the last."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then an explicit key is an override, not a duplicate
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # unhashable key: SafeConstructor reports it itself
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key '{key}' (first at line {first.start_mark.line + 1})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _load_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PipelineError(f"Cannot read hparam file {path}: {exc.strerror}") from exc
    try:
        data = yaml.load(text, Loader=_Yaml12FloatLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PipelineError(f"Malformed YAML in {path}{where}: {problem}") from exc
    if not isinstance(data, dict):
        raise PipelineError(f"{path} must map hparam keys to entries, got {type(data).__name__}")
    return data


def _validate(model: type[_Strict], key: str, raw: Any, path: Path) -> Any:
    if not isinstance(raw, dict):
        raise PipelineError(f"hparam entry '{key}' in {path} must be a mapping")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(entry)"
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{field}'"
        else:
            msg = f"field '{field}': {err['msg']} (got {err.get('input')!r})"
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise PipelineError(f"hparam entry '{key}' in {path}: {msg}{more}") from exc


def load_hparams(bc_key: str, hybrid_key: str, path: Path = DEFAULT_HPARAM_FILE,
                 **hybrid_overrides) -> tuple[BCConfig, HybridConfig]:
    """Both entries of one run, validated together before any work starts.

    `hybrid_overrides` (flags such as --n_envs) replace entry fields before validation, so an
    override that breaks a rule (batch_size > n_steps * n_envs) is reported like a bad entry.
    """
    data = _load_yaml(path)
    for kind, key in (("BC", bc_key), ("Hybrid", hybrid_key)):
        if key not in data:
            raise PipelineError(f"ERROR: {kind} hparam key '{key}' not found in {path.name}")
    bc = _validate(BCConfig, bc_key, data[bc_key], path)
    overrides = {k: v for k, v in hybrid_overrides.items() if v is not None}
    raw = {**data[hybrid_key], **overrides} if isinstance(data[hybrid_key], dict) else data[hybrid_key]
    hybrid = _validate(HybridConfig, hybrid_key, raw, path)
    if (bc.env_id, bc.env_kwargs) != (hybrid.env_id, hybrid.env_kwargs):
        raise PipelineError(f"'{bc_key}' trains on {bc.env_id} {bc.env_kwargs} but '{hybrid_key}' "
                            f"fine-tunes on {hybrid.env_id} {hybrid.env_kwargs}: they must match")
    if bc.policy.net_arch != hybrid.policy.net_arch or bc.policy.activation != hybrid.policy.activation:
        raise PipelineError(f"'{bc_key}' and '{hybrid_key}' must use the same policy net_arch and "
                            "activation: HybridPPO starts from the BC checkpoint")
    return bc, hybrid


def validate_file(path: Path = DEFAULT_HPARAM_FILE) -> dict[str, _Strict]:
    """Every entry of the file, validated by its key's suffix (used by tests and CI)."""
    out = {}
    for key, raw in _load_yaml(path).items():
        model = HybridConfig if key.endswith("-hybrid") else BCConfig
        out[key] = _validate(model, key, raw, path)
    return out


def env_entries(path: Path = DEFAULT_HPARAM_FILE) -> dict[str, tuple[str, dict]]:
    """key -> (env_id, env_kwargs) of every entry that names an env; used to tell a user
    which entry would fit a dataset. Entries with other problems are simply left out."""
    out = {}
    for key, raw in _load_yaml(path).items():
        if isinstance(raw, dict) and isinstance(raw.get("env_id"), str):
            kwargs = raw.get("env_kwargs") or {}
            out[key] = (raw["env_id"], kwargs if isinstance(kwargs, dict) else {})
    return out
