"""The model the exporter traces: used as built when it can be, copied otherwise, and never a
copy that stopped being Python (e3nn 0.4 turns its generated code into TorchScript on every copy)."""

import copy

import pytest
import torch
from torch import nn

from mlff_export.export.errors import ExportError
from mlff_export.export.ordinary_code import tracing_ordinary_code
from mlff_export.export.precision import model_for_precision


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
