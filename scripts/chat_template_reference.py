#!/usr/bin/env python3
"""Renders chat templates the way Hugging Face transformers does (apply_chat_template):
a sandboxed Jinja2 environment with trim_blocks and lstrip_blocks, raise_exception, and
tojson as json.dumps(ensure_ascii=False). The engine's tests compare its rendering with
this one.

stdin: {"template": str, "bos_token": str, "eos_token": str,
        "cases": [{"messages": [...], "add_generation_prompt": bool}, ...]}
stdout: [{"text": str} | {"refused": str} | {"error": str}, ...]  (refused: the
        template's raise_exception; error: anything else, e.g. an undefined value)
"""
import json
import sys

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class Refused(TemplateError):
    """The template's own raise_exception."""


def raise_exception(message):
    raise Refused(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def main():
    job = json.load(sys.stdin)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(job["template"])
    out = []
    for case in job["cases"]:
        try:
            text = template.render(messages=case["messages"], add_generation_prompt=case["add_generation_prompt"],
                                   bos_token=job["bos_token"], eos_token=job["eos_token"])
            out.append({"text": text})
        except Refused as e:
            out.append({"refused": str(e)})
        except TemplateError as e:
            out.append({"error": str(e)})
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
