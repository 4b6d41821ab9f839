"""The sample-group stream (trainer -> Redis -> surrogate learner), in one place.

- ``record``: ``SampleGroup``, one stream entry (one prompt, N latents of one step, their true
  rewards) and its versioned wire form.
- ``producer``: ``GroupProducer``, the trainer's XADD side.
- ``consumer``: ``GroupConsumer``, the learner's side: XREADGROUP, XAUTOCLAIM, retries, dead
  letters and acknowledgement only after the caller's checkpoint (exactly-once).
"""

from .consumer import GroupConsumer
from .producer import GroupProducer
from .record import DEAD_LETTER_SUFFIX, DEFAULT_STREAM, RECORD_VERSION, SampleGroup

__all__ = ["DEAD_LETTER_SUFFIX", "DEFAULT_STREAM", "RECORD_VERSION", "GroupConsumer", "GroupProducer",
           "SampleGroup"]
