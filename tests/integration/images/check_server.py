"""A tiny BYOC model server for the `dockyard check` test images, good or broken on purpose.

Each test image is `dockyard-test/base:bookworm` (or the curl-less base) plus this file and
`ENV MODE=<mode>`:

  good       GET /health 200, POST /predict echoes the JSON body and the deployment id's
             end, exits on SIGTERM
  health404  no /health route
  health500  GET /health answers 500
  wrongport  listens on PORT + 1 instead of PORT
  loopback   listens on 127.0.0.1 only
  crash      raises at start-up (a missing model file)
  slow       sleeps SLOW_S seconds before it listens
  writer     writes a cache file into the (read-only) artifact folder at start-up
  sigterm    ignores SIGTERM
  oompredict dies on POST /predict, as a server killed for memory mid-inference would
"""

import http.server
import json
import os
import signal
import socketserver
import sys
import time

MODE = os.environ.get("MODE", "good")
PORT = int(os.environ.get("PORT", "8080"))
ARTIFACT = "/opt/ds/model/deployed_model"


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health" and MODE != "health404":
            if MODE == "health500":
                return self.reply(500, {"status": "model not loaded"})
            return self.reply(200, {"status": "ok"})
        self.reply(404, {"error": "no such path"})

    def do_POST(self):
        if self.path != "/predict":
            return self.reply(404, {"error": "no such path"})
        if MODE == "oompredict":
            print("MemoryError: cannot allocate the inference buffers", flush=True)
            os._exit(137)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            data = json.loads(body)
        except ValueError:
            return self.reply(400, {"error": "send JSON"})
        # The end of the injected MODEL_DEPLOYMENT_OCID: enough to recognise it, short in a report.
        self.reply(200, {"echo": data, "id": os.environ.get("MODEL_DEPLOYMENT_OCID", "")[-12:]})

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if MODE == "crash":
    raise FileNotFoundError(f"[Errno 2] No such file or directory: '{ARTIFACT}/model.joblib'")
if MODE == "writer":
    with open(os.path.join(ARTIFACT, "cache.json"), "w") as cache:  # refused: the mount is read-only
        cache.write("{}")
if MODE == "slow":
    time.sleep(float(os.environ.get("SLOW_S", "600")))
if MODE == "sigterm":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

address = "127.0.0.1" if MODE == "loopback" else "0.0.0.0"
port = PORT + 1 if MODE == "wrongport" else PORT
print(f"serving mode {MODE} on {address}:{port}", flush=True)
sys.stdout.flush()
Server((address, port), Handler).serve_forever()
