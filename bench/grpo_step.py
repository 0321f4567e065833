"""One GRPO step (rollout + reward + update): our trainer vs TRL's GRPOTrainer, side by side.

    python bench/grpo_step.py [--generations 8] [--prompts 2] [--completion-length 32]
                              [--steps 6] [--warmup 1] [--rounds 3] [--threads 1] [--trl-python PATH] [--ours-only]

Both sides train the same tiny random Qwen2-VL (4 layers, hidden 256, 8 heads / 2 KV heads,
head_dim 32, vision tower 4 x 64) written by :func:`r1vfree_mcore.testing.tiny.write_tiny_checkpoint`,
on the same synthetic data (:mod:`r1vfree_mcore.testing.synthetic_data`, images resized to
3136..12544 pixels), fp32 on CPU, with the same G, prompts per step, max completion length,
temperature 1.0, beta 0.04, lr 1e-5 constant, grad clip 1.0, one optimizer step per rollout and the
same two model-free rewards (R1V-Free ``format`` + a character-diversity score, bench/_grpo_step_rewards.py),
so the comparison measures the trainers, not a reward model.

Each framework runs ``--steps`` steps in its own subprocess (``OMP_NUM_THREADS=--threads``),
``--rounds`` times, alternating which side goes first (the machine this was written on is a shared
2-core VM whose speed drifts 2-3x between minutes); each run's first ``--warmup`` steps are
dropped and the median (and min) of the pooled remaining steps is reported, with each round's
median to show the spread. ``cpu_s`` is the process CPU time of a step (median; all threads):
on a starved VM wall time also measures the scheduler, CPU time measures the work. Peak RSS
(``step_RSS_MiB``, the JSON ratio) is the trainer process's own high-water mark (``ru_maxrss``,
start-up and imports included) read at the end of each training step, max over steps and rounds,
the same way on both sides. ``proc_RSS_MiB`` is the whole run's (``os.wait4`` rusage: max over
the process and its reaped children, not a sum) and also covers what follows the last step: our
trainer writes its end-of-run checkpoint there (TRL's side saves nothing), and Linux copies the
parent's high-water mark into a forked child (the checkpoint writer), so that column overstates
the memory actually added.

- Ours: ``r1vfree-train --config launch/configs/tiny_cpu.yaml`` with overrides, run through
  bench/_grpo_step_ours.py (which only adds the step's CPU time to the metrics);
  step time = time/rollout + time/logprobs + time/reward_wait + time/train from
  RUN_DIR/metrics.jsonl (data fetch and prompt processing are inside time/rollout; the
  end-of-run checkpoint, time/checkpoint, is excluded).
- TRL: bench/_grpo_step_trl.py (GRPOConfig loss_type="grpo", gradient_checkpointing=False,
  use_cpu=True, bf16=False); step time = callback on_step_begin -> on_step_end.

Both stop a sequence at EOS. To make both generate and train on exactly max_completion_length
tokens, the bench zeroes the ``lm_head`` rows of the EOS and vision tokens and scales the other
rows by 3 (:func:`silence_stop_and_vision_tokens`), and uses a small lr (1e-5) so a few updates do
not bring EOS back; the table still shows each side's mean completion length and completion tokens/s.

TRL setup (kept out of the project's pinned .venv), ~2 min from this machine's package mirror:

    python3 -m venv /work/trl_venv
    /work/trl_venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/trl_venv/bin/pip install trl==1.16.0 transformers==5.24.0 datasets pillow psutil

``--trl-python`` defaults to this interpreter when ``import trl`` works in it, else
/work/trl_venv/bin/python when present, else the TRL side is skipped (its JSON ratios are null).
The TRL side imports this repository (r1vfree_mcore's format reward and prompt) via PYTHONPATH.
Ends with one JSON line: {"bench": "grpo_step", "time_ratio_vs_trl": ours/trl, "rss_ratio_vs_trl": ours/trl}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CONFIG = ROOT / "launch" / "configs" / "tiny_cpu.yaml"
TRL_VENV_PYTHON = Path("/work/trl_venv/bin/python")
MIN_PIXELS, MAX_PIXELS = 3136, 12544
OUR_PHASES = ("time/rollout", "time/logprobs", "time/reward_wait", "time/train")


def write_assets(root: Path) -> dict[str, Path]:
    """The tiny Qwen2-VL policy and the synthetic dataset both sides train on."""
    from r1vfree_mcore.testing.synthetic_data import write_synthetic_dataset
    from r1vfree_mcore.testing.tiny import TinySpec, write_tiny_checkpoint

    spec = TinySpec(family="qwen2_vl", hidden_size=256, intermediate_size=512, num_layers=4, num_heads=8,
                    num_kv_heads=2, mrope_section=[4, 6, 6], min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    paths = {"policy": root / "policy", "data": root / "data"}
    write_tiny_checkpoint(paths["policy"], spec)
    silence_stop_and_vision_tokens(paths["policy"])
    write_synthetic_dataset(paths["data"], 64, "disk", seed=0)
    return paths


def silence_stop_and_vision_tokens(policy: Path, scale: float = 3.0) -> list[int]:
    """Make EOS and vision tokens (practically) never sampled, so every completion is full length.

    Zeroes their ``lm_head`` rows (logit exactly 0) and scales the other rows by ``scale``, which
    puts the sampled tokens' logits far above 0 (measured: 32/32 tokens in 32 of 32 completions,
    still diverse text). Both trainers then generate and train on exactly ``max_completion_length``
    tokens per sequence, and TRL (which, unlike ours, does not mask vision tokens out of sampling)
    never samples an image token into a completion. Returns the silenced token ids.
    """
    from safetensors.torch import load_file, save_file

    cfg = json.loads((policy / "config.json").read_text())
    gen = json.loads((policy / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    vision = [cfg[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")]
    ids = sorted(set(eos + vision))
    weights = load_file(policy / "model.safetensors")
    head = weights["lm_head.weight"] * scale
    head[ids] = 0.0
    weights["lm_head.weight"] = head.contiguous()
    save_file(weights, policy / "model.safetensors", metadata={"format": "pt"})
    return ids


def find_trl_python(explicit: str | None) -> str | None:
    """--trl-python, else this interpreter if it has trl, else /work/trl_venv, else None."""
    if explicit:
        return explicit
    probe = subprocess.run([sys.executable, "-c", "import trl"], capture_output=True)
    if probe.returncode == 0:
        return sys.executable
    return str(TRL_VENV_PYTHON) if TRL_VENV_PYTHON.exists() else None


def run_measured(cmd: list[str], env: dict, log_path: Path, timeout: float) -> tuple[int, float, float]:
    """Run ``cmd``; returns (exit code, peak RSS in MiB from wait4, wall seconds)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen consistent
    return proc.returncode, usage.ru_maxrss / 1024.0, time.perf_counter() - t0


