#!/usr/bin/env python3
"""Regenerates src/spend/prices.json, h3gate's bundled price table.

The prices come from the price map that ships inside the `litellm` package
on PyPI (litellm/model_prices_and_context_window_backup.json), not from
memory: the file names the package version and its release date.

Usage (from the repository root; needs python3 and pip, nothing else):

    python3 scripts/update-prices.py                     # the latest litellm
    python3 scripts/update-prices.py --version 1.110.2   # a given release
    python3 scripts/update-prices.py --wheel /tmp/litellm-1.110.2-....whl

It downloads the wheel with `pip download litellm==VERSION --no-deps` into a
temporary folder (or reads the one given with --wheel), reads the price map
from it, asks the package index (the one pip uses, PEP 691/700 JSON) when
that file was uploaded, and writes src/spend/prices.json (--out to write
elsewhere). Run `cargo test --lib spend::prices` afterwards: the test there
checks a few models against the map.

What is kept: the models of the OpenAI (litellm_provider "openai", and
"text-completion-openai" for the legacy completions models) and Anthropic
("anthropic") APIs in the modes h3gate serves (chat, completion, responses,
embedding) that have per-token input and output prices, under the names the
providers use (a litellm prefix such as "openai/" is dropped; an unprefixed
entry wins over a prefixed one). Fine-tune templates ("ft:...") are left
out. Prices are USD per million tokens: input_cost_per_token x 1e6;
cached_input from cache_read_input_token_cost and cache_write from
cache_creation_input_token_cost, each the input price when absent. The
output is sorted and stable: the same map gives the same file.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from decimal import Decimal

PRICE_MAP = "litellm/model_prices_and_context_window_backup.json"
PROVIDERS = {
    "openai": "openai/",
    "text-completion-openai": "openai/",
    "anthropic": "anthropic/",
}
MODES = {"chat", "completion", "responses", "embedding"}
INDEX = "https://pypi.org/simple/litellm/"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def per_million(cost):
    """USD per token -> USD per million tokens, without binary noise
    (2.5e-06 is 2.5, not 2.4999999999999996)."""
    return float(Decimal(repr(float(cost))) * 1_000_000)


def download(version, into):
    spec = f"litellm=={version}" if version else "litellm"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", spec, "--no-deps",
         "--only-binary", ":all:", "-d", into, "--quiet"],
        check=True,
    )
    wheels = sorted(glob.glob(os.path.join(into, "litellm-*.whl")))
    if not wheels:
        sys.exit("update-prices: pip downloaded no litellm wheel")
    return wheels[-1]


def version_of(wheel):
    # litellm-1.110.2-cp310-abi3-manylinux_2_28_x86_64.whl
    return os.path.basename(wheel).split("-")[1]


def release_date(wheel):
    """The upload date of this very file, from the package index."""
    req = urllib.request.Request(
        INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    name = os.path.basename(wheel)
    for f in files:
        if f.get("filename") == name and f.get("upload-time"):
            return f["upload-time"][:10]
    sys.exit(f"update-prices: the index does not list {name} with an upload time")


def select(price_map):
    models = {}
    prefixed = {}
    for name, entry in price_map.items():
        if not isinstance(entry, dict):
            continue
        prefix = PROVIDERS.get(entry.get("litellm_provider"))
        if prefix is None or entry.get("mode") not in MODES:
            continue
        if name.startswith("ft:"):
            continue
        inp = entry.get("input_cost_per_token")
        out = entry.get("output_cost_per_token")
        if not isinstance(inp, (int, float)) or not isinstance(out, (int, float)):
            continue
        cached = entry.get("cache_read_input_token_cost", inp)
        write = entry.get("cache_creation_input_token_cost", inp)
        price = {
            "input": per_million(inp),
            "output": per_million(out),
            "cached_input": per_million(cached if cached is not None else inp),
            "cache_write": per_million(write if write is not None else inp),
        }
        if name.startswith(prefix):
            prefixed[name[len(prefix):]] = price
        else:
            models[name] = price
    for name, price in prefixed.items():
        models.setdefault(name, price)
    return dict(sorted(models.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--version", help="the litellm release (default: the latest)")
    ap.add_argument("--wheel", help="a litellm wheel already downloaded")
    ap.add_argument("--out", default=os.path.join(ROOT, "src", "spend", "prices.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download(args.version, tmp)
        with zipfile.ZipFile(wheel) as z:
            price_map = json.loads(z.read(PRICE_MAP))
        version = version_of(wheel)
        date = release_date(wheel)
    models = select(price_map)
    if len(models) < 30:
        sys.exit(f"update-prices: only {len(models)} models selected; has the map changed shape?")
    table = {
        "source": f"litellm {version} (PyPI, released {date}): {PRICE_MAP}",
        "models": models,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(table, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"update-prices: {len(models)} models from litellm {version} ({date}) -> {args.out}")


if __name__ == "__main__":
    main()
