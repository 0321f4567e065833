"""``http_judge``: a judge model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

Works with vLLM/SGLang servers. Standard library only. Each sample is one request whose user
message holds the image (as a base64 ``data:`` URL) and ``prompt_template`` filled with
``{problem}`` and ``{answer}``; the reply is parsed with ``score_regex`` (first group) and
divided by ``max_score``. Requests run ``concurrency`` at a time; each has ``timeout_s`` and is
retried ``retries`` times with doubling backoff on connection errors, HTTP errors and
unparseable replies (then the engine's own retry/failure policy applies).
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from r1vfree_mcore.rewards.chat import reward_answer
from r1vfree_mcore.rewards.request import RewardRequest

DEFAULT_TEMPLATE = (
    "You are grading an answer to a question about the image.\n"
    "Question: {problem}\nAnswer: {answer}\n"
    "Rate how correct and helpful the answer is from 0 to 10. Reply with 'Score: <number>'."
)


class JudgeError(RuntimeError):
    """The judge endpoint failed or replied without a parseable score."""


class HTTPJudgeBackend:
    """Score = parsed judge score / max_score (see module docstring)."""

    default_metric = "accuracy"
    default_min_score = 0.0

    def __init__(self, url: str, model: str = "judge", prompt_template: str = DEFAULT_TEMPLATE,
                 score_regex: str = r"Score:\s*(-?\d+(?:\.\d+)?)", max_score: float = 10.0,
                 timeout_s: float = 60.0, retries: int = 2, backoff_s: float = 0.5, concurrency: int = 8,
                 max_tokens: int = 64, temperature: float = 0.0, api_key: str | None = None,
                 use_extracted_answer: bool = True):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"http_judge.url must start with http:// or https://, got {url!r}")
        if max_score <= 0 or concurrency < 1 or retries < 0:
            raise ValueError("http_judge: max_score must be > 0, concurrency >= 1, retries >= 0")
        self.url = url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.url += "/v1/chat/completions"
        self.model, self.template, self.max_score = model, prompt_template, float(max_score)
        self.regex = re.compile(score_regex)
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.max_tokens, self.temperature, self.api_key = max_tokens, temperature, api_key
        self.use_extracted_answer = use_extracted_answer
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="http_judge")

    def score(self, requests: list[RewardRequest]) -> list[float]:
        """Judge every request concurrently; raises JudgeError naming the first failed sample."""
        return list(self._pool.map(self._score_one, requests))

    def _payload(self, req: RewardRequest) -> bytes:
        text = self.template.format(problem=req.prompt, answer=reward_answer(req, self.use_extracted_answer))
        content: list[dict] = []
        if req.image is not None:
            raw = req.image if isinstance(req.image, bytes) else open(req.image, "rb").read()
            mime = "image/jpeg" if raw[:3] == b"\xff\xd8\xff" else "image/png"
            url = f"data:{mime};base64,{base64.b64encode(raw).decode()}"
            content.append({"type": "image_url", "image_url": {"url": url}})
        content.append({"type": "text", "text": text})
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": self.temperature}
        return json.dumps(body).encode()

    def _score_one(self, req: RewardRequest) -> float:
        data = self._payload(req)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range(self.retries + 1):
            try:
                http_req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(http_req, timeout=self.timeout_s) as resp:
                    reply = json.loads(resp.read())["choices"][0]["message"]["content"]
                m = self.regex.search(reply or "")
                if not m:
                    raise JudgeError(f"no score matching {self.regex.pattern!r} in reply {reply!r:.200}")
                return float(m.group(1)) / self.max_score
            except (urllib.error.URLError, OSError, KeyError, ValueError, JudgeError) as exc:
                last = exc
                if attempt < self.retries:
                    time.sleep(self.backoff_s * (2 ** attempt))
        raise JudgeError(f"http_judge {self.url}: sample {req.sample_id!r} failed after "
                         f"{self.retries + 1} attempts: {type(last).__name__}: {last}")
