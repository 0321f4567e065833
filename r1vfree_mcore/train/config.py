"""The typed run configuration: one dataclass per section, validated when loaded.

A YAML recipe plus ``key.sub=value`` overrides are merged onto these dataclasses with OmegaConf
(unknown keys are rejected with their dotted name), then each section's ``__post_init__`` checks
its values. Every field is documented where it is declared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

PRECISIONS = ("fp32", "bf16", "fp8")
SPECS = ("local", "local_sdpa", "transformer_engine")
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
DATA_FORMATS = ("auto", "disk", "parquet", "jsonl", "hub")
SCHEDULES = ("constant", "cosine")
OPTIM_SHARDINGS = ("dp_reshardable", "fully_reshardable")  # checkpoint/manager.py accepts these
SINKS = ("jsonl", "tensorboard", "wandb")


class ConfigError(ValueError):
    """A bad configuration value or key; the message names the key."""


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _one_of(value, choices, key):
    _check(value in choices, key, f"must be one of {list(choices)}, got {value!r}")


@dataclass
class ModelConfig:
    hf_dir: str = "???"  # HF checkpoint dir: config, tokenizer/processor and (unless mcore_dir) weights
    mcore_dir: Optional[str] = None  # start from a Megatron dist checkpoint instead of HF weights
    freeze_vision: bool = False  # vision tower gets no grads and no optimizer state
    freeze_merger: bool = False  # likewise for the patch merger
    dtype: str = "fp32"  # parameter dtype: fp32 | bf16
    precision: str = "fp32"  # compute: fp32 | bf16 | fp8 (fp8: TE decoder linears only)
    fp8_recipe: Optional[str] = None  # delayed | current (fp8 only)
    spec: str = "local"  # layer spec: local (pure torch) | local_sdpa (+ torch SDPA attention) | transformer_engine

    def __post_init__(self):
        _one_of(self.dtype, ("fp32", "bf16"), "model.dtype")
        _one_of(self.precision, PRECISIONS, "model.precision")
        _one_of(self.spec, SPECS, "model.spec")
        if self.precision == "fp8":
            _one_of(self.fp8_recipe, ("delayed", "current"), "model.fp8_recipe")
        else:
            _check(self.fp8_recipe is None, "model.fp8_recipe", "set only with model.precision=fp8")


@dataclass
class ParallelSection:
    tp: int = 1  # tensor-parallel size of the policy
    pp: int = 1  # pipeline-parallel size of the policy
    pp_layer_split: Optional[list[int]] = None  # decoder layers per stage, e.g. [3, 1]

    def __post_init__(self):
        _check(self.tp >= 1, "parallel.tp", f"must be >= 1, got {self.tp}")
        _check(self.pp >= 1, "parallel.pp", f"must be >= 1, got {self.pp}")
        if self.pp_layer_split is not None:
            _check(len(self.pp_layer_split) == self.pp, "parallel.pp_layer_split",
                   f"needs {self.pp} entries (one per stage), got {list(self.pp_layer_split)}")


@dataclass
class DataConfig:
    path: str = "???"  # datasets dir, parquet file, JSONL file (images relative to it) or hub name
    format: str = "auto"  # auto | disk | parquet | jsonl | hub
    min_pixels: int = 3136  # image resize bounds (Qwen-VL processor)
    max_pixels: int = 401408
    max_prompt_length: int = 512  # prompts longer than this (tokens, incl. image) are skipped
    shuffle_seed: int = 42  # the sampler's seed; order is resumable

    def __post_init__(self):
        _one_of(self.format, DATA_FORMATS, "data.format")
        _check(0 < self.min_pixels <= self.max_pixels, "data.min_pixels",
               f"needs 0 < min_pixels <= max_pixels, got {self.min_pixels} > {self.max_pixels}")
        _check(self.max_prompt_length > 0, "data.max_prompt_length", "must be > 0")


@dataclass
class RolloutConfig:
    num_generations: int = 8  # G: samples per prompt (the GRPO group)
    max_completion_length: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    prompts_per_step: int = 1  # prompts per DP rank per step

    def __post_init__(self):
        _check(self.num_generations >= 2, "rollout.num_generations", "must be >= 2 (a group needs a baseline)")
        _check(self.max_completion_length >= 1, "rollout.max_completion_length", "must be >= 1")
        _check(self.temperature > 0, "rollout.temperature", "must be > 0")
        _check(0 < self.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
        _check(self.top_k >= 0, "rollout.top_k", "must be >= 0")
        _check(self.prompts_per_step >= 1, "rollout.prompts_per_step", "must be >= 1")


@dataclass
class RewardSection:
    """Where and how rewards are computed (see r1vfree_mcore.rewards.RewardConfig for each knob)."""

    num_ranks: int = 0  # processes beyond the policy that serve rewards; 0 = in-process thread
    backends: list[dict[str, Any]] = field(
        default_factory=lambda: [{"name": "format", "weight": 1.0}]
    )  # [{name, weight, metric_name?, min_score? (default 0 for model scores), ...options}]
    retries: int = 2  # extra attempts of a failing backend call
    max_failure_fraction: float = 0.1  # stop the run when more samples of a step fail
    batch_size: int = 8  # samples per backend call
    heartbeat_s: float = 1.0
    dead_after_s: float = 60.0  # a silent reward rank is declared dead after this
    connect_timeout_s: float = 300.0
    advertise_host: Optional[str] = None  # address reward ranks publish (multi-node)
    result_timeout_s: float = 600.0  # longest wait for one step's scores

    def __post_init__(self):
        _check(self.num_ranks >= 0, "reward.num_ranks", "must be >= 0")
        try:
            self.to_reward_config()
        except ValueError as exc:  # re-key the rewards module's message to this section
            raise ConfigError(str(exc).replace("rewards.", "reward.", 1)) from None

    def to_reward_config(self):
        from r1vfree_mcore.rewards.config import RewardConfig

        d = {k: v for k, v in asdict(self).items() if k not in ("num_ranks", "result_timeout_s")}
        d["backends"] = [dict(b) for b in self.backends]
        return RewardConfig(num_reward_ranks=self.num_ranks, **d)


@dataclass
class GRPOConfig:
    beta: float = 0.04  # KL weight; 0 skips the reference model entirely
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    aggregation: str = "seq-mean-token-mean"
    num_iterations: int = 1  # policy updates per rollout batch
    mini_batch_size: Optional[int] = None  # sequences per optimizer step per DP rank; None = all
    micro_batch_size: Optional[int] = None  # sequences per forward pass; None = num_generations
    normalize_std: bool = True  # False = Dr. GRPO advantages
    adv_eps: float = 1e-4
    pack_sequences: bool = True  # THD-pack each micro-batch of the log-prob/training passes (no padding FLOPs)

    def __post_init__(self):
        _check(self.beta >= 0, "grpo.beta", "must be >= 0")
        _one_of(self.aggregation, AGGREGATIONS, "grpo.aggregation")
        _check(self.num_iterations >= 1, "grpo.num_iterations", "must be >= 1")
        _check(self.mini_batch_size is None or self.mini_batch_size >= 1, "grpo.mini_batch_size", "must be >= 1")
        _check(self.micro_batch_size is None or self.micro_batch_size >= 1, "grpo.micro_batch_size", "must be >= 1")


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine (after warmup)
    min_lr: float = 0.0
    grad_clip: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8

    def __post_init__(self):
        _check(self.lr > 0, "optim.lr", "must be > 0")
        _one_of(self.schedule, SCHEDULES, "optim.schedule")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")


@dataclass
class TrainSection:
    max_steps: int = 100
    seed: int = 42

    def __post_init__(self):
        _check(self.max_steps >= 1, "train.max_steps", "must be >= 1")


@dataclass
class CheckpointConfig:
    every_steps: int = 50  # 0 disables periodic saves (preemption still saves)
    keep_last: int = 2
    hf_export_every: Optional[int] = None  # also write an HF checkpoint every K steps
    hf_export_at_end: bool = False
    # Distributed-optimizer checkpoint format (GPU runs): dp_reshardable (resume at any DP size)
    # or fully_reshardable (any TP/PP/DP; gathers optimizer state on DP rank 0 when saving).
    optim_sharding: str = "dp_reshardable"

    def __post_init__(self):
        _check(self.every_steps >= 0, "checkpoint.every_steps", "must be >= 0")
        _check(self.keep_last >= 1, "checkpoint.keep_last", "must be >= 1")
        _one_of(self.optim_sharding, OPTIM_SHARDINGS, "checkpoint.optim_sharding")
        _check(self.hf_export_every is None or self.hf_export_every >= 1, "checkpoint.hf_export_every",
               f"must be >= 1 or null, got {self.hf_export_every}")


@dataclass
class LoggingConfig:
    report_to: list[str] = field(default_factory=lambda: ["jsonl"])
    wandb_project: str = "r1vfree-mcore"
    rollout_log: bool = True  # per-sample prompt/completion/rewards to RUN_DIR/rollouts.jsonl
    progress: bool = True

    def __post_init__(self):
        for s in self.report_to:
            _one_of(s, SINKS, "logging.report_to")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardSection = field(default_factory=RewardSection)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def check_world(self, world_size: int) -> int:
        """Check the layout against the launched world; returns the policy DP size."""
        policy = world_size - self.reward.num_ranks
        _check(policy >= 1, "reward.num_ranks",
               f"{self.reward.num_ranks} reward ranks leave no policy rank in a world of {world_size}")
        mp = self.parallel.tp * self.parallel.pp
        _check(policy % mp == 0, "parallel.tp",
               f"tp x pp = {mp} does not divide the {policy} policy ranks (world {world_size} - "
               f"{self.reward.num_ranks} reward ranks)")
        return policy // mp


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML recipe (or None for defaults) and apply ``key.sub=value`` overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = OmegaConf.structured(Config)
    try:
        layers = [base]
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file not found: {p}")
            layers.append(OmegaConf.load(p))
        for o in overrides:
            if "=" not in o:
                raise ConfigError(f"override {o!r} is not key=value")
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"{missing[0]}: required but not set")
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{key}: {first}" if key else first) from None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (saved with every run and checkpoint)."""
    import yaml

    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
