"""TP=2, PP=2 (uneven 3+1) and TP=2 x PP=2 equal HF (logits) and TP=1 (grads), both families.

One 4-rank launch runs every layout (DP fills the rest of the world) and a dist-checkpoint
reshard (save at TP2xPP2, load at TP1); the tests check its per-rank measurements.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _vlm_harness import make_checkpoint, parallel_suite
from r1vfree_mcore.testing.distributed import run_distributed

CASES = (("qwen2_vl", False, "left"), ("qwen2_5_vl", True, "right"))  # tied flips vs the TP=1 test
LAYOUTS = (dict(tp=2), dict(pp=2, pp_layer_split=(3, 1)), dict(tp=2, pp=2))


@pytest.fixture(scope="module")
def layout_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_parallel")
    ckpts = [str(make_checkpoint(root, fam, tied)) for fam, tied, _ in CASES]
    sides = [s for *_, s in CASES]
    results = run_distributed(parallel_suite, 4, ckpts, LAYOUTS, sides, str(root / "dist_ckpt"), timeout=400)
    for r in results:
        r["ckpts"] = ckpts
    return results


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "-".join(f"{k}{v}" for k, v in l.items()))
@pytest.mark.parametrize("family", [c[0] for c in CASES])
def test_parallel_layout_equals_hf_and_tp1(layout_results, family, layout):
    seen_logits = 0
    for rank_results in layout_results:
        matches = [v for (ck, lay), v in rank_results["layouts"].items() if ck.startswith(family + "_") and lay == str(layout)]
        assert len(matches) == 1
        logit_diff, grad_rel_diff, n_grads = matches[0]
        if logit_diff is not None:  # last pipeline stage
            seen_logits += 1
            assert logit_diff <= 1e-4, (family, layout, logit_diff)
        assert n_grads > 0
        assert grad_rel_diff <= 1e-4, (family, layout, grad_rel_diff)
    assert seen_logits == (4 if layout.get("pp", 1) == 1 else 2)


@pytest.mark.slow
@pytest.mark.parametrize("family", [c[0] for c in CASES])
def test_dist_checkpoint_reshards_tp2pp2_to_tp1(layout_results, family):
    for rank_results in layout_results:
        ((diff, _),) = [d for name, d in rank_results["reshard"].items() if name.startswith(family + "_")]
        assert diff == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("family", [c[0] for c in CASES])
def test_hf_export_from_tp2pp2_shards_equals_checkpoint(layout_results, family):
    from _vlm_harness import hf_tensors

    union = {}
    for rank_results in layout_results:
        ((_, exported),) = [d for n, d in rank_results["reshard"].items() if n.startswith(family + "_")]
        union.update(exported)
    (ckpt,) = [c for c in layout_results[0]["ckpts"] if Path(c).name.startswith(family + "_")]
    assert sorted(union) == sorted(hf_tensors(ckpt))  # every HF tensor, from some stage
    assert max(union.values()) == 0.0