def _child_env(threads: int, pythonpath: list[Path]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in pythonpath] + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _fail(side: str, log: Path, rc: int) -> None:
    tail = log.read_text()[-3000:] if log.exists() else ""
    raise RuntimeError(f"{side} side exited with {rc}; log {log}:\n{tail}")


def run_ours(a, assets: dict[str, Path], work: Path) -> dict:
    """Our trainer in a subprocess; per-step times from its metrics.jsonl."""
    run_dir = work / "ours_run"
    backends = ("[{name: format, weight: 1.0}, "
                "{name: '_grpo_step_rewards:DiversityBackend', weight: 1.0}]")
    cmd = [sys.executable, str(BENCH / "_grpo_step_ours.py"), "--config", str(CONFIG), "--run-dir", str(run_dir),
           "--resume", "none", f"model.hf_dir={assets['policy']}", f"data.path={assets['data']}",
           f"data.min_pixels={MIN_PIXELS}", f"data.max_pixels={MAX_PIXELS}",
           f"rollout.num_generations={a.generations}", f"rollout.prompts_per_step={a.prompts}",
           f"rollout.max_completion_length={a.completion_length}", "rollout.temperature=1.0",
           f"reward.backends={backends}", "grpo.beta=0.04", "grpo.num_iterations=1", f"optim.lr={a.lr}",
           "checkpoint.every_steps=0", "logging.report_to=[jsonl]", "logging.rollout_log=false",
           f"train.seed={a.seed}", "--max-steps", str(a.steps)]
    log = work / "ours.log"
    rc, rss, wall = run_measured(cmd, _child_env(a.threads, [BENCH, ROOT]), log, a.timeout)
    if rc != 0:
        _fail("ours", log, rc)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "step_s": [sum(r[k] for k in OUR_PHASES) for r in rows],
        "cpu_s": [r["bench/cpu_s"] for r in rows],
        "phases": {k: [r[k] for r in rows] for k in OUR_PHASES + ("time/checkpoint",)},
        "completion_length": [r["completion_length"] for r in rows],
        "step_rss_mib": max(r["bench/maxrss_mib"] for r in rows),
        "rss_mib": rss, "wall_s": wall, "log": str(log),
    }


