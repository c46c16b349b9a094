"""Data: sources (one module per dataset, registered in ``SOURCES``), datasets, long-tail
arithmetic, splits and held-out slices, transforms, samplers, the image store, statistics."""
