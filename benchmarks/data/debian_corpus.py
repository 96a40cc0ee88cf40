"""Unlabeled in-domain English text for distillation: every Debian package description of bookworm main.

The debian-sections task (``debian-sections/``) labels 7578 of these descriptions with their archive section.
The other ~55k descriptions are what a user of that task would have at hand without labels: the teacher labels
them, and the student learns from the teacher's predictions (TinyBERT's and Beyer et al.'s point: distillation
needs inputs, not labels). Every description is cleaned exactly as the task's own rows were (the package's name
removed), and rows that repeat or nearly repeat a validation or test row of the task are dropped (TF-IDF cosine
above ``--max-similarity``), so no evaluation text is seen in training, even through a -data or -doc companion.

Source: ``/var/lib/apt/lists/*bookworm_main_i18n_Translation-en*`` (``apt-get update -o Acquire::Languages=en``
fetches it), the descriptions of packages in Debian main (DFSG-free).

Usage: python benchmarks/data/debian_corpus.py OUT.csv [--exclude debian-sections/validation.csv ...]
"""

from __future__ import annotations

import argparse
import csv
import glob
import gzip
import lzma
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASK = HERE / "debian-sections"
LISTS = "/var/lib/apt/lists"
INSTALL_HINT = (
    "no Debian Translation-en index found in /var/lib/apt/lists; on a Debian machine run "
    "`apt-get update -o Acquire::Languages=en` (it fetches the English package descriptions) and retry."
)


def translation_file() -> str | None:
    """The bookworm main Translation-en index apt keeps, or None."""
    found = sorted(glob.glob(os.path.join(LISTS, "*_main_i18n_Translation-en*")))
    found = [f for f in found if "security" not in f and "updates" not in f] or found
    return found[0] if found else None


def _read(path: str) -> str:
    if path.endswith(".lz4"):
        return subprocess.run(["lz4cat", path], check=True, capture_output=True).stdout.decode("utf-8", "replace")
    if path.endswith(".xz"):
        return lzma.open(path, "rt", encoding="utf-8", errors="replace").read()
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
    return open(path, encoding="utf-8", errors="replace").read()


def descriptions(path: str) -> list[tuple[str, str]]:
    """(package, long description) pairs of a Translation-en file."""
    out, name, desc = [], None, None
    for line in _read(path).splitlines() + [""]:
        if not line:
            if name and desc:
                out.append((name, desc))
            name, desc = None, None
        elif line.startswith("Package:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Description-en:"):
            desc = line.split(":", 1)[1].strip()
        elif line.startswith(" ") and desc is not None:
            desc += "\n" + line
    return out


def clean(desc: str, name: str) -> str:
    """The task's own cleaning (make_debian_task.py): one line, the package's name tokens removed."""
    lines = [line.strip() for line in desc.splitlines()]
    text = lines[0].rstrip(".") + ". " + " ".join(line for line in lines[1:] if line != ".")
    for s in sorted({name, *re.split(r"[-.+]", name)}, key=len, reverse=True):
        if len(s) >= 3:
            text = re.sub(r"\b" + re.escape(s) + r"\b", " ", text, flags=re.I)
    return re.sub(r"\s+", " ", text).strip()


def build(out: str | os.PathLike, exclude: list[str], max_similarity: float = 0.8, min_words: int = 8) -> int:
    """Write ``out`` (one column ``text``) and return its row count; see the module docstring."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    src = translation_file()
    if src is None:
        raise FileNotFoundError(INSTALL_HINT)
    seen, texts = set(), []
    for name, desc in descriptions(src):
        text = clean(desc, name)[:2000]
        key = text.lower()[:200]
        if len(text.split()) < min_words or key in seen:
            continue
        seen.add(key)
        texts.append(text)
    held = []
    for path in exclude:
        with open(path, newline="", encoding="utf-8") as f:
            held += [r["text"] for r in csv.DictReader(f)]
    vec = TfidfVectorizer(sublinear_tf=True, min_df=1).fit(texts + held)
    a, b = vec.transform(texts), vec.transform(held)
    top = np.zeros(len(texts))
    for i in range(0, len(texts), 4096):  # (4096, held) dense blocks keep memory small
        top[i : i + 4096] = (a[i : i + 4096] @ b.T).max(axis=1).toarray().ravel()
    kept = [t for t, s in zip(texts, top) if s <= max_similarity]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{out}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([t] for t in kept)
    os.replace(tmp, out)
    print(
        f"{src}: {len(texts)} distinct descriptions; {len(texts) - len(kept)} dropped as (near) copies of a held-out "
        f"row (cosine > {max_similarity}); {len(kept)} written to {out}",
        file=sys.stderr,
    )
    return len(kept)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--exclude", nargs="*", default=[str(TASK / "validation.csv"), str(TASK / "test.csv")])
    ap.add_argument("--max-similarity", type=float, default=0.8)
    a = ap.parse_args()
    try:
        build(a.out, a.exclude, a.max_similarity)
    except FileNotFoundError as e:
        print(f"debian_corpus: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
