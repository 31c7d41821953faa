"""Stands in for `python -m vllm.entrypoints.cli.main serve MODEL --port P ...` in launcher tests.

Answers GET /v1/models (so the launcher sees it healthy) and GET /launcher_probe with the argv and
CUDA_VISIBLE_DEVICES it was started with, so a test can check what the launcher asked of each server.
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    argv = sys.argv[1:]
    port = int(argv[argv.index("--port") + 1])
    name = argv[argv.index("--served-model-name") + 1]
    probe = {"argv": argv, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = {"/v1/models": {"data": [{"id": name}]}, "/launcher_probe": probe}.get(self.path)
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(json.dumps(body or {}).encode())

        def log_message(self, *args):
            pass

    print(f"fake vLLM serving {name} on port {port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
