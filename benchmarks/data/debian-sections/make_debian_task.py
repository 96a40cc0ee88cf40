"""Build a real text-classification task from Debian's package index: long description -> archive section.

Real text written by Debian maintainers. The package's own name tokens are removed from its text, and near-copies
(-data, -dev, -doc, -common ... companions) are dropped, so the section must be read from what the package does.
Input: the decompressed Packages and Translation-en files of one Debian release (bookworm main, amd64).
Usage: python3 make_debian_task.py PACKAGES TRANSLATION_EN OUT [--per-class N]
"""
import argparse
import csv
import os
import random
import re
from collections import defaultdict

SECTIONS = ["games", "sound", "graphics", "science", "net", "math", "text", "admin", "web", "database",
            "editors", "mail", "video", "electronics", "hamradio", "fonts", "x11", "utils", "python", "perl"]
SKIP = ("-dbg", "-dbgsym", "-doc", "-data", "-dev", "-common", "-examples", "-tests", "-plugins", "-l10n")

def stanzas(path):
    block = {}
    key = None
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            if block: yield block
            block, key = {}, None
        elif line.startswith(" ") and key:
            block[key] += "\n" + line
        elif ":" in line:
            key, _, val = line.partition(":"); block[key] = val.strip()
    if block: yield block

def clean(desc, name):
    lines = [l.strip() for l in desc.splitlines()]
    text = lines[0].rstrip(".") + ". " + " ".join(l for l in lines[1:] if l != ".")
    for s in sorted({name, *re.split(r"[-.+]", name)}, key=len, reverse=True):
        if len(s) >= 3:
            text = re.sub(r"\b" + re.escape(s) + r"\b", " ", text, flags=re.I)
    return re.sub(r"\s+", " ", text).strip()

def main():
    ap = argparse.ArgumentParser(); ap.add_argument("packages"); ap.add_argument("translation"); ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=600)
    a = ap.parse_args()
    long = {(s["Package"], s.get("Description-md5")): s["Description-en"] for s in stanzas(a.translation) if "Description-en" in s}
    by, seen = defaultdict(list), set()
    for p in stanzas(a.packages):
        name, sec = p.get("Package", ""), p.get("Section", "").split("/")[-1]
        if sec not in SECTIONS or name.endswith(SKIP) or name.startswith(("lib", "python3-", "libperl", "fonts-", "golang-")):
            continue
        desc = long.get((name, p.get("Description-md5")))
        if not desc:
            continue
        text = clean(desc, name)
        key = text.lower()[:200]
        if len(text.split()) < 12 or key in seen:
            continue
        seen.add(key); by[sec].append(text[:2000])
    rnd = random.Random(0); rows = []
    kept = [s for s in SECTIONS if len(by[s]) >= 150]
    for sec in kept:
        items = sorted(by[sec]); rnd.shuffle(items); rows += [(t, sec) for t in items[: a.per_class]]
    rnd.shuffle(rows); n = len(rows)
    cut = {"train": rows[: int(.8 * n)], "validation": rows[int(.8 * n): int(.9 * n)], "test": rows[int(.9 * n):]}
    os.makedirs(a.out, exist_ok=True)
    for split, rs in cut.items():
        with open(os.path.join(a.out, f"{split}.csv"), "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f); w.writerow(["text", "label"]); w.writerows(rs)
    print(f"{n} rows, {len(kept)} classes -> {a.out}: " + ", ".join(f"{s} {min(len(by[s]), a.per_class)}" for s in kept))

if __name__ == "__main__":
    main()