def run_trl(a, python: str, assets: dict[str, Path], work: Path) -> dict:
    """TRL's GRPOTrainer in a subprocess of ``python`` (bench/_grpo_step_trl.py)."""
    out = work / "trl.json"
    cmd = [python, str(BENCH / "_grpo_step_trl.py"), "--model", str(assets["policy"]), "--data", str(assets["data"]),
           "--generations", str(a.generations), "--prompts", str(a.prompts),
           "--completion-length", str(a.completion_length), "--steps", str(a.steps), "--lr", str(a.lr),
           "--seed", str(a.seed), "--run-dir", str(work / "trl_run"), "--out", str(out)]
    log = work / "trl.log"
    rc, rss, wall = run_measured(cmd, _child_env(a.threads, [BENCH, ROOT]), log, a.timeout)
    if rc != 0:
        _fail("trl", log, rc)
    res = json.loads(out.read_text())
    return {**res, "step_rss_mib": max(res["maxrss_mib"]), "rss_mib": rss, "wall_s": wall, "log": str(log)}


def summarize(rounds: list[dict], warmup: int, n_seq: int) -> dict:
    """Pool the steps after each round's warm-up: median and min step time, tokens/s, peak RSS."""
    steps = [t for r in rounds for t in r["step_s"][warmup:]]
    lens = [n for r in rounds for n in r["completion_length"][warmup:]]
    if not steps:
        raise ValueError(f"no measured steps: --steps must exceed --warmup ({warmup})")
    med = statistics.median(steps)
    mean_len = statistics.fmean(lens)
    cpu = statistics.median([c for r in rounds for c in r["cpu_s"][warmup:]])
    return {"step_s": med, "min_step_s": min(steps), "cpu_s": cpu, "steps": len(steps), "completion_length": mean_len,
            "tokens_per_s": n_seq * mean_len / med, "rss_mib": max(r["rss_mib"] for r in rounds),
            "step_rss_mib": max(r["step_rss_mib"] for r in rounds),
            "round_medians": [statistics.median(r["step_s"][warmup:]) for r in rounds]}


