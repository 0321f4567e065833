"""Model backends: vlm_scalar (tiny Qwen2-VL), ixc_reward (against a get_score double), http_judge (stub)."""

import base64
import io
import threading

import pytest
import torch
from PIL import Image

from r1vfree_mcore.rewards.config import RewardConfig
from r1vfree_mcore.rewards.http_judge import HTTPJudgeBackend, JudgeError
from r1vfree_mcore.rewards.ixc import IXCRewardBackend
from r1vfree_mcore.rewards.request import RewardRequest
from r1vfree_mcore.rewards.scoring import RewardEngine
from r1vfree_mcore.rewards.vlm_scalar import VLMScalarBackend, init_preference_head


def png_bytes(color=(200, 10, 10), size=(56, 84)) -> bytes:
    """A solid-colour PNG."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _requests():
    img = png_bytes()
    return [
        RewardRequest("a", "What is shown?", "<think>x</think><answer>a red circle</answer>", img),
        RewardRequest("b", "How many?", "no tags at all", None),
        RewardRequest("c", "Colour?", "<answer>blue</answer>", png_bytes((0, 0, 250), (84, 56))),
    ]


def test_vlm_scalar_matches_manual_forward_and_batching(tiny_reward_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    rs = _requests()
    backend = VLMScalarBackend(str(tiny_reward_dir))
    batched = backend.score(rs)
    singles = [backend.score([r])[0] for r in rs]
    assert batched == pytest.approx(singles, abs=1e-4)
    # Independent reference: full HF model, original chat, last token, head by hand.
    proc = AutoProcessor.from_pretrained(tiny_reward_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_reward_dir).eval()
    head = load_file(str(tiny_reward_dir / "value_head.safetensors"))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
            {"role": "assistant", "content": "a red circle"}]
    text = proc.apply_chat_template(msgs, tokenize=False)
    assert text.endswith("<|im_start|>assistant\na red circle<|im_end|>\n")
    inputs = proc(text=[text], images=[rs[0].load_image()], return_tensors="pt")
    with torch.no_grad():
        h = model(**inputs, output_hidden_states=True).hidden_states[-1][0, -1]
    ref = float(h @ head["weight"][0] + head["bias"][0])
    assert batched[0] == pytest.approx(ref, abs=1e-4)
    assert len(set(round(x, 4) for x in batched)) == 3


def test_vlm_scalar_preference_head_counts_tokens(tiny_reward_dir, tmp_path):
    import shutil

    d = tmp_path / "pref"
    shutil.copytree(tiny_reward_dir, d)
    init_preference_head(d, ["yes"])
    b = VLMScalarBackend(str(d))
    s = b.score([RewardRequest(i, "q", c) for i, c in enumerate([
        "<answer>no</answer>", "<answer>yes</answer>", "<answer>yes yes</answer>", "<answer>yes yes yes</answer>"])])
    assert s[1] - s[0] > 0.7 and s[2] - s[1] > 0.7 and s[3] - s[2] > 0.7


class FakeIXC:
    """Test double with InternLM-XComposer2.5-Reward's get_score/get_scores interface."""

    def __init__(self, batched):
        self.seen = []
        if not batched:
            self.get_scores = None

    def get_score(self, chat, images, hd_num=9):
        assert hd_num == 9 and [m["role"] for m in chat] == ["user", "assistant"]
        for p in images:
            from PIL import Image
            with Image.open(p) as im:  # the path must be a real, readable image during the call
                self.seen.append(im.size)
        return len(chat[1]["content"]) - 4.0

    def get_scores(self, chats, images, hd_num=9):
        return [self.get_score(c, i, hd_num) for c, i in zip(chats, images)]


@pytest.mark.parametrize("batched", [True, False])
def test_ixc_adapter_against_get_score_double(batched):
    fake = FakeIXC(batched)
    backend = IXCRewardBackend(model=fake)
    assert backend.batched is batched
    out = backend.score(_requests())
    # answers: "a red circle", "I don't know.", "blue"
    assert out == [12 - 4.0, 13 - 4.0, 4 - 4.0]
    assert fake.seen == [(56, 84), (84, 56)]
    with pytest.raises(TypeError, match="get_score"):
        IXCRewardBackend(model=object())


def test_http_judge_against_stub(judge_stub):
    stub = judge_stub(fail_first=2)
    b = HTTPJudgeBackend(stub.url, retries=2, backoff_s=0.0, concurrency=2)
    out = b.score(_requests())
    assert out == [12 % 11 / 10, 13 % 11 / 10, 4 / 10]
    assert len(stub.calls) == 5  # two failures retried
    with_image = [c for c in stub.calls if len(c["messages"][0]["content"]) == 2]
    url = with_image[0]["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1])[:4] == b"\x89PNG"


def test_http_judge_failures_go_through_engine_policy(judge_stub):
    stub = judge_stub()
    cfg = RewardConfig(backends=[{"name": "http_judge", "url": stub.url, "retries": 0, "backoff_s": 0.0},
                                 {"name": "format"}], retries=1, retry_backoff_s=0.0, max_failure_fraction=0.5)
    rs = _requests() + [RewardRequest("d", "q", "<answer>FAIL</answer>")]
    res = RewardEngine(cfg).score(rs)
    assert res.valid == [True, True, True, False] and res.failures == 1 and res.errors >= 2
    assert "sample 'd'" in res.last_error
    with pytest.raises(JudgeError, match="sample 'x' failed after 1 attempts"):
        HTTPJudgeBackend("http://127.0.0.1:9", retries=0, timeout_s=2).score([RewardRequest("x", "q", "a")])
