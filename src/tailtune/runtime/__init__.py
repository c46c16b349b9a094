"""What a run executes on and writes to: device, precision, loaders, progress, processes
(torchrun), random streams, logging, the run folder and its safetensors files."""
