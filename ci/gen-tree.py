#!/usr/bin/env python3
"""Generates a synthetic build folder for measuring what a snapshot costs.

Usage: python3 ci/gen-tree.py DIR [FILES]   (FILES defaults to 10000)

Deterministic (fixed seed). The mix imitates a front-end build: pages of
HTML, JavaScript and CSS made of repeated identifiers and words (so they
compress like real code does, not like noise), JSON data, SVG icons,
content-hashed bundles (`chunk-1a2b3c4d.js`) and already-compressed images
(random bytes). Sizes follow a log-normal spread around a few KiB, capped at
512 KiB, spread over a few hundred nested directories.
"""
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


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    rng = random.Random(20240115)
    kinds = [("html", 35), ("js", 20), ("css", 10), ("json", 10), ("svg", 5), ("hashed", 10), ("png", 10)]
    population = [k for k, w in kinds for _ in range(w)]
    for i in range(count):
        directory = os.path.join(root, "d%02d" % (i % 37), "s%02d" % (i % 11))
        os.makedirs(directory, exist_ok=True)
        kind = rng.choice(population)
        size = min(int(rng.lognormvariate(8.3, 1.0)), 512 * 1024)
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
