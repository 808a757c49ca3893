#!/usr/bin/env python3
"""Joins effnet's and a peer's JSON-lines benchmark output into a Markdown table.

  cargo run --release -- bench ops --json > effnet.jsonl
  python3 benches/peers/torch_conv.py > torch.jsonl
  python3 benches/compare.py effnet.jsonl torch.jsonl > table.md

Rows are matched on (name, pass). The speedup is peer ms / effnet ms. Families are the
name's prefix before the first '_' (dw, g16, pw, stem, or the part after ':' for norm
rows); each family and pass gets a geometric mean and a minimum. Standard library only.
"""
import json, math, sys
from collections import defaultdict

def load(path):
    rows = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        rows[(r["name"], r["pass"])] = r
    return rows

def family(name):
    if ":" in name:
        return name.split(":", 1)[1]
    return name.split("_", 1)[0]

def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ours, peer = load(sys.argv[1]), load(sys.argv[2])
    print("| layer | pass | effnet ms | effnet GFLOP/s | peer ms | peer GFLOP/s | speedup |")
    print("|---|---|---:|---:|---:|---:|---:|")
    groups = defaultdict(list)
    for key in sorted(ours, key=lambda k: (family(k[0]), k[1], k[0])):
        if key not in peer:
            continue
        a, b = ours[key], peer[key]
        ratio = b["ms"] / a["ms"]
        groups[(family(key[0]), key[1])].append(ratio)
        print(f"| {key[0]} | {key[1]} | {a['ms']:.3f} | {a.get('gflops', 0):.1f} | {b['ms']:.3f} | {b.get('gflops', 0):.1f} | {ratio:.2f}× |")
    print()
    print("| family | pass | rows | geometric mean | min |")
    print("|---|---|---:|---:|---:|")
    for (fam, pas), rs in sorted(groups.items()):
        g = math.exp(sum(math.log(r) for r in rs) / len(rs))
        print(f"| {fam} | {pas} | {len(rs)} | {g:.2f}× | {min(rs):.2f}× |")

if __name__ == "__main__":
    main()
