"""What the machine can do fast: native bf16 on the CPU, bf16 on the GPU, a description.

The precision that ``train.precision=auto`` picks depends on these answers. bf16 autocast
pays off on a CPU only when its matrix units compute in bf16 (AMX or AVX-512 BF16): there
a ViT-B/16 forward runs about 2.3x faster than in fp32. On a CPU without them (AVX2 only)
oneDNN emulates bf16 and the same forward ran 4.7x *slower* (benchmarks/RESULTS.md), so
auto stays in fp32 there.
"""

from __future__ import annotations

import functools
import os
import platform

import torch


@functools.cache
def cpu_bf16_native() -> bool:
    """True if the CPU computes bf16 matrix products in hardware (AMX-BF16 or AVX-512 BF16)."""
    mkldnn_check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if mkldnn_check is not None:
        try:
            return bool(mkldnn_check())
        except RuntimeError:  # a build without oneDNN: fall back to the CPU flags below
            pass
    cpu = torch.cpu
    return any(bool(getattr(cpu, name, lambda: False)())
               for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def cuda_bf16_native(device: torch.device) -> bool:
    """True if the GPU computes in bf16 natively (compute capability 8.0+, or ROCm's equivalent)."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def auto_precision(device: torch.device, kind: str) -> torch.dtype | None:
    """The autocast dtype of ``train.precision=auto`` (None = fp32).

    CUDA: bf16 where the GPU has it (no loss scaling needed), else fp16 with a grad scaler.
    CPU: bf16 for transformers where the CPU has native bf16, otherwise fp32. CNNs stay in
    fp32 on every CPU. Without native bf16 (AVX2 only) bf16 depthwise convolutions ran about
    10x slower than fp32. With it, bf16 is not a win on every CNN path either:
    benchmarks/cnn_precision.py on a 2-core Intel Xeon with AMX-BF16 and AVX-512 BF16
    (torch 2.14.1, 224 px, channels_last, images per CPU-second, bf16/fp32 in two ABBA
    rounds, on a machine loaded by other work) measured EfficientNet-Lite0 bn_tuning at
    train 1.59/1.16 (batch 8) and 1.24/0.98 (batch 32), eval 0.90/1.00 (batch 8) and
    1.15/1.04 (batch 32); CLIP RN50 (bitfit, ssf_pool, bitfit+ssf_pool) won at batch 32
    (train 1.33-2.24, eval 1.43-2.01) but not at batch 8 (train 0.97-3.09, eval 0.91-1.60;
    bitfit eval 0.99/0.97). The offline demo (EfficientNet-Lite0, 64 px) there took 1156
    CPU-seconds in bf16 against 1223 in fp32 (5% less) at 84.12 against 83.63 overall accuracy.
    A CNN rule picking bf16 would lose on some of these paths, so it stays fp32;
    train.precision=bf16 asks for bf16 explicitly.
    """
    if device.type == "cuda":
        return torch.bfloat16 if cuda_bf16_native(device) else torch.float16
    if device.type == "cpu" and kind == "vit" and cpu_bf16_native():
        return torch.bfloat16
    return None


def precision_note(dtype: torch.dtype | None, device: torch.device) -> str | None:
    """A warning when an explicitly chosen precision is emulated (slow) on this machine."""
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_bf16_native():
        return ("train.precision=bf16 on a CPU without native bf16 (no AMX / AVX-512 BF16): oneDNN emulates it "
                "and it runs several times slower than fp32; train.precision=auto picks fp32 here.")
    return None


def available_memory() -> int:
    """Bytes of free physical memory (8 GiB where the system cannot say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
        return 8 << 30


def describe_machine() -> dict:
    """CPU, cores, vector capability, bf16 support, torch version and GPU: for benchmark records."""
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_native": cpu_bf16_native(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:  # not available on this platform
        info["load_avg_1m"] = None
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()
