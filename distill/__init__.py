"""VLA interface, reference teacher, ActDistill core, baselines and FLOPs accounting."""
from distill.checkpoint import load_policy  # noqa: F401
