"""The choice of BLAS library per captured bucket (runtime/blas_choice.py).

On CPU-only machines the library switch and the replay timer are fakes (``FakeLibraries``,
``fake_timer``): what is tested here is our logic around them — every library is warmed up and
captured while it is the preferred one, each trial capture is released before the next, the
fastest library is captured once more and kept, ties go to the first library. The real switch and timer run in the GPU test of tests/test_gpu.py."""

import contextlib
import weakref

import pytest
import torch

from mlff_export.runtime.blas_choice import capture_fastest


class FakeGraph:
    """Stands in for a torch.cuda.CUDAGraph: carries the replay time the fake timer reports."""

    def __init__(self, seconds: float):
        self.seconds = seconds


def fake_timer(graph: FakeGraph) -> float:
    return graph.seconds


class FakeLibraries:
    """Stands in for torch.backends.cuda.preferred_blas_library: records what ran under which library."""

    def __init__(self, replay_seconds: dict[str, float]):
        self.replay_seconds, self.current, self.log = replay_seconds, "default", []
        self.graphs = []

    @contextlib.contextmanager
    def prefer(self, name):
        previous, self.current = self.current, name
        try:
            yield
        finally:
            self.current = previous

    def warm_up(self):
        self.log.append(("warm-up", self.current))

    def capture(self):
        self.log.append(("capture", self.current))
        graph = FakeGraph(self.replay_seconds[self.current])
        self.graphs.append(weakref.ref(graph))
        return graph, {"energy": torch.tensor([float(len(self.log))])}


@pytest.mark.parametrize("seconds, kept", [({"cublas": 52e-6, "cublaslt": 2.4e-6}, "cublaslt"),
                                           ({"cublas": 2.6e-6, "cublaslt": 9.3e-6}, "cublas")])
def test_the_fastest_library_is_captured_again_and_kept(seconds, kept):
    fake = FakeLibraries(seconds)
    chosen = capture_fastest(fake.warm_up, fake.capture, ("cublas", "cublaslt"), fake.prefer, fake_timer)
    assert fake.log == [("warm-up", "cublas"), ("capture", "cublas"), ("warm-up", "cublaslt"), ("capture", "cublaslt"),
                        ("warm-up", kept), ("capture", kept)]
    assert chosen.library == kept and chosen.seconds == seconds
    assert chosen.graph.seconds == seconds[kept]
    assert chosen.outputs["energy"].item() == 6.0  # the last capture's own buffers
    assert fake.current == "default"  # the preference before the call is back


def test_one_trial_capture_is_held_at_a_time():
    fake = FakeLibraries({"cublas": 1.0, "cublaslt": 2.0})
    held = []
    capture = fake.capture
    fake.capture = lambda: (held.append(sum(ref() is not None for ref in fake.graphs)), capture())[1]
    chosen = capture_fastest(fake.warm_up, fake.capture, ("cublas", "cublaslt"), fake.prefer, fake_timer)
    assert held == [0, 0, 0]  # no earlier capture alive when the next one starts
    assert [ref() for ref in fake.graphs] == [None, None, chosen.graph]


def test_a_tie_keeps_the_first_library():
    fake = FakeLibraries({"cublas": 3e-6, "cublaslt": 3e-6})
    assert capture_fastest(fake.warm_up, fake.capture, ("cublaslt", "cublas"), fake.prefer, fake_timer).library == "cublaslt"


def test_no_library_is_refused():
    fake = FakeLibraries({})
    with pytest.raises(ValueError, match="at least one BLAS library"):
        capture_fastest(fake.warm_up, fake.capture, (), fake.prefer, fake_timer)
