"""Which backend and decoder a loader gets (no silent fallback), hw_decoder_load, and the NHWC layout.

This machine has no GPU: the CUDA paths run with the device resolved to cuda:0 and DALI's capabilities
(pipeline.dali_probe.probe) replaced; loaders are built, not iterated, there.
"""
import contextlib
import math
import warnings

import pytest
import torch

from common.errors import InputError
import pipeline
from pipeline import backend_choice, dali_graph, dali_probe, loader as loader_module
from pipeline.dali_probe import DaliCuda
from tests.pipeline.conftest import gpu_skip_reason

HW = DaliCuda(0, None, None, hw_engines=7, hw_cores=5, default_hw_decoder_load=0.65)
NO_HW = DaliCuda(0, None, None, 0, 0, 0.65)
NO_CUDA = DaliCuda(0, "DALI 2.4.0 (built for CUDA 12) cannot use CUDA here (no driver, simulated)", None, 0, 0, 0.65)
NO_NVJPEG = DaliCuda(0, None, "libnvjpeg.so.12 cannot be loaded (simulated; pip install nvidia-nvjpeg-cu12)",
                     0, 0, 0.65)


@pytest.fixture
def on_cuda(monkeypatch):
    """build_loader sees cuda:0; `set_probe(cap)` says what DALI can do there."""
    monkeypatch.setattr(loader_module, "resolve_device", lambda device: torch.device("cuda", 0))

    def set_probe(cap: DaliCuda) -> None:
        monkeypatch.setattr(dali_probe, "probe", lambda index: cap)

    return set_probe


def _one_line_input_error(error: BaseException) -> bool:
    return isinstance(error, InputError) and "\n" not in str(error)


# --- A: the decoder in use, and no silent fallback --------------------------------------------------------

def test_cpu_decoders(jpeg_shards, raw_shards):
    assert pipeline.build_loader(jpeg_shards, 8, device="cpu").decoder == "libjpeg-turbo (DALI CPU)"
    assert pipeline.build_loader(jpeg_shards, 8, device="cpu", backend="dali").decoder == "libjpeg-turbo (DALI CPU)"
    torch_loader = pipeline.build_loader(jpeg_shards, 8, device="cpu", backend="torch")
    assert torch_loader.backend == "torch" and torch_loader.decoder == "libjpeg-turbo (torch backend)"
    assert pipeline.build_loader(raw_shards, 8, device="cpu").decoder == "raw pixels, no decoding (DALI CPU)"
    assert pipeline.build_loader(raw_shards, 8, device="cpu", backend="torch").decoder == \
        "raw pixels, no decoding (torch backend)"


@pytest.mark.parametrize("cap, load, expected", [
    (HW, None, "nvJPEG hardware (mixed, hw_decoder_load=0.65)"),
    (HW, 0.3, "nvJPEG hardware (mixed, hw_decoder_load=0.3)"),
    (HW, 1, "nvJPEG hardware (mixed, hw_decoder_load=1)"),
    (HW, 0.0, "nvJPEG CUDA (mixed)"),  # no share for the hardware decoder: nvJPEG's CUDA decoder does it all
    (NO_HW, None, "nvJPEG CUDA (mixed)"),
    (NO_HW, 0.9, "nvJPEG CUDA (mixed)"),
])
def test_cuda_decoders(jpeg_shards, on_cuda, cap, load, expected):
    on_cuda(cap)
    for backend in ("auto", "dali"):
        loader = pipeline.build_loader(jpeg_shards, 8, device="cuda", backend=backend, hw_decoder_load=load)
        assert loader.backend == "dali" and loader.decoder == expected
        assert loader.hw_decoder_load == (None if load is None else float(load))


def test_explicit_dali_without_cuda_support_is_an_error(jpeg_shards, raw_shards, on_cuda):
    on_cuda(NO_CUDA)
    for shards in (jpeg_shards, raw_shards):
        with pytest.raises(pipeline.PipelineDeviceError, match=r"backend='dali' on cuda:0: DALI 2\.4\.0 \(built for "
                           r"CUDA 12\) cannot use CUDA here .*install the DALI wheel for this machine's CUDA .*"
                           r"pip install nvidia-dali-cuda") as info:
            pipeline.build_loader(shards, 8, device="cuda", backend="dali")
        assert _one_line_input_error(info.value)


