#!/usr/bin/env python3
"""`batchmax serve` through the official `openai` Python package.

Run by ctest (ServerOpenAIClient): python3 test_openai_client.py --binary build/batchmax
Exit status 77 (ctest: skipped) when the openai package or the model is missing.
"""
import argparse
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "bench"))
import serve_process  # noqa: E402

SKIP = 77
KEY = "sk-openai-client-test"
BINARY = None
MODEL = serve_process.default_model()

try:
    import openai
except ImportError:  # reported in main()
    openai = None


class OpenAIClient(unittest.TestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = serve_process.ServeProcess(
            BINARY, ["--model", MODEL, "--threads", "2", "--ctx", "512", "--kv-mem", "64MiB",
                     "--api-key", KEY, "--max-body-bytes", "32KiB", "--served-model-name", "smol"])
        cls.client = openai.OpenAI(base_url=cls.server.url("/v1"), api_key=KEY, max_retries=0,
                                   timeout=120)

    @classmethod
    def tearDownClass(cls):
        if cls.server:
            code = cls.server.terminate()
            cls.server.close()
            assert code == 0, "server exited with %s after SIGTERM" % code

    def assert_healthy(self):
        self.assertEqual(serve_process.http_get(self.server.url("/health"))[0], 200)

    def test_models(self):
        ids = [m.id for m in self.client.models.list()]
        self.assertEqual(ids, ["smol"])

    def test_chat(self):
        r = self.client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8,
            temperature=0)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertIsInstance(r.choices[0].message.content, str)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        u = r.usage
        self.assertEqual(u.total_tokens, u.prompt_tokens + u.completion_tokens)
        if r.choices[0].finish_reason == "length":
            self.assertEqual(u.completion_tokens, 8)

    def test_chat_stream_equals_whole(self):
        kwargs = dict(model="smol", messages=[{"role": "user", "content": "List two fruits."}],
                      max_completion_tokens=10, temperature=0)
        whole = self.client.chat.completions.create(**kwargs)
        chunks = list(self.client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, [whole.choices[0].finish_reason])
        self.assertIsNotNone(chunks[-1].usage)
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_completion_stream_with_logprobs(self):
        chunks = list(self.client.completions.create(
            model="smol", prompt="The sky is", max_tokens=5, temperature=0, logprobs=2,
            stream=True))
        token_chunks = [c for c in chunks if c.choices[0].finish_reason is None]
        self.assertGreaterEqual(len(token_chunks), 1)
        for c in token_chunks:
            lp = c.choices[0].logprobs
            self.assertEqual(len(lp.tokens), 1)
            self.assertLessEqual(lp.token_logprobs[0], 0.0)
            self.assertEqual(len(lp.top_logprobs[0]), 2)

    def test_chat_logprobs(self):
        r = self.client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Hello"}], max_tokens=4,
            temperature=0, logprobs=True, top_logprobs=2)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        for t in content:
            self.assertEqual(len(t.top_logprobs), 2)
            self.assertEqual(t.token, t.top_logprobs[0].token)  # greedy: the most likely

    def test_completion_stop_and_n(self):
        free = self.client.completions.create(model="smol", prompt="1, 2, 3,", max_tokens=12,
                                              temperature=0)
        text = free.choices[0].text
        if "," in text:
            r = self.client.completions.create(model="smol", prompt="1, 2, 3,", max_tokens=12,
                                               temperature=0, stop=[","])
            self.assertEqual(r.choices[0].text, text[:text.find(",")])
            self.assertEqual(r.choices[0].finish_reason, "stop")
        r = self.client.completions.create(model="smol", prompt="A word:", max_tokens=4, n=2,
                                           temperature=1.0, seed=3)
        self.assertEqual(sorted(c.index for c in r.choices), [0, 1])
        self.assertLessEqual(r.usage.completion_tokens, 8)

    def test_compression_fields_via_extra_body(self):
        r = self.client.completions.create(
            model="smol", prompt="Once upon a time", max_tokens=4, temperature=0,
            extra_body={"kv_mode": "batchmax", "kv_policy": "tova", "kv_budget": 64, "kv_chunk": 32})
        self.assertEqual(r.usage.completion_tokens <= 4, True)
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.completions.create(model="smol", prompt="x", max_tokens=2,
                                           extra_body={"kv_mode": "zip"})
        self.assertEqual(cm.exception.body["param"], "kv_mode")

    def test_errors_are_openai_errors(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.chat.completions.create(model="smol", messages=[], max_tokens=2)
        self.assertEqual(cm.exception.status_code, 400)
        self.assertEqual(cm.exception.body["param"], "messages")
        self.assert_healthy()
        with self.assertRaises(openai.NotFoundError) as cm:
            self.client.completions.create(model="gpt-nope", prompt="x", max_tokens=2)
        self.assertEqual(cm.exception.body["code"], "model_not_found")
        self.assert_healthy()
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.completions.create(model="smol", prompt="x", max_tokens=-3)
        self.assert_healthy()
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.completions.create(model="smol", prompt="word " * 600, max_tokens=2)
        self.assertEqual(cm.exception.body["code"], "context_length_exceeded")
        self.assertIn("512", cm.exception.body["message"])
        with self.assertRaises(openai.APIStatusError) as cm:
            self.client.completions.create(model="smol", prompt="a" * 40000, max_tokens=2)
        self.assertEqual(cm.exception.status_code, 413)
        self.assert_healthy()
        wrong = openai.OpenAI(base_url=self.server.url("/v1"), api_key="sk-wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError) as cm:
            wrong.completions.create(model="smol", prompt="x", max_tokens=2)
        self.assertEqual(cm.exception.status_code, 401)
        with self.assertRaises(openai.AuthenticationError):
            wrong.models.list()
        self.assert_healthy()


def main():
    global BINARY, MODEL
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--model", default=MODEL)
    args, rest = ap.parse_known_args()
    BINARY, MODEL = args.binary, args.model
    if openai is None:
        print("SKIP: the openai package is not installed (pip install openai; scripts/setup.sh does)")
        return SKIP
    if not os.path.exists(MODEL):
        print("SKIP: model not found at %s (run scripts/fetch_model.sh)" % MODEL)
        return SKIP
    prog = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
