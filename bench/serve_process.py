"""Starts `batchmax serve` on a free loopback port for scripts and tests.

The server is asked for port 0 and its log line "listening on http://HOST:PORT" says
which port it got; the helper then waits until GET /health answers 200. Used by
bench/server_load.py and tests/e2e/server/test_openai_client.py.
"""
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request


def default_model():
    if os.environ.get("BATCHMAX_MODEL"):
        return os.environ["BATCHMAX_MODEL"]
    return os.path.expanduser("~/.cache/batchmax/SmolLM2-135M-Instruct.Q4_1.gguf")


def http_get(url, headers=None, timeout=10):
    """(status, body) of a GET; status 0 when the server cannot be reached."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, ""


class ServeProcess:
    def __init__(self, binary, args, ready_timeout_s=120):
        self.log = tempfile.NamedTemporaryFile(prefix="batchmax_serve_", suffix=".log", delete=False)
        cmd = [binary, "serve", "--host", "127.0.0.1", "--port", "0"] + list(args)
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        self.port = None
        deadline = time.time() + ready_timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("batchmax serve exited with %d:\n%s" % (self.proc.returncode, self.read_log()))
            if self.port is None:
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.read_log())
                if m:
                    self.port = int(m.group(1))
            if self.port is not None and http_get(self.url("/health"))[0] == 200:
                return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("batchmax serve did not become ready:\n" + self.read_log())

    def url(self, path=""):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def read_log(self):
        with open(self.log.name, "r", errors="replace") as f:
            return f.read()

    def terminate(self, timeout_s=60):
        """SIGTERM; returns the exit status (None if it did not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        self.kill()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def metrics(base_url, headers=None):
    """The unlabelled and labelled samples of GET /metrics as {name: value}."""
    status, text = http_get(base_url + "/metrics", headers)
    if status != 200:
        raise RuntimeError("GET /metrics answered %d: %s" % (status, text[:200]))
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out
