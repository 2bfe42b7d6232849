#!/usr/bin/env python3
"""Generates a synthetic build folder for measuring what a snapshot costs.

Usage: python3 ci/gen-tree.py DIR [FILES] [--mean-bytes N]   (FILES defaults to 10000)
       python3 ci/gen-tree.py DIR --large GIB  (one GIB GiB file and an index page)

Deterministic (fixed seed). The mix imitates a front-end build: pages of
HTML, JavaScript and CSS made of repeated identifiers and words (so they
compress like real code does, not like noise), JSON data, SVG icons,
content-hashed bundles (`chunk-1a2b3c4d.js`) and already-compressed images
(random bytes). Sizes follow a log-normal spread around a few KiB, capped at
512 KiB, spread over a few hundred nested directories. `--mean-bytes N`
centres the spread on a mean of about N bytes instead (`--mean-bytes 1470`
for 50,000 files: the issue's 73.5 MB tree of small files).
"""
import math
import os
import random
import sys

WORDS = (
    "function return const let var if else for while import export default "
    "class extends new this async await props state render component value "
    "data item items index length map filter reduce push update config options "
    "module require window document element style display flex margin padding "
    "color background border width height position absolute relative none auto "
    "the a of to and in is that for with as on by this be are from or an at"
).split()


def text(rng, size, kind):
    parts = []
    total = 0
    while total < size:
        if kind == "html":
            line = "<p class=\"%s\">%s</p>\n" % (
                rng.choice(WORDS),
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20))),
            )
        elif kind == "css":
            line = ".%s-%d { %s: %dpx; %s: %s; }\n" % (
                rng.choice(WORDS), rng.randint(0, 99), rng.choice(WORDS),
                rng.randint(0, 64), rng.choice(WORDS), rng.choice(WORDS),
            )
        elif kind == "json":
            line = '{"id": %d, "%s": "%s", "%s": %d},\n' % (
                rng.randint(0, 10**6), rng.choice(WORDS), rng.choice(WORDS),
                rng.choice(WORDS), rng.randint(0, 1000),
            )
        else:  # js
            line = "%s %s%d(%s) { return %s.%s(%d); }\n" % (
                rng.choice(WORDS), rng.choice(WORDS), rng.randint(0, 999),
                rng.choice(WORDS), rng.choice(WORDS), rng.choice(WORDS), rng.randint(0, 99),
            )
        parts.append(line)
        total += len(line)
    return "".join(parts)[:size].encode()


def large(root, gib):
    """One large file of incompressible bytes, written out (not sparse: a
    sparse file would be read from no disk at all), and a small page."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write("<!doctype html><title>large</title><a href=large.bin>large.bin</a>\n")
    rng = random.Random(20240115)
    block = rng.randbytes(1 << 20)
    with open(os.path.join(root, "large.bin"), "wb") as f:
        for i in range(int(gib * 1024)):
            # Each MiB differs, so no layer can deduplicate it.
            f.write(i.to_bytes(8, "little") + block[8:])


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    if len(sys.argv) > 3 and sys.argv[2] == "--large":
        large(root, float(sys.argv[3]))
        return
    args = sys.argv[2:]
    mu = 8.3
    if "--mean-bytes" in args:
        at = args.index("--mean-bytes")
        # The mean of a log-normal is exp(mu + sigma^2 / 2), sigma = 1.
        mu = math.log(float(args[at + 1])) - 0.5
        del args[at:at + 2]
    count = int(args[0]) if args else 10000
    rng = random.Random(20240115)
    kinds = [("html", 35), ("js", 20), ("css", 10), ("json", 10), ("svg", 5), ("hashed", 10), ("png", 10)]
    population = [k for k, w in kinds for _ in range(w)]
    for i in range(count):
        directory = os.path.join(root, "d%02d" % (i % 37), "s%02d" % (i % 11))
        os.makedirs(directory, exist_ok=True)
        kind = rng.choice(population)
        size = min(int(rng.lognormvariate(mu, 1.0)), 512 * 1024)
        if kind == "png":
            name, data = "img%05d.png" % i, rng.randbytes(size)
        elif kind == "svg":
            body = "".join('<circle cx="%d" cy="%d" r="%d"/>' % (rng.randint(0, 99), rng.randint(0, 99), rng.randint(1, 9))
                           for _ in range(max(1, size // 40)))
            name, data = "icon%05d.svg" % i, ('<svg xmlns="http://www.w3.org/2000/svg">%s</svg>' % body).encode()
        elif kind == "hashed":
            name, data = "chunk-%08x.js" % rng.getrandbits(32), text(rng, size, "js")
        else:
            extension = {"html": "html", "js": "js", "css": "css", "json": "json"}[kind]
            name, data = "%s%05d.%s" % (kind, i, extension), text(rng, size, kind)
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