def print_table(rows: dict[str, dict], a) -> None:
    print(f"\nGRPO step, tiny Qwen2-VL fp32 CPU: G={a.generations} prompts={a.prompts} "
          f"max_completion_length={a.completion_length} threads={a.threads}, {a.rounds} round(s) x "
          f"({a.steps} steps - {a.warmup} warm-up); step_s = median of the pooled measured steps")
    print(f"| {'trainer':<8} | {'step_s':>7} | {'min_step_s':>10} | {'round medians':<22} | {'cpu_s':>6} "
          f"| {'completion_len':>14} | {'compl_tok/s':>11} | {'step_RSS_MiB':>12} | {'proc_RSS_MiB':>12} |")
    print(f"|{'-' * 10}|{'-' * 8}:|{'-' * 11}:|{'-' * 24}|{'-' * 7}:|{'-' * 15}:|{'-' * 12}:|{'-' * 13}:|{'-' * 13}:|")
    for name, s in rows.items():
        rm = " ".join(f"{x:.2f}" for x in s["round_medians"])
        print(f"| {name:<8} | {s['step_s']:7.3f} | {s['min_step_s']:10.3f} | {rm:<22} | {s['cpu_s']:6.3f} | "
              f"{s['completion_length']:14.1f} | {s['tokens_per_s']:11.1f} | {s['step_rss_mib']:12.0f} | "
              f"{s['rss_mib']:12.0f} |")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generations", type=int, default=8, help="G, completions per prompt")
    p.add_argument("--prompts", type=int, default=2, help="prompts per step")
    p.add_argument("--completion-length", type=int, default=32, help="max completion tokens")
    p.add_argument("--steps", type=int, default=6, help="steps per framework, warm-up included")
    p.add_argument("--warmup", type=int, default=1, help="leading steps left out of the median")
    p.add_argument("--rounds", type=int, default=3, help="runs of each side, alternating the order")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each side")
    p.add_argument("--lr", type=float, default=1e-5, help="small, so a few steps do not teach EOS back")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--trl-python", default=None, help="Python with trl installed (see the module docstring)")
    p.add_argument("--ours-only", action="store_true", help="skip the TRL side")
    p.add_argument("--work-dir", default=None, help="assets, logs and run dirs (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per side")
    a = p.parse_args(argv)
    if a.steps <= a.warmup:
        p.error("--steps must be greater than --warmup")
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    n_seq = a.generations * a.prompts
    trl_python = None if a.ours_only else find_trl_python(a.trl_python)
    if trl_python is None:
        why = "--ours-only" if a.ours_only else f"trl not importable here and {TRL_VENV_PYTHON} missing"
        print(f"grpo_step: TRL side skipped ({why}); see the docstring for the TRL virtualenv", flush=True)
    raw: dict[str, list[dict]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory(prefix="grpo_step_") as tmp:
        work = Path(a.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        assets = write_assets(work / "assets")
        for i in range(a.rounds):
            # Alternate which side goes first, so slow drifts of the shared machine's load hit both.
            order = ["ours", "trl"] if i % 2 == 0 else ["trl", "ours"]
            for side in order:
                rdir = work / f"round{i}"
                rdir.mkdir(exist_ok=True)
                if side == "ours":
                    raw["ours"].append(run_ours(a, assets, rdir))
                elif trl_python is not None:
                    raw["trl"].append(run_trl(a, trl_python, assets, rdir))
                print(f"grpo_step: round {i} {side} done", flush=True)
    results = {k: summarize(v, a.warmup, n_seq) for k, v in raw.items() if v}
    print_table(results, a)
    phases = {k.split("/")[1]: statistics.median([t for r in raw["ours"] for t in r["phases"][k][a.warmup:]])
              for k in raw["ours"][0]["phases"]}
    print("ours, median s per phase: " + ", ".join(f"{k}={v:.3f}" for k, v in phases.items())
          + " (checkpoint is not part of step_s)")
    trl, ours = results.get("trl"), results["ours"]
    if trl:
        print(f"ours/trl: wall {ours['step_s'] / trl['step_s']:.3f}, min wall {ours['min_step_s'] / trl['min_step_s']:.3f}, "
              f"CPU {ours['cpu_s'] / trl['cpu_s']:.3f}, step peak RSS {ours['step_rss_mib'] / trl['step_rss_mib']:.3f}, "
              f"whole-run peak RSS {ours['rss_mib'] / trl['rss_mib']:.3f}")
    line = {"bench": "grpo_step",
            "time_ratio_vs_trl": round(ours["step_s"] / trl["step_s"], 4) if trl else None,
            "rss_ratio_vs_trl": round(ours["step_rss_mib"] / trl["step_rss_mib"], 4) if trl else None}
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
