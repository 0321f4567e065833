"""A local OpenAI-compatible ``/v1/chat/completions`` judge stub (tests, offline demos).

Replies ``Score: len(answer) % 11`` where ``answer`` is the ``Answer: ...`` line of the
default ``http_judge`` prompt, so scores are predictable; it can fail chosen calls with HTTP 500.
Standard library only; serves on 127.0.0.1 in a daemon thread until ``stop()``.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeStub:
    """OpenAI-compatible /v1/chat/completions stub: 'Score: len(answer) % 11'.

    Fails (HTTP 500) the first ``fail_first`` calls and every call whose answer contains
    ``fail_marker``; records every request body. Bounded: serves until stopped.
    """

    def __init__(self, fail_first: int = 0, fail_marker: str = "FAIL"):
        self.fail_first, self.fail_marker = fail_first, fail_marker
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.calls.append(body)
                    n = len(stub.calls)
                text = body["messages"][0]["content"][-1]["text"]
                answer = re.search(r"Answer: (.*)\n", text).group(1)
                if n <= stub.fail_first or stub.fail_marker in answer:
                    self.send_response(500)
                    self.end_headers()
                    return
                reply = {"choices": [{"message": {"role": "assistant", "content": f"Score: {len(answer) % 11}"}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
