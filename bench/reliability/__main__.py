"""Reliability suite (issue 15): every check runs real processes on 127.0.0.1, bounded in count
and time, and reports whether its claim holds, with the numbers.

    R1  >= N generated requests per endpoint (schemathesis + hand-made hostile bodies): 0 x 5xx
    R2  10 x kill -9 of the learner under a live producer: 0 lost, 0 twice; restart-to-ready time
    R3  Redis restarts (AOF on, AOF off, the private redis-server) under producer and learner
    R4  64 clients x 60 s on /score and /grad: 0 errors, p50/p99, RSS before/after
    R5  401 on every non-health route with a missing and a wrong token
    R6  no deserialisation of network data that can run code (static scan + a pickle bomb)
    R7  slow/idle clients and memory amplification bounded (peak RSS under a stated bound)

    python -m bench.reliability [--quick] [--only R1,R5]      (full: ~25 min on 2 cores)

Prints a table and writes bench/results/reliability.json (--quick: reliability-quick.json; --only
adds the subset to the name, so a partial run never replaces the full one).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import traceback
from pathlib import Path

from ..common import print_table, write_json
from .crash import r2_kill_learner, r3_redis_restarts
from .fuzz import r1_fuzz, r5_auth, r6_no_code_from_data
from .load import r4_load, r7_slow_clients_and_amplification

FULL = {"per_endpoint": 1000, "kills": 10, "redis_kills": 3, "outage_s": 5.0, "clients": 64, "seconds": 60.0,
        "idle": 2000, "r7_seconds": 30.0}
QUICK = {"per_endpoint": 100, "kills": 2, "redis_kills": 1, "outage_s": 4.0, "clients": 16, "seconds": 10.0,
         "idle": 300, "r7_seconds": 10.0}


def checks(p: dict) -> dict:
    return {
        "R1": lambda tmp: r1_fuzz(tmp, p["per_endpoint"]),
        "R2": lambda tmp: r2_kill_learner(tmp, p["kills"]),
        "R3": lambda tmp: r3_redis_restarts(tmp, p["redis_kills"], p["outage_s"]),
        "R4": lambda tmp: r4_load(tmp, p["clients"], p["seconds"]),
        "R5": lambda tmp: r5_auth(tmp),
        "R6": lambda tmp: r6_no_code_from_data(tmp),
        "R7": lambda tmp: r7_slow_clients_and_amplification(tmp, p["idle"], p["r7_seconds"]),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts and durations (CI, a first look)")
    ap.add_argument("--only", default="", help="comma-separated subset, e.g. R1,R5")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    params = QUICK if args.quick else FULL
    todo = checks(params)
    wanted = [c.strip().upper() for c in args.only.split(",") if c.strip()] or list(todo)
    results = []
    for cid in wanted:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"lasro-{cid.lower()}-") as tmp:
            try:
                res = todo[cid](Path(tmp))
            except Exception as e:  # a check that crashed does not hold; the others still run
                res = {"id": cid, "holds": False, "summary": f"check failed: {type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()[-3000:]}
        res["seconds"] = round(time.monotonic() - t0, 1)
        results.append(res)
        print(f"{cid}: {'holds' if res['holds'] else 'DOES NOT HOLD'} ({res['seconds']} s): {res['summary']}", flush=True)
    print_table("Reliability (issue 15)", [{"check": r["id"], "holds": "yes" if r["holds"] else "NO",
                                            "seconds": r["seconds"], "result": r["summary"]} for r in results],
                ["check", "holds", "seconds", "result"])
    payload = {"mode": "quick" if args.quick else "full", "params": params, "all_hold": all(r["holds"] for r in results),
               "results": results}
    name = "reliability" + ("-quick" if args.quick else "") + ("-" + "-".join(wanted).lower() if args.only else "")
    write_json(name, payload)
    return payload


if __name__ == "__main__":
    main()
