"""The model the exporter traces: used as built when it can be, copied otherwise, and never a
copy that stopped being Python (e3nn 0.4 turns its generated code into TorchScript on every copy);
frozen while traced; its weights' hash (mutation-tested with ``tools/mutation_testing.py export/precision.py``)."""

import copy

import pytest
import torch
from torch import nn

from mlff_export.export.errors import ExportError
from mlff_export.export.ordinary_code import tracing_ordinary_code
from mlff_export.export.precision import frozen, model_for_precision, weights_sha256


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([2.0, 3.0]))

    def forward(self, x):
        return x * self.weight


class ScriptedWhenCopied(Scale):
    """A stand-in for an e3nn 0.4 module: its copy is its TorchScript version."""

    def __deepcopy__(self, memo):
        plain = Scale()
        plain.load_state_dict(self.state_dict())
        return torch.jit.script(plain)


def test_a_cpu_float32_model_is_used_as_built():
    model = nn.Sequential(Scale())
    assert model_for_precision(model, "fp32") is model


def test_a_float64_model_is_copied_to_float32_and_left_as_it_was():
    model = nn.Sequential(Scale()).double()
    traced = model_for_precision(model, "fp32")
    assert traced is not model
    assert traced[0].weight.dtype == torch.float32 and not traced[0].weight.requires_grad
    assert model[0].weight.dtype == torch.float64 and model[0].weight.requires_grad
    torch.testing.assert_close(traced[0].weight, torch.tensor([2.0, 3.0]))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_copy_that_turned_into_torchscript_is_refused_with_what_to_do(precision):
    model = nn.Sequential(ScriptedWhenCopied()).double()
    assert isinstance(copy.deepcopy(model)[0], torch.jit.ScriptModule)  # the stand-in does what e3nn does
    with pytest.raises(ExportError, match=r"Sequential: copying it turned submodule\(s\) \['0'\] into TorchScript"
                       r".*float32 on the CPU"):
        model_for_precision(model, precision)


def test_a_model_scripted_by_its_user_is_refused_before_tracing():
    model = nn.Sequential(torch.jit.script(Scale()))
    with pytest.raises(ExportError, match=r"Sequential: submodule\(s\) \['0'\] are TorchScript modules.*jit_script_fx=False"):
        with tracing_ordinary_code(model):
            pass


def test_the_fp16_body_has_half_parameters_and_float32_buffers():
    model = nn.Sequential(Scale())
    model.register_buffer("energy_reference", torch.tensor([-2000.1]))
    half = model_for_precision(model, "fp16")
    assert half is not model and half[0].weight.dtype == torch.float16 and not half[0].weight.requires_grad
    assert half.energy_reference.dtype == torch.float32 and float(half.energy_reference) == pytest.approx(-2000.1)
    assert model[0].weight.dtype == torch.float32 and model[0].weight.requires_grad, "the model as built is untouched"
    with pytest.raises(ValueError, match="precision must be one of"):
        model_for_precision(model, "bf16")


@pytest.mark.gpu
def test_a_float32_model_on_the_gpu_is_copied_to_the_cpu_and_left_there():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (none here); run `pytest -m gpu` on a GPU machine")
    model = nn.Sequential(Scale()).cuda()
    traced = model_for_precision(model, "fp32")
    assert traced is not model and traced[0].weight.device.type == "cpu" and model[0].weight.device.type == "cuda"


def test_frozen_sets_eval_and_no_gradients_inside_and_restores_both():
    model = nn.Sequential(Scale(), nn.Dropout(0.1), Scale())
    model[1].eval()  # a submodule already in eval mode stays so
    model[2].weight.requires_grad_(False)
    with frozen(model) as inside:
        assert inside is model
        assert [module.training for module in model.modules()] == [False] * 4
        assert [parameter.requires_grad for parameter in model.parameters()] == [False, False]
    assert [module.training for module in model.modules()] == [True, True, False, True]
    assert [parameter.requires_grad for parameter in model.parameters()] == [True, False]
    with pytest.raises(RuntimeError, match="inside"), frozen(model):
        raise RuntimeError("inside")
    assert model.training and model[0].weight.requires_grad, "restored after an error too"


class WithExtraState(nn.Module):
    """Weights around a non-tensor extra state (sorted between them in the state dict)."""

    def __init__(self, note: str):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([1.0]))
        self.note = note
        self.z = nn.Parameter(torch.tensor([2.0, 3.0]))

    def get_extra_state(self):
        return {"note": self.note}

    def set_extra_state(self, state):
        self.note = state["note"]


def test_the_weights_hash_covers_every_weight_the_extra_state_and_ignores_the_float_width():
    base = weights_sha256(WithExtraState("x"))
    assert len(base) == 64 and base == weights_sha256(WithExtraState("x"))
    assert weights_sha256(WithExtraState("x").double()) == base, "float64 weights hash as their float32 values"
    assert weights_sha256(WithExtraState("y")) != base, "the extra state counts"
    later = WithExtraState("x")
    with torch.no_grad():
        later.z[1] = 3.5  # a weight sorted after the extra state
    assert weights_sha256(later) != base
    renamed = nn.Sequential(WithExtraState("x"))
    assert weights_sha256(renamed) != base, "names count"
    reshaped = WithExtraState("x")
    reshaped.z = nn.Parameter(torch.tensor([[2.0, 3.0]]))
    assert weights_sha256(reshaped) != base, "shapes count, not only bytes"
