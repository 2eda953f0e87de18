#!/usr/bin/env python3
"""A tiny webhook receiver for the README walkthrough: prints every request, answers 200."""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        print(f"--- {self.path}", flush=True)
        for name in ("webhook-id", "webhook-signature", "X-HookRelay-Attempt"):
            print(f"{name}: {self.headers.get(name)}", flush=True)
        print(body.decode(errors="replace"), flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
HTTPServer(("127.0.0.1", port), Handler).serve_forever()
