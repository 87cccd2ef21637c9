"""User-facing errors around deployed models: a valid file the engine cannot represent under
`run --bench`, and the default input record of a .bnn file."""

from __future__ import annotations

import dataclasses

import numpy as np

from bnnlab.cli import main
from bnnlab.core.layers import Activation, BatchNorm, Flatten, QuantConv2D, QuantDense
from bnnlab.core.model import Sequential
from bnnlab.deploy import format as F
from bnnlab.deploy import read_file, to_model_file, write_file
from bnnlab.deploy.fold import input_spec_for


def test_the_default_input_record_can_be_written(tmp_path):
    spec = F.InputSpec((28, 28, 1))
    assert spec.scale == float(np.float32(spec.scale))
    model = Sequential([Flatten(), QuantDense(10, kernel_quantizer="ste_sign"), BatchNorm(),
                        Activation("softmax")], (28, 28, 1))
    mf = to_model_file(model, spec, ())
    write_file(tmp_path / "m.bnn", mf)
    assert read_file(tmp_path / "m.bnn").input.scale == spec.scale


def test_run_bench_on_a_file_the_engine_cannot_represent(tmp_path, capsys):
    # 'same' padding of a stride-2 convolution on 28 pixels puts its one padded row at the
    # bottom; the runtime also runs the file with it at the top, which Keras cannot express.
    model = Sequential([QuantConv2D(4, 3, strides=2, padding="same", kernel_quantizer="ste_sign"),
                        BatchNorm(), Flatten(),
                        QuantDense(10, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
                        BatchNorm(), Activation("softmax")], (28, 28, 1))
    mf = to_model_file(model, input_spec_for((28, 28, 1), "unit", "image"), tuple("0123456789"),
                       {"name": "shifted"})
    first = mf.blocks[0]
    assert first.pads == (0, 1, 0, 1)
    shifted = dataclasses.replace(mf, blocks=(dataclasses.replace(first, pads=(1, 0, 1, 0)),
                                              *mf.blocks[1:]))
    path = tmp_path / "shifted.bnn"
    write_file(path, shifted)
    assert main(["run", str(path), "--data", "digits", "--limit", "20", "--bench"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err and "cannot represent" in err