def test_explicit_dali_without_nvjpeg_is_an_error_for_jpeg_only(jpeg_shards, raw_shards, on_cuda):
    on_cuda(NO_NVJPEG)
    with pytest.raises(pipeline.PipelineDeviceError, match=r"backend='dali' on cuda:0: libnvjpeg\.so\.12 cannot be "
                       r"loaded .*install the DALI wheel for this machine's CUDA") as info:
        pipeline.build_loader(jpeg_shards, 8, device="cuda", backend="dali")
    assert _one_line_input_error(info.value)
    # Raw shards are not decoded: DALI's GPU graph serves them without nvJPEG.
    loader = pipeline.build_loader(raw_shards, 8, device="cuda", backend="dali")
    assert loader.backend == "dali" and loader.decoder == "raw pixels, no decoding (DALI mixed)"


@pytest.mark.parametrize("cap", [NO_CUDA, NO_NVJPEG])
def test_auto_on_cuda_falls_back_loudly_once(jpeg_shards, on_cuda, cap):
    on_cuda(cap)
    with pytest.warns(RuntimeWarning) as record:
        loaders = [pipeline.build_loader(jpeg_shards, 8, device="cuda") for _ in range(3)]
    messages = [str(w.message) for w in record if "falling back" in str(w.message)]
    assert len(messages) == 1, messages  # several loaders, one warning per process
    assert "backend='auto' on cuda:0" in messages[0] and (cap.problem or cap.nvjpeg_problem) in messages[0]
    assert "nvidia-dali-cuda" in messages[0]
    assert all(x.backend == "torch" and x.decoder == "libjpeg-turbo (torch backend, DALI fallback)" for x in loaders)


def test_explicit_dali_that_cannot_be_imported(jpeg_shards, monkeypatch):
    real_import = __import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia.dali"):
            raise ImportError("No module named 'nvidia.dali' (simulated)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", no_dali)
    with pytest.raises(pipeline.DaliUnavailableError, match="DALI cannot be imported") as info:
        pipeline.build_loader(jpeg_shards, 8, device="cpu", backend="dali")
    assert _one_line_input_error(info.value) and isinstance(info.value, pipeline.PipelineDeviceError)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):
            assert pipeline.build_loader(jpeg_shards, 8, device="cpu").backend == "torch"
    assert len([w for w in record if "falling back" in str(w.message)]) == 1


@pytest.mark.skipif(gpu_skip_reason() is None, reason="checks the probe where DALI sees no CUDA device")
def test_real_probe_without_a_gpu():
    dali_probe.probe.cache_clear()
    cap = dali_probe.probe(0)
    assert cap.problem is not None and "CUDA" in cap.problem and cap.hw_engines == 0
    assert cap.default_hw_decoder_load == pytest.approx(0.65)


def test_probe_names_what_is_missing(monkeypatch):
    def probe(**patches):
        with monkeypatch.context() as patch:
            for name, value in patches.items():
                patch.setattr(dali_probe.dali_backend, name, value)
            dali_probe.probe.cache_clear()
            try:
                return dali_probe.probe(0)
            finally:
                dali_probe.probe.cache_clear()

    def no_driver():
        raise RuntimeError("CUDA driver not found (simulated)")

    assert "cannot use CUDA here (CUDA driver not found (simulated))" in probe(GetCUDADeviceCount=no_driver).problem
    assert "sees 0 CUDA device(s)" in probe(GetCUDADeviceCount=lambda: 0).problem
    one = dict(GetCUDADeviceCount=lambda: 1)
    assert "nvidia-nvimgcodec-cu12" in probe(GetNvimgcodecVersion=lambda: -1, **one).nvjpeg_problem

    def no_library(major):
        raise OSError(f"libnvjpeg.so.{major}: cannot open shared object file (simulated)")

    monkeypatch.setattr(dali_probe, "_load_nvjpeg", no_library)
    cap = probe(**one)
    assert cap.problem is None and "libnvjpeg.so.12 cannot be loaded" in cap.nvjpeg_problem
    assert "pip install nvidia-nvjpeg-cu12" in cap.nvjpeg_problem


