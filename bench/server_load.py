#!/usr/bin/env python3
"""Load test for `batchmax serve` (loopback only, bounded in count and time).

Sends --requests concurrent requests (mixed /v1/completions and /v1/chat/completions,
streamed and not, random prompt and output lengths); a fraction of the clients hang up
midway. Then it checks the invariants:
  - every request that was not hung up completes: HTTP 200, a finish_reason, and usage
    that adds up (streamed: completion_tokens == token chunks received; finish_reason
    "length": completion_tokens == max_tokens);
  - none is lost (every request gets an answer or a deliberate hang-up);
  - afterwards GET /metrics shows 0 running, 0 waiting and every KV block free.
and reports requests/s, output tokens/s, TTFT and time per output token (p50/p90/p99).
Exit status 1 when an invariant fails.

With --modes full,batchmax the same load runs once per KV mode (the per-request kv_mode
field) against the same server (one memory budget, --mem-budget in --server-args), and
both are reported.

  python3 bench/server_load.py --spawn build/batchmax --requests 256 \
      --server-args "--threads 2 --max-batch 0 --mem-budget 160MiB" --json-out out.json
  python3 bench/server_load.py --url http://127.0.0.1:8080 --requests 64
"""
import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_process  # noqa: E402

WORDS = ("the of and to in is was for on that with as by at from his her an which be this are "
         "river mountain city garden winter summer music paper window story market engine "
         "light stone water forest morning letter bridge village island silver").split()


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(values):
    return {"p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "n": len(values)}


class HttpError(Exception):
    pass


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def body_chunks(reader, headers):
    """Yields the body's bytes as they arrive (chunked or Content-Length or until EOF)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


class Result:
    def __init__(self, spec):
        self.spec = spec
        self.status = None
        self.hung_up = False
        self.error = None
        self.t_send = self.t_first = self.t_end = None
        self.token_chunks = 0
        self.finish_reason = None
        self.usage = None


async def run_one(host, port, spec, headers, timeout_s):
    r = Result(spec)
    body = json.dumps(spec["body"]).encode()
    path = spec["path"]
    req = ("POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
           "Content-Length: %d\r\nConnection: close\r\n" % (path, host, port, len(body)))
    for k, v in headers.items():
        req += "%s: %s\r\n" % (k, v)
    req = req.encode() + b"\r\n" + body
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        r.t_send = time.perf_counter()
        writer.write(req)
        await writer.drain()
        r.status, resp_headers = await asyncio.wait_for(read_head(reader), timeout_s)
        if r.status != 200:
            chunks = [c async for c in body_chunks(reader, resp_headers)]
            r.error = b"".join(chunks).decode("utf-8", "replace")[:300]
            return r
        hang_up_after = spec.get("hang_up_after_tokens")
        hang_up_at = (r.t_send + spec["hang_up_after_s"]) if spec.get("hang_up_after_s") is not None else None
        buf = b""
        deadline = time.perf_counter() + timeout_s
        agen = body_chunks(reader, resp_headers)
        while True:
            wait = deadline - time.perf_counter()
            if hang_up_at is not None:
                wait = min(wait, max(0.0, hang_up_at - time.perf_counter()))
            try:
                data = await asyncio.wait_for(agen.__anext__(), max(wait, 0.001))
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                if hang_up_at is not None and time.perf_counter() >= hang_up_at:
                    r.hung_up = True
                    return r
                raise
            buf += data
            if spec["stream"]:
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if not event.startswith(b"data: "):
                        continue  # ": keepalive"
                    payload = event[6:]
                    if payload == b"[DONE]":
                        r.t_end = time.perf_counter()
                        continue
                    j = json.loads(payload)
                    if "error" in j:
                        r.error = json.dumps(j["error"])
                        continue
                    if j.get("usage"):
                        r.usage = j["usage"]
                    if not j["choices"]:
                        continue
                    c = j["choices"][0]
                    if "role" in c.get("delta", {}):
                        continue  # chat's opening chunk carries no token
                    if c.get("finish_reason"):
                        r.finish_reason = c["finish_reason"]
                    else:
                        r.token_chunks += 1
                        if r.t_first is None:
                            r.t_first = time.perf_counter()
                        if hang_up_after is not None and r.token_chunks >= hang_up_after:
                            r.hung_up = True
                            return r
        if not spec["stream"]:
            r.t_end = time.perf_counter()
            j = json.loads(buf)
            if "error" in j:
                r.error = json.dumps(j["error"])
            else:
                r.usage = j["usage"]
                r.finish_reason = j["choices"][0]["finish_reason"]
    except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal
        r.error = "%s: %s" % (type(e).__name__, e)
    finally:
        if writer is not None:
            writer.close()
    return r


def make_specs(args, rng, kv_mode):
    specs = []
    for i in range(args.requests):
        n_words = rng.randint(*args.prompt_words)
        text = " ".join(rng.choice(WORDS) for _ in range(n_words))
        max_tokens = rng.randint(*args.max_tokens)
        stream = rng.random() < args.stream_fraction
        chat = rng.random() < args.chat_fraction and not args.prompt_ids
        body = {"max_tokens": max_tokens, "temperature": 0.0 if i % 2 else 0.8, "seed": i}
        if args.prompt_ids:
            # Dummy-weight servers have no tokenizer: token-id prompts (GPU runs at 8B scale).
            path = "/v1/completions"
            body["prompt"] = [rng.randrange(1, args.vocab) for _ in range(rng.randint(*args.prompt_ids))]
        elif chat:
            path = "/v1/chat/completions"
            body["messages"] = [{"role": "user", "content": "Continue: " + text}]
        else:
            path = "/v1/completions"
            body["prompt"] = text
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if kv_mode:
            body["kv_mode"] = kv_mode
        spec = {"path": path, "body": body, "stream": stream, "max_tokens": max_tokens}
        if rng.random() < args.disconnect_fraction:
            if stream:
                spec["hang_up_after_tokens"] = rng.randint(1, max(1, max_tokens - 1))
            else:
                spec["hang_up_after_s"] = rng.uniform(0.05, 2.0)
        specs.append(spec)
    return specs


def check(results):
    """Invariant violations, one line each."""
    problems = []
    for i, r in enumerate(results):
        s = r.spec
        if r.hung_up:
            continue
        tag = "request %d (%s, %s)" % (i, s["path"], "stream" if s["stream"] else "whole")
        if r.error or r.status != 200:
            problems.append("%s: status %s, error %s" % (tag, r.status, r.error))
            continue
        if r.finish_reason not in ("stop", "length"):
            problems.append("%s: finish_reason %r" % (tag, r.finish_reason))
        if not r.usage:
            problems.append("%s: no usage" % tag)
            continue
        u = r.usage
        if u["total_tokens"] != u["prompt_tokens"] + u["completion_tokens"]:
            problems.append("%s: usage does not add up: %s" % (tag, u))
        if r.finish_reason == "length" and u["completion_tokens"] != s["max_tokens"]:
            problems.append("%s: finish_reason length but completion_tokens %d != max_tokens %d"
                            % (tag, u["completion_tokens"], s["max_tokens"]))
        if u["completion_tokens"] > s["max_tokens"]:
            problems.append("%s: completion_tokens %d > max_tokens" % (tag, u["completion_tokens"]))
        if s["stream"] and r.token_chunks != u["completion_tokens"]:
            problems.append("%s: %d token chunks streamed, usage says %d"
                            % (tag, r.token_chunks, u["completion_tokens"]))
        if s["stream"] and r.t_end is None:
            problems.append("%s: no [DONE]" % tag)
    return problems


def settle(base_url, headers, timeout_s=30):
    """Waits for running = waiting = 0; returns the final metrics."""
    deadline = time.time() + timeout_s
    while True:
        m = serve_process.metrics(base_url, headers)
        if (m.get("batchmax_requests_running") == 0 and m.get("batchmax_requests_waiting") == 0) \
                or time.time() > deadline:
            return m
        time.sleep(0.1)


async def sample_gauges(base_url, headers, peaks, stop):
    """Largest batch and running count /metrics showed while the load ran."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            m = await loop.run_in_executor(None, serve_process.metrics, base_url, headers)
            for key in ("batchmax_batch_size", "batchmax_requests_running", "batchmax_requests_waiting",
                        "batchmax_kv_blocks_used"):
                peaks[key] = max(peaks.get(key, 0), m.get(key, 0))
        except RuntimeError:
            pass
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass


async def run_load(args, host, port, headers, kv_mode):
    rng = random.Random(args.seed)
    specs = make_specs(args, rng, kv_mode)
    sem = asyncio.Semaphore(args.concurrency or len(specs))

    async def bounded(spec):
        async with sem:
            return await run_one(host, port, spec, headers, args.timeout)

    peaks, stop = {}, asyncio.Event()
    sampler = asyncio.create_task(sample_gauges("http://%s:%d" % (host, port), headers, peaks, stop))
    t0 = time.perf_counter()
    results = await asyncio.gather(*(bounded(s) for s in specs))
    wall = time.perf_counter() - t0
    stop.set()
    await sampler
    return results, wall, peaks


def report(results, wall, server_metrics):
    done = [r for r in results if not r.hung_up and r.status == 200 and not r.error]
    ttft = [r.t_first - r.t_send for r in done if r.spec["stream"] and r.t_first]
    tpot = [(r.t_end - r.t_first) / (r.token_chunks - 1)
            for r in done if r.spec["stream"] and r.t_first and r.t_end and r.token_chunks > 1]
    out_tokens = sum(r.usage["completion_tokens"] for r in done if r.usage)
    prompt_tokens = sum(r.usage["prompt_tokens"] for r in done if r.usage)
    return {
        "requests": len(results),
        "completed": len(done),
        "hung_up": sum(r.hung_up for r in results),
        "failed": len(results) - len(done) - sum(r.hung_up for r in results),
        "streamed": sum(1 for r in results if r.spec["stream"]),
        "wall_s": wall,
        "requests_per_s": len(done) / wall,
        "output_tokens_per_s": out_tokens / wall,
        "prompt_tokens": prompt_tokens,
        "output_tokens": out_tokens,
        "ttft_s": summary(ttft),
        "tpot_s": summary(tpot),
        "server_after": {k: server_metrics.get(k) for k in (
            "batchmax_requests_running", "batchmax_requests_waiting", "batchmax_kv_blocks_used",
            "batchmax_kv_blocks_free", "batchmax_kv_blocks_total",
            'batchmax_requests_total{outcome="client_disconnected"}',
            'batchmax_requests_total{outcome="ok"}')},
    }


def range_arg(text):
    lo, _, hi = text.partition(",")
    lo, hi = int(lo), int(hi or lo)
    if lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError("expected MIN,MAX with 1 <= MIN <= MAX")
    return lo, hi


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (http://127.0.0.1:PORT); loopback only")
    ap.add_argument("--spawn", metavar="BINARY", help="start BINARY serve on a free port instead")
    ap.add_argument("--model", default=serve_process.default_model())
    ap.add_argument("--server-args", default="--threads 2 --max-batch 0",
                    help="extra arguments for the spawned server")
    ap.add_argument("--api-key")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=0, help="in flight at once (0: all)")
    ap.add_argument("--prompt-words", type=range_arg, default=(8, 120))
    ap.add_argument("--max-tokens", type=range_arg, default=(1, 24))
    ap.add_argument("--prompt-ids", type=range_arg, default=None,
                    help="token-id prompts of this many tokens (e.g. 3500,4096) instead of "
                         "words; for --dummy-weights servers, which have no tokenizer")
    ap.add_argument("--vocab", type=int, default=32000, help="ids below this for --prompt-ids")
    ap.add_argument("--stream-fraction", type=float, default=0.5)
    ap.add_argument("--chat-fraction", type=float, default=0.5)
    ap.add_argument("--disconnect-fraction", type=float, default=0.1)
    ap.add_argument("--modes", default="", help="e.g. full,batchmax: one run per kv_mode field")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per request")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if bool(args.url) == bool(args.spawn):
        ap.error("give exactly one of --url and --spawn")

    server = None
    if args.spawn:
        dummy = "--dummy-weights" in args.server_args
        if not dummy and not os.path.exists(args.model):
            print("server_load: SKIP: model not found at %s (run scripts/fetch_model.sh)" % args.model)
            return 77
        extra = ([] if dummy else ["--model", args.model]) + shlex.split(args.server_args)
        extra += ["--max-waiting", str(max(args.requests * 4, 256)), "--http-threads",
                  str(max(1024, args.requests * 2))]
        if args.api_key:
            extra += ["--api-key", args.api_key]
        server = serve_process.ServeProcess(args.spawn, extra)
        base = server.url()
    else:
        base = args.url.rstrip("/")
    host, port = base.split("//", 1)[1].split(":")
    port = int(port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        ap.error("the load test only talks to loopback servers")
    headers = {"Authorization": "Bearer " + args.api_key} if args.api_key else {}

    runs, failed = [], False
    try:
        for mode in (args.modes.split(",") if args.modes else [""]):
            results, wall, peaks = asyncio.run(run_load(args, host, port, headers, mode or None))
            m = settle(base, headers)
            rep = report(results, wall, m)
            rep["peaks_during_load"] = peaks
            rep["kv_mode"] = mode or "(server default)"
            problems = check(results)
            if m.get("batchmax_requests_running") != 0 or m.get("batchmax_requests_waiting") != 0:
                problems.append("after the load: running %s, waiting %s"
                                % (m.get("batchmax_requests_running"), m.get("batchmax_requests_waiting")))
            if m.get("batchmax_kv_blocks_used") != 0 or \
                    m.get("batchmax_kv_blocks_free") != m.get("batchmax_kv_blocks_total"):
                problems.append("after the load: KV blocks used %s, free %s of %s"
                                % (m.get("batchmax_kv_blocks_used"), m.get("batchmax_kv_blocks_free"),
                                   m.get("batchmax_kv_blocks_total")))
            if rep["completed"] + rep["hung_up"] != rep["requests"]:
                problems.append("%d of %d requests neither completed nor were hung up"
                                % (rep["requests"] - rep["completed"] - rep["hung_up"], rep["requests"]))
            rep["problems"] = problems
            failed |= bool(problems)
            runs.append(rep)
            t, p = rep["ttft_s"], rep["tpot_s"]
            fmt = lambda v: "-" if v is None else "%.3f" % v  # noqa: E731
            print("server_load: kv_mode %s: %d requests (%d streamed, %d hung up) in %.1fs: "
                  "%.2f req/s, %.1f output tok/s; TTFT p50/p90/p99 %s/%s/%s s; "
                  "TPOT p50/p90/p99 %s/%s/%s s; largest batch %d; %d problems"
                  % (rep["kv_mode"], rep["requests"], rep["streamed"], rep["hung_up"], rep["wall_s"],
                     rep["requests_per_s"], rep["output_tokens_per_s"], fmt(t["p50"]), fmt(t["p90"]),
                     fmt(t["p99"]), fmt(p["p50"]), fmt(p["p90"]), fmt(p["p99"]),
                     peaks.get("batchmax_batch_size", 0), len(problems)))
            for line in problems[:20]:
                print("  " + line)
    finally:
        if server is not None:
            code = server.terminate()
            if code != 0:
                print("server_load: the server exited with %s after SIGTERM" % code)
                failed = True
            server.close()

    if args.json_out:
        # COMMIT from the caller first: a device copy of the tree may carry a stale .git.
        commit = os.environ.get("COMMIT") or subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True,
            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        doc = {"command": " ".join(shlex.quote(a) for a in sys.argv),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "git_commit": commit, "machine": {"platform": platform.platform(),
                                                 "cpus": os.cpu_count()},
               "model": None if "--dummy-weights" in (args.server_args or "") else args.model,
               "server_args": args.server_args if args.spawn else None,
               "load": {k: getattr(args, k) for k in ("requests", "concurrency", "prompt_words", "prompt_ids",
                                                      "max_tokens", "stream_fraction", "chat_fraction",
                                                      "disconnect_fraction", "seed")},
               "runs": runs}
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
