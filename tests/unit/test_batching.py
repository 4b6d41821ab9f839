import asyncio
import threading

import pytest

from lasro_common.batching import MicroBatcher
from lasro_common.errors import Overloaded


def _recording_batcher(**kw):
    calls: list[list[int]] = []
    gate = threading.Event()

    def run(items):
        gate.wait(10)  # hold the first call so the rest pile up behind it
        calls.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError("negative")
        return [i * 10 for i in items]

    return MicroBatcher(run, **kw), calls, gate


def test_concurrent_requests_merge_into_few_calls_and_split_back():
    async def main():
        b, calls, gate = _recording_batcher(max_batch_size=4, max_wait_ms=50)
        tasks = [asyncio.create_task(b.submit(i)) for i in range(10)]
        await asyncio.sleep(0)  # let every task enqueue
        gate.set()
        out = await asyncio.gather(*tasks)
        b.close()
        return out, calls

    out, calls = asyncio.run(main())
    assert out == [i * 10 for i in range(10)]
    assert all(len(c) <= 4 for c in calls)
    assert len(calls) == 3  # 4 + 4 + 2
    assert sorted(x for c in calls for x in c) == list(range(10))


def test_sizes_are_respected_and_keys_never_mix():
    async def main():
        b, calls, gate = _recording_batcher(max_batch_size=5, max_wait_ms=50)
        gate.set()
        tasks = [asyncio.create_task(b.submit(i, size=3, key=i % 2)) for i in range(6)]
        out = await asyncio.gather(*tasks)
        b.close()
        return out, calls

    out, calls = asyncio.run(main())
    assert out == [i * 10 for i in range(6)]
    assert all(len(c) == 1 for c in calls)  # 3 + 3 > 5: never two in one call
    assert all(len({x % 2 for x in c}) == 1 for c in calls)


def test_a_failing_request_does_not_fail_its_batch_mates():
    async def main():
        b, _, gate = _recording_batcher(max_batch_size=8, max_wait_ms=50)
        tasks = [asyncio.create_task(b.submit(i)) for i in (1, -1, 2)]
        await asyncio.sleep(0)
        gate.set()
        res = await asyncio.gather(*tasks, return_exceptions=True)
        b.close()
        return res

    res = asyncio.run(main())
    assert res[0] == 10 and res[2] == 20
    assert isinstance(res[1], ValueError)


def test_disabled_makes_one_call_per_request():
    async def main():
        b, calls, gate = _recording_batcher(enabled=False)
        gate.set()
        out = await asyncio.gather(*(b.submit(i) for i in range(5)))
        b.close()
        return out, calls

    out, calls = asyncio.run(main())
    assert out == [0, 10, 20, 30, 40] and len(calls) == 5


def test_full_queue_answers_overloaded():
    async def main():
        b, _, gate = _recording_batcher(max_queue=2, max_wait_ms=0)
        t = [asyncio.create_task(b.submit(i)) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await b.submit(99)
        gate.set()
        await asyncio.gather(*t)
        b.close()

    asyncio.run(main())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda x: x, max_batch_size=0)