@pytest.mark.skipif(gpu_skip_reason() is None, reason="checks nvJPEG's answer where there is no GPU")
def test_probe_asks_the_real_nvjpeg(monkeypatch):
    # The wheel's libnvjpeg loads without a GPU; creating a handle then fails, and the probe says so.
    monkeypatch.setattr(dali_probe.dali_backend, "GetCUDADeviceCount", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    dali_probe.probe.cache_clear()
    try:
        cap = dali_probe.probe(0)
    finally:
        dali_probe.probe.cache_clear()
    assert cap.problem is None and cap.nvjpeg_problem.startswith("nvjpegCreateEx failed on cuda:0 with status")


# --- B: hw_decoder_load -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf, "0.5", True])
def test_hw_decoder_load_out_of_range(jpeg_shards, value):
    with pytest.raises(pipeline.LoaderOptionError, match=r"data\.hw_decoder_load: expected a number in \[0, 1\]") \
            as info:
        pipeline.build_loader(jpeg_shards, 8, device="cpu", hw_decoder_load=value)
    assert _one_line_input_error(info.value)


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_hw_decoder_load_is_ignored_on_the_cpu(jpeg_shards, backend):
    plain = list(pipeline.build_loader(jpeg_shards, 16, device="cpu", backend=backend, seed=4))
    for load in (0, 0.5, 1.0):
        loader = pipeline.build_loader(jpeg_shards, 16, device="cpu", backend=backend, seed=4, hw_decoder_load=load)
        assert loader.decoder.startswith("libjpeg-turbo")
        for a, b in zip(plain, loader):
            assert torch.equal(a.images, b.images) and torch.equal(a.index, b.index)


def test_hw_decoder_load_reaches_the_mixed_decoder_only(monkeypatch):
    calls = []

    class Decoders:
        @staticmethod
        def image(encoded, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr(dali_graph.fn, "decoders", Decoders)
    dali_graph._decode(None, True, 112, 0.25)
    dali_graph._decode(None, True, 112, None)
    dali_graph._decode(None, False, 112, 0.25)
    assert calls[0]["device"] == "mixed" and calls[0]["hw_decoder_load"] == 0.25
    assert calls[1]["device"] == "mixed" and "hw_decoder_load" not in calls[1]  # DALI's default
    assert calls[2]["device"] == "cpu" and "hw_decoder_load" not in calls[2]


# --- E: the NHWC layout -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["dali", "torch"])
@pytest.mark.parametrize("shards", ["jpeg_shards", "raw_shards"])
def test_nhwc_layout_equals_nchw(request, shards, backend):
    shards = request.getfixturevalue(shards)
    for kw in ({}, {"dtype": torch.bfloat16}, {"augment": {"crop": 0.5, "low_res": 0.5, "photometric": 0.5}}):
        nchw = list(pipeline.build_loader(shards, 16, device="cpu", backend=backend, seed=6, with_flip=True, **kw))
        nhwc = list(pipeline.build_loader(shards, 16, device="cpu", backend=backend, seed=6, with_flip=True,
                                          layout="NHWC", **kw))
        assert len(nchw) == len(nhwc) > 0
        for a, b in zip(nchw, nhwc):
            assert a.images.is_contiguous() and b.images.shape == a.images.shape == (16, 3, 112, 112)
            assert b.images.is_contiguous(memory_format=torch.channels_last) and not b.images.is_contiguous()
            assert b.images.dtype == a.images.dtype
            assert torch.equal(a.images, b.images), (kw, (a.images.float() - b.images.float()).abs().max())
            assert torch.equal(a.labels, b.labels) and torch.equal(a.flipped, b.flipped)


def test_bad_layout(jpeg_shards):
    with pytest.raises(pipeline.LoaderOptionError, match=r"layout: expected one of \('NCHW', 'NHWC'\), found 'HWC'"):
        pipeline.build_loader(jpeg_shards, 8, device="cpu", layout="HWC")


def test_backend_names_are_checked_first(jpeg_shards):
    with pytest.raises(pipeline.LoaderOptionError, match=r"backend \(data\.backend\): expected one of"):
        pipeline.build_loader(jpeg_shards, 8, device="cpu", backend="ffcv")
    assert backend_choice.BACKENDS == ("auto", "dali", "torch")
