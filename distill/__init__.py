"""VLA interface, reference teacher, ActDistill core, baselines and FLOPs accounting."""
