"""The pictures of `make bench` (matplotlib, Debian's python3-matplotlib):
throughput against clients for the raw insert, the floors and each
append path; replay time against events (log-log: a straight line of slope
1 is linear); events/s against batch size. Called by bench/bench.py with
what it measured; returns the paths written."""
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "raw_insert": "raw INSERT … ON CONFLICT (no guarantees)",
    "lock_floor": "row-lock floor (FOR UPDATE + max(seq))",
    "advisory_floor": "advisory-lock floor (xact lock + max(seq))",
    "floor": "dense-seq floor (run row bumped in the insert)",
    "fn_insert": "raw INSERT inside a PL/pgSQL function",
    "fn_floor": "dense-seq floor inside a PL/pgSQL function",
    "fn_trig_floor": "trigger floor inside a PL/pgSQL function (the row trigger bumps)",
    "append_suspension": "append_suspension_event",
    "append_event": "append_event (step_created)",
}


def draw(series, out_dir):
    written = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    sweep = series.get("sweep") or {}
    if sweep:
        clients = sorted(sweep)
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for key, label in LABELS.items():
            if all(key in sweep[c] for c in clients):
                ax.plot(clients, [sweep[c][key] for c in clients], marker="o", label=label)
        ax.set_xlabel("clients (pgbench, 2 cores)")
        ax.set_ylabel("appends per second (one per transaction)")
        ax.set_xticks(clients)
        ax.set_ylim(bottom=0)
        ax.set_title("New-key appends: throughput against clients")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "BENCHMARKS-throughput.png")

    replay = series.get("replay") or []
    if replay:
        replay = sorted(replay, key=lambda r: r["events"])
        n = [r["events"] for r in replay]
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        ax.loglog(n, [r["replay_s"] * 1000 for r in replay], marker="o", label="workflow_ext.replay")
        ax.loglog(n, [r["ordered_read_s"] * 1000 for r in replay], marker="s",
                  label="ordered read of the same columns (deformed), as planned")
        if all("ordered_read_index_s" in r for r in replay):
            ax.loglog(n, [r["ordered_read_index_s"] * 1000 for r in replay], marker="^",
                      label="the same read in primary-key order")
        # A line of slope 1 through the first replay point: linear growth.
        ax.loglog(n, [replay[0]["replay_s"] * 1000 * x / n[0] for x in n], ls=":", color="grey",
                  label="linear (slope 1)")
        ax.set_xlabel("events in the run")
        ax.set_ylabel("time per call (ms)")
        ax.set_title("Replay time against run length (log-log)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        save(fig, "BENCHMARKS-replay.png")

    batch = series.get("batch") or []
    if batch:
        batch = sorted(batch, key=lambda r: r["size"])
        sizes = [r["size"] for r in batch]
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for key, label in (("batch_call", "one append_suspension_events call"),
                           ("single_calls_one_tx", "single calls, one transaction"),
                           ("single_calls_own_tx", "single calls, a transaction each")):
            ax.plot(sizes, [r[key] for r in batch], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.set_xlabel("creations per suspension (batch size), 1 client")
        ax.set_ylabel("events per second")
        ax.set_ylim(bottom=0)
        ax.set_title("Batch creation: events/s against batch size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "BENCHMARKS-batch.png")
    return written
