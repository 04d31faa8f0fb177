#!/usr/bin/env python3
"""Streams a chat completion from a running `glm-flash serve` with the official `openai`
Python package, printing the thinking (stderr) and the answer (stdout) as they arrive.

    pip install openai
    glm-flash serve -m GLM-4.7-Flash-Q8_0.gguf          # or without -m: the built-in model
    python3 tools/openai_stream.py --prompt "Why is the sky blue?"

Exits with status 1 unless the stream brought text, a finish reason and the token usage,
so CI can run it against a server it started.
"""

import argparse
import sys

import openai


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    p.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
    p.add_argument("--prompt", default="Write a haiku about the sea.")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--no-think", action="store_true", help="ask for an answer without thinking")
    args = p.parse_args()

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = client.models.list().data[0].id
    extra = {"chat_template_kwargs": {"enable_thinking": False}} if args.no_think else {}
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": args.prompt}],
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    pieces, finish, usage = 0, None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            # reasoning_content is an extension field: the client keeps it as an extra.
            thinking = getattr(choice.delta, "reasoning_content", None)
            if thinking:
                pieces += 1
                sys.stderr.write(thinking)
                sys.stderr.flush()
            if choice.delta.content:
                pieces += 1
                sys.stdout.write(choice.delta.content)
                sys.stdout.flush()
            if choice.finish_reason is not None:
                finish = choice.finish_reason
    print()
    print(
        f"[model {model}: {pieces} pieces streamed, finish_reason {finish}, usage {usage}]",
        file=sys.stderr,
    )
    ok = pieces > 0 and finish is not None and usage is not None and usage.completion_tokens > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
