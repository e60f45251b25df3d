#!/usr/bin/env python3
"""What a pinned search_path costs the write path: the same workloads with
the 0.3.0 configuration (`SET search_path = pg_catalog, pg_temp` on the
insert trigger and append_suspension_event) and with 0.4.0's (no pin, every
name qualified), alternating in one run on the bench database that
`bench/bench.py` left (make bench). The configuration is restored at the
end. Not part of make bench: it alters the extension's functions.

    PGHOST=... PGPORT=... PGUSER=... python3 bench/ablation_search_path.py
"""
import statistics

import bench as B

PIN = ("ALTER FUNCTION workflow_ext.events_before_insert() SET search_path = pg_catalog, pg_temp; "
       "ALTER FUNCTION workflow_ext.append_suspension_event(text, text, text, jsonb) "
       "SET search_path = pg_catalog, pg_temp")
UNPIN = ("ALTER FUNCTION workflow_ext.events_before_insert() RESET search_path; "
         "ALTER FUNCTION workflow_ext.append_suspension_event(text, text, text, jsonb) RESET search_path")
WORKLOADS = {
    "append_suspension_event, new key": B.suspension_script("abl"),
    "plain INSERT through the trigger": B.draw(1000, B.KEYS)
    + "INSERT INTO workflow_ext.events (run_id, correlation_id, type) VALUES ('run-' || :r, 'ablins_' || :k, 'step_created');\n",
}


def main():
    secs, rounds = 5, 3
    try:
        for name, script in WORKLOADS.items():
            raw = B.draw(1000, B.KEYS) + B.raw_insert_sql("ablraw") + ";\n"
            tps = {"pinned": [], "unpinned": [], "raw": []}
            for _ in range(rounds):
                B.psql(PIN)
                tps["pinned"].append(B.pgbench(script, 1, secs)[0])
                B.psql(UNPIN)
                tps["unpinned"].append(B.pgbench(script, 1, secs)[0])
                tps["raw"].append(B.pgbench(raw, 1, secs)[0])
            m = {k: statistics.median(v) for k, v in tps.items()}
            print(f"{name}, 1 client: pinned {m['pinned']:,.0f} tps ({m['pinned'] / m['raw']:.2f} of raw), "
                  f"unpinned {m['unpinned']:,.0f} tps ({m['unpinned'] / m['raw']:.2f} of raw): "
                  f"unpinned/pinned = {m['unpinned'] / m['pinned']:.2f}", flush=True)
    finally:
        B.psql(UNPIN)


if __name__ == "__main__":
    main()
