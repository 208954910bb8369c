"""The server through the official `openai` Python client: models, completions and chat (plain and
streamed), usage with cached tokens, errors as the client's exception types, and the chunk API.
Usage: python3 test_openai_client.py --binary build/cascade"""
import sys

import openai

from serve_util import Served, binary_from_args

MODEL = "cascade-test"
KEY = "test-key"


def main():
    binary = binary_from_args(sys.argv)
    args = ["--device", "cpu", "--max-model-len", "1024", "--served-model-name", MODEL]
    with Served(binary, *args, api_key=KEY) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0)

        assert [m.id for m in client.models.list().data] == [MODEL]

        # Completions: plain and streamed agree (greedy).
        prompt = "Shared system prompt. " * 3 + "Question one?"
        c = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
        assert c.object == "text_completion" and len(c.choices) == 1
        assert c.usage.prompt_tokens == len(prompt.encode()), c.usage  # byte-level tokenizer
        assert c.usage.completion_tokens == c.usage.total_tokens - c.usage.prompt_tokens
        pieces, finish = [], None
        for chunk in client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0,
                                               stream=True):
            pieces.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        assert "".join(pieces) == c.choices[0].text, (pieces, c.choices[0].text)
        assert finish == c.choices[0].finish_reason

        # The same prompt again: its full pages come from the cache.
        again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
        cached = again.usage.prompt_tokens_details.cached_tokens
        assert 16 <= cached < again.usage.prompt_tokens, again.usage

        # Chat, with the thinking switch; streamed with usage.
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]
        kw = {"chat_template_kwargs": {"enable_thinking": False}}
        r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0, extra_body=kw)
        assert r.choices[0].message.role == "assistant"
        text, usage = "", None
        for chunk in client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0,
                                                    extra_body=kw, stream=True,
                                                    stream_options={"include_usage": True}):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert text == r.choices[0].message.content, (text, r.choices[0].message.content)
        assert usage is not None and usage.prompt_tokens == r.usage.prompt_tokens
        assert usage.prompt_tokens_details.cached_tokens > 0  # the same chat prompt again
        thinking = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1, temperature=0)
        assert thinking.usage.prompt_tokens < r.usage.prompt_tokens  # no empty think block appended

        # n > 1.
        many = client.completions.create(model=MODEL, prompt="abc", max_tokens=3, n=3, seed=5)
        assert sorted(ch.index for ch in many.choices) == [0, 1, 2]

        # Errors arrive as the client's exception types.
        for call, exc in [
            (lambda: client.completions.create(model=MODEL, prompt="x", max_tokens=0), openai.BadRequestError),
            (lambda: client.completions.create(model=MODEL, prompt="x" * 2000), openai.BadRequestError),
            (lambda: client.completions.create(model="nope", prompt="x"), openai.NotFoundError),
            (lambda: openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list(),
             openai.AuthenticationError),
        ]:
            try:
                call()
            except exc as e:
                assert isinstance(e.body, dict) and e.body.get("message"), e.body
            else:
                raise AssertionError(f"expected {exc.__name__}")

        # Chunk API and composition (plain HTTP: `segments` replaces `prompt`).
        status, chunk = srv.request("POST", "/v1/chunks", {"kind": "system", "text": "You are terse."})
        assert status == 200, chunk
        body = {"model": MODEL, "max_tokens": 3, "segments": [{"kind": "system", "chunk_id": chunk["id"]},
                                                              {"kind": "query", "text": "Why?"}]}
        status, out = srv.request("POST", "/v1/completions", body)
        assert status == 200, out
        status, out = srv.request("POST", "/v1/completions", body)
        assert out["usage"]["prompt_tokens_details"]["cached_tokens"] >= chunk["num_tokens"], out
        status, _ = srv.request("DELETE", "/v1/chunks/" + chunk["id"])
        assert status == 200
        status, err = srv.request("POST", "/v1/completions", body)
        assert status == 404 and chunk["id"] in err["error"]["message"], err
        srv.wait_idle()
    print("test_openai_client: OK")


if __name__ == "__main__":
    main()
