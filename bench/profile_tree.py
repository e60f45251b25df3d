#!/usr/bin/env python3
"""Where the time under one function goes, from `perf script -F ip,sym` of a
recording with DWARF call graphs (bench/profile.sh --calls writes one).

Prints, for each ROOT given, the share of all samples whose stack holds it
(its first occurrence from the bottom, or the N-th with ROOT@N: the trigger's
statement is the second SPI_execute_plan of a call), then the callees below it
as a tree to DEPTH levels, each line a share of all samples. Frames of pgrx's
and Rust's plumbing (guards, closures, the sigsetjmp trampoline) and
PostgreSQL's unnamed static functions are skipped, so the tree shows the
named functions that do the work.

  bench/profile_tree.py perf.txt [--depth N] [--min PCT] ROOT[@N] ...
"""
import argparse
import collections

PLUMBING = ("[unknown]", "run_guarded", "call_with_sigsetjmp", "call_from_c_to_rust", "{{closure}}",
            "pgrx::", "pgrx_pg_sys::", "core::", "std::", "cee_scape", "__rust", "FnOnce", "(inlined)")


def stacks(path):
    """Each sample's stack, outermost frame first."""
    current = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                if current:
                    yield current[::-1]
                current = []
                continue
            parts = line.split(None, 1)
            current.append(parts[1] if len(parts) > 1 else "?")
    if current:
        yield current[::-1]


def named(frame):
    return frame != "?" and not any(p in frame for p in PLUMBING)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("perf_script")
    ap.add_argument("roots", nargs="+")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--min", type=float, default=0.5, help="hide lines under this share (%%)")
    opt = ap.parse_args()
    samples = list(stacks(opt.perf_script))
    total = len(samples) or 1
    print(f"{len(samples)} samples")
    for spec in opt.roots:
        root, _, nth = spec.partition("@")
        nth = int(nth or 1) - 1
        under = collections.Counter()
        holding = 0
        for stack in samples:
            hits = [i for i, f in enumerate(stack) if root in f]
            if len(hits) <= nth:
                continue
            holding += 1
            below = [f for f in stack[hits[nth] + 1:] if named(f)][:opt.depth]
            for d in range(1, len(below) + 1):
                under[tuple(below[:d])] += 1
        print(f"\n{100 * holding / total:5.1f}% {spec}")
        for path in sorted(under):
            share = 100 * under[path] / total
            if share >= opt.min:
                print(f"{'  ' * len(path)}{share:5.1f}% {path[-1][:80]}")


if __name__ == "__main__":
    main()
