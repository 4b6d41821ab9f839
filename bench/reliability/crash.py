"""R2 kill -9 of the learner under a live producer; R3 Redis restarts (AOF on, AOF off, and the
surrogate's private redis-server) under producer and learner. Each ends by counting every group
the producer had sent in the learner's final checkpoint: lost (never there) and twice."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import psutil

from .harness import (
    Producer,
    RedisProc,
    Service,
    consumed,
    learner_groups,
    surrogate_env,
    tally,
    wait_for,
)


def _finish(service: Service, producer: Producer, tmp: Path, timeout: float = 600) -> dict:
    """Stop producing, let the learner take in everything, stop it gracefully, count."""
    producer.stop()
    want = len(set(producer.produced))
    wait_for(lambda: consumed(service) >= want, timeout, f"the learner to consume all {want} groups", tick=0.5)
    code = service.stop()
    return {**tally(producer.produced, learner_groups(tmp / "ckpt")), "unsent": len(producer.unsent),
            "exit_code": code}


def _progress(service: Service, groups: int = 30) -> None:
    """Let the producer and the learner run until `groups` more groups have been consumed."""
    before = consumed(service)
    wait_for(lambda: consumed(service) >= before + groups, 300, f"the learner to consume {groups} more groups")


def _checkpointed(tmp: Path) -> int:
    from surrogate_service.checkpoint import load_checkpoint

    state = load_checkpoint(tmp / "ckpt")
    return 0 if state is None else int(state["groups_consumed"])


def _stats(xs: list[float]) -> dict:
    return {"n": len(xs), "median_s": round(float(np.median(xs)), 2) if xs else None,
            "max_s": round(max(xs), 2) if xs else None}


def r2_kill_learner(tmp: Path, kills: int) -> dict:
    redis = RedisProc(tmp / "redis")
    redis.start()
    service = Service("surrogate_service", tmp, surrogate_env(tmp, SURROGATE_REDIS_URL=redis.url))
    rng = random.Random(2)
    ready_s, consuming_s = [], []
    try:
        service.start()
        producer = Producer(redis.url, interval=0.1, seed=2).start()
        for _ in range(kills):
            before = consumed(service)
            wait_for(lambda b=before: consumed(service) > b, 120, "the learner to make progress")
            time.sleep(rng.uniform(0.2, 2.0))  # a random moment mid-stream (some groups acked, some not)
            service.kill()  # kill -9
            at = _checkpointed(tmp)  # what the restarted learner resumes from
            t0 = time.monotonic()
            service.start()
            ready_s.append(time.monotonic() - t0)
            wait_for(lambda a=at: consumed(service) > a, 120, "the restarted learner to consume")
            consuming_s.append(time.monotonic() - t0)
        result = _finish(service, producer, tmp)
    finally:
        service.kill()
        redis.kill()
    holds = result["lost"] == 0 and result["twice"] == 0 and result["unsent"] == 0
    return {"id": "R2", "holds": holds,
            "summary": f"{kills} x kill -9 of the learner under a live producer: {result['produced']} groups, "
                       f"{result['lost']} lost, {result['twice']} twice; restart to ready median "
                       f"{_stats(ready_s)['median_s']} s (max {_stats(ready_s)['max_s']}), to consuming median "
                       f"{_stats(consuming_s)['median_s']} s",
            **result, "restart_to_ready": _stats(ready_s), "restart_to_consuming": _stats(consuming_s),
            "restart_to_ready_s": [round(x, 2) for x in ready_s]}


def _outages(service: Service, producer: Producer, kills: int, outage_s: float, down, up) -> dict:
    """`kills` times: wait for progress, take Redis down (`down()`), keep it down `outage_s`,
    bring it up (`up()` returns when it accepts connections); time until the learner consumes
    again and until the producer has published again."""
    learner_s, producer_s = [], []
    for _ in range(kills):
        _progress(service)
        down()
        time.sleep(outage_s)  # the outage itself: its length is the experiment's parameter
        at = consumed(service)
        up()
        t_up = time.monotonic()
        wait_for(lambda a=at: consumed(service) > a and service.status()["learner"]["redis_connected"], 120,
                 "the learner to reconnect and consume")
        learner_s.append(time.monotonic() - t_up)
        wait_for(lambda t=t_up: producer.last_ok > t, 120, "the producer to publish again")
        producer_s.append(max(0.0, producer.last_ok - t_up))
    _progress(service)  # and life goes on after the last outage
    return {"learner_back": _stats(learner_s), "producer_back": _stats(producer_s)}


def r3_external(tmp: Path, aof: bool, kills: int, outage_s: float) -> dict:
    redis = RedisProc(tmp / "redis", aof=aof)
    redis.start()
    service = Service("surrogate_service", tmp, surrogate_env(tmp, SURROGATE_REDIS_URL=redis.url))
    try:
        service.start()
        producer = Producer(redis.url, interval=0.1, seed=3 if aof else 4).start()
        times = _outages(service, producer, kills, outage_s, down=lambda: redis.kill(wipe=not aof), up=redis.start)
        result = _finish(service, producer, tmp)
        resent = producer.producer.resent
    finally:
        service.kill()
        redis.kill()
    return {**result, **times, "producer_resent": resent}


def r3_embedded(tmp: Path, kills: int) -> dict:
    """The surrogate's private redis-server killed -9 under producer and learner: the service
    restarts it in place; the producer reaches it on its unix socket."""
    service = Service("surrogate_service", tmp, surrogate_env(tmp, SURROGATE_REDIS_DIR=str(tmp / "private-redis")))
    restarts = []
    try:
        service.start()
        info = service.status()["redis"]
        producer = Producer(info["url"], interval=0.1, seed=5).start()
        for _ in range(kills):
            _progress(service)
            pid = service.status()["redis"]["pid"]
            at = consumed(service)
            psutil.Process(pid).kill()
            t0 = time.monotonic()
            wait_for(lambda p=pid: service.status()["redis"]["pid"] not in (None, p), 60, "the restart in place")
            restarts.append(time.monotonic() - t0)
            wait_for(lambda a=at: consumed(service) > a and service.status()["learner"]["redis_connected"], 120,
                     "the learner to consume again")
        _progress(service)
        st = service.status()["redis"]
        result = _finish(service, producer, tmp)
    finally:
        service.kill()
    same = st["dir"] == info["dir"] and st["url"] == info["url"]
    return {**result, "restart_in_place": _stats(restarts), "restarts": st["restarts"], "same_dir_and_socket": same}


def r3_redis_restarts(tmp: Path, kills: int, outage_s: float) -> dict:
    on = r3_external(tmp / "aof-on", aof=True, kills=kills, outage_s=outage_s)
    off = r3_external(tmp / "aof-off", aof=False, kills=kills, outage_s=outage_s)
    emb = r3_embedded(tmp / "embedded", kills=kills)
    parts = {"aof_on": on, "aof_off": off, "embedded": emb}
    holds = all(p["lost"] == 0 and p["twice"] == 0 and p["unsent"] == 0 for p in parts.values()) and \
        emb["same_dir_and_socket"] and emb["restarts"] == kills
    return {"id": "R3", "holds": holds,
            "summary": f"{kills} Redis kill -9 + {outage_s:g} s outages each, producer and learner live: "
                       f"AOF on {on['produced']} groups {on['lost']} lost {on['twice']} twice, learner back in "
                       f"{on['learner_back']['median_s']} s; AOF off (data wiped) {off['produced']} groups "
                       f"{off['lost']} lost {off['twice']} twice ({off['producer_resent']} resent from the journal), "
                       f"learner back in {off['learner_back']['median_s']} s; private redis-server restarted in place "
                       f"in {emb['restart_in_place']['median_s']} s, {emb['produced']} groups {emb['lost']} lost "
                       f"{emb['twice']} twice",
            **parts}
