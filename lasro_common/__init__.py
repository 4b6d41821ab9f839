"""What crosses process boundaries: the tensor codec, errors, the Redis record, shared HTTP
plumbing and the client base. Every service and the trainer speak through this package."""

PROTOCOL_VERSION = "1"
PROTOCOL_HEADER = "X-Lasro-Protocol"
SAFETENSORS_MEDIA_TYPE = "application/x-safetensors"

__all__ = ["PROTOCOL_HEADER", "PROTOCOL_VERSION", "SAFETENSORS_MEDIA_TYPE"]
