"""The hardware and software header of every report: CPU, cores, load, GPU, driver, library versions."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Optional


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _dali_version() -> Optional[str]:
    for dist in ("nvidia-dali-cuda120", "nvidia-dali-cuda130", "nvidia-dali-cuda110", "nvidia-dali"):
        found = _version(dist)
        if found:
            return f"{found} ({dist})"
    return None


def _nvidia_driver() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def summary(device: str) -> str:
    """The one-line header of a stand-alone benchmark script (bench/class_search.py, bench/planted_audit.py):
    the CPU, torch and its threads, and the device it measures on."""
    import torch

    return f"{_cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"


def load_average() -> Optional[list]:
    """1, 5 and 15 minute load averages: other processes on the machine slow every figure."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def collect(device: str) -> dict:
    """The environment block; `device` is the one the run measures on ("cpu" or "cuda")."""
    import numpy
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    env = {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        # OpenMP's spin-waiting threads on a shared, oversubscribed machine slow torch's CPU step many times.
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
                       if k in os.environ},
        "load_average_at_start": load_average(),
        "device": device,
        "gpu": None,
        "gpu_driver": None,
        "cuda_runtime": torch.version.cuda,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dali": _dali_version(),
        "numpy": numpy.__version__,
        "simplejpeg": _version("simplejpeg"),
        "pillow": _version("pillow"),
        "webdataset": _version("webdataset"),
        "torchvision": _version("torchvision"),  # the torchvision_nvjpeg baseline's (optional)
    }
    if torch.cuda.is_available():
        env["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        env["gpu_driver"] = _nvidia_driver()
    return env
