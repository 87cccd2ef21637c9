"""Model summary counted the way ``larq.models.summary`` counts, by these rules:

Profile objects compute the numbers; :func:`format_summary` is the only formatter.

* Memory = bits x count; a binarized kernel weight is 1 bit, everything else 32 bits;
  1 KiB = 8 x 1024 bits.
* Batch normalization counts 2 float32 parameters per channel (the inference-time scale
  and offset), non-trainable, whether or not it has ``scale``.
* MACs only for conv and dense layers: kernel weights x output pixels. A MAC is 1-bit
  only when both the kernel and the layer input are binarized. Pooling, batch norm and
  flatten count 0 MACs; other layers (e.g. Activation) count as unknown ("?").
* Energy per inference from the 45 nm table: a 32-bit float MAC = multiply 3.7 pJ +
  add 0.9 pJ. A 1-bit MAC (XNOR plus its share of a popcount-accumulate) is costed as
  one 8-bit integer add, 0.03 pJ: an upper bound, since a 64-bit popcount serves 64 MACs.
  Arithmetic only; memory traffic, which costs more, is not included.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layer_types import layer_type
from .model import Sequential

__all__ = ["LayerProfile", "ModelProfile", "profile_model", "format_summary", "ENERGY_PJ"]

ENERGY_PJ = {"mac32": 3.7 + 0.9, "mac1": 0.03, "int8_add": 0.03, "int8_mult": 0.2,
             "fp32_mult": 3.7, "fp32_add": 0.9}


@dataclass(frozen=True)
class LayerProfile:
    name: str
    type_name: str
    input_precision: int | None  # 1 when the layer binarizes its input; None shows "-"
    output_shape: tuple[int, ...]
    params_1bit: int
    params_32bit: int
    trainable_params: int
    macs_1bit: int | None  # None = not countable for this layer type ("?")
    macs_32bit: int | None
    inputs: tuple[str, ...] = ()  # the layers it reads ("input": the data), as Keras shows


    @property
    def memory_bits(self) -> int:
        return self.params_1bit + 32 * self.params_32bit

    @property
    def memory_kib(self) -> float:
        return self.memory_bits / (8 * 1024)


@dataclass(frozen=True)
class ModelProfile:
    name: str
    layers: tuple[LayerProfile, ...]
    is_graph: bool = False  # some layer does not simply read the one before it

    @property
    def params_1bit(self) -> int:
        return sum(lp.params_1bit for lp in self.layers)

    @property
    def params_32bit(self) -> int:
        return sum(lp.params_32bit for lp in self.layers)

    @property
    def total_params(self) -> int:
        return self.params_1bit + self.params_32bit

    @property
    def trainable_params(self) -> int:
        return sum(lp.trainable_params for lp in self.layers)

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def memory_bits(self) -> int:
        return sum(lp.memory_bits for lp in self.layers)

    @property
    def memory_kib(self) -> float:
        return self.memory_bits / (8 * 1024)

    @property
    def memory_kib_8bit(self) -> float:
        """Size with 32-bit parameters stored as 8 bits, binary ones as 1 bit."""
        return (self.params_1bit + 8 * self.params_32bit) / (8 * 1024)

    @property
    def float32_kib(self) -> float:
        return 32 * self.total_params / (8 * 1024)

    @property
    def compression_ratio(self) -> float:
        return self.memory_kib / self.float32_kib if self.total_params else 1.0

    @property
    def macs_1bit(self) -> int:
        return sum(lp.macs_1bit or 0 for lp in self.layers)

    @property
    def macs_32bit(self) -> int:
        return sum(lp.macs_32bit or 0 for lp in self.layers)

    @property
    def macs(self) -> int:
        return self.macs_1bit + self.macs_32bit

    @property
    def binarized_mac_ratio(self) -> float:
        return self.macs_1bit / self.macs if self.macs else 0.0

    @property
    def energy_pj(self) -> float:
        """Arithmetic energy per inference (pJ), from the 45 nm table."""
        return self.macs_1bit * ENERGY_PJ["mac1"] + self.macs_32bit * ENERGY_PJ["mac32"]

    @property
    def energy_pj_float32(self) -> float:
        """The same network with every MAC in float32."""
        return self.macs * ENERGY_PJ["mac32"]


def _layer_profile(layer, inputs: tuple[str, ...]) -> LayerProfile:
    out = tuple(layer.output_shape)
    p1 = p32 = trainable = 0
    macs1 = macs32 = 0
    t = layer_type(layer.type_name)
    rule = t.summary if t else "unknown"  # the rules are in bnnlab.core.layer_types
    countable = rule != "unknown"
    in_prec = None
    if rule == "kernel":
        iq = layer.input_quantizer
        if iq is not None and iq.binary:
            in_prec = 1
        k = layer.kernel.value.size
        if layer.kernel_binary:
            p1 += k
        else:
            p32 += k
        trainable += k
        if layer.bias is not None:
            p32 += layer.bias.value.size
            trainable += layer.bias.value.size
        pixels = out[0] * out[1] if len(out) == 3 else 1
        if layer.binary:
            macs1 = k * pixels
        else:
            macs32 = k * pixels
    elif rule == "batchnorm":
        p32 += 2 * layer.channels
    return LayerProfile(
        name=layer.name, type_name=layer.type_name, input_precision=in_prec, output_shape=out,
        params_1bit=p1, params_32bit=p32, trainable_params=trainable,
        macs_1bit=macs1 if countable else None, macs_32bit=macs32 if countable else None,
        inputs=inputs,
    )


def profile_model(model: Sequential) -> ModelProfile:
    """Count parameters, memory and MACs per layer, as Larq's summary does."""
    return ModelProfile(model.name, tuple(_layer_profile(layer, model.input_names(i))
                                          for i, layer in enumerate(model.layers)),
                        is_graph=model.is_graph)


def _si(n: float) -> str:
    """Three significant digits with a k/M/G suffix, as Larq prints totals."""
    for div, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(n) >= div:
            v = n / div
            return (f"{v:.3g}" if v < 100 else f"{v:.0f}") + suffix
    return f"{n:g}"


def _table(title: str, header: list[list[str]], rows: list[list[str]], footer: list[list[str]],
           align_left=(0,)) -> str:
    allrows = header + rows + footer
    widths = [max(len(r[i]) for r in allrows) for i in range(len(allrows[0]))]

    def fmt(r):
        cells = [c.ljust(w) if i in align_left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "| " + "  ".join(cells) + " |"

    inner = sum(widths) + 2 * (len(widths) - 1) + 2
    top = "+" + title + "-" * max(0, inner - len(title)) + "+"
    rule = "+" + "-" * inner + "+"
    lines = [top] + [fmt(r) for r in header]
    if rows:
        lines += ([rule] if header else []) + [fmt(r) for r in rows]
    if footer:
        lines += [rule] + [fmt(r) for r in footer]
    lines.append(rule)
    return "\n".join(lines)


def format_summary(profile: ModelProfile, energy: bool = True) -> str:
    """Larq-style text: a per-layer table, then the model totals. A graph model's table
    ends with a "Connected to" column naming each layer's inputs, as Keras prints it."""
    has1 = profile.params_1bit > 0
    mac1 = profile.macs_1bit > 0 or has1
    pcols = ([1] if has1 else []) + [32]
    mcols = ([1] if mac1 else []) + [32]

    def kib(v):
        return "0" if v == 0 else f"{v:.2f}"

    def mac(v):
        return "?" if v is None else str(v)

    head1 = ["Layer", "Input prec.", "Outputs", *[f"# {b}-bit" for b in pcols], "Memory",
             *[f"{b}-bit MACs" for b in mcols]]
    head2 = ["", "(bit)", "", *["x 1" for _ in pcols], "(kB)", *["" for _ in mcols]]
    graph = profile.is_graph
    if graph:
        head1.append("Connected to")
        head2.append("")
    rows = []
    for lp in profile.layers:
        shape = "(-1, " + ", ".join(str(s) for s in lp.output_shape) + ")"
        r = [lp.name, "-" if lp.input_precision is None else str(lp.input_precision), shape]
        r += [str(lp.params_1bit if b == 1 else lp.params_32bit) for b in pcols]
        r.append(kib(lp.memory_kib))
        r += [mac(lp.macs_1bit if b == 1 else lp.macs_32bit) for b in mcols]
        if graph:
            r.append(", ".join(lp.inputs))
        rows.append(r)
    total = ["Total", "", ""]
    total += [str(profile.params_1bit if b == 1 else profile.params_32bit) for b in pcols]
    total.append(kib(profile.memory_kib))
    total += [str(profile.macs_1bit if b == 1 else profile.macs_32bit) for b in mcols]
    if graph:
        total.append("")
    stats = _table(f"{profile.name} stats", [head1, head2], rows, [total],
                   align_left=(0, len(head1) - 1) if graph else (0,))
    items = [
        ("Total params", _si(profile.total_params)),
        ("Trainable params", _si(profile.trainable_params)),
        ("Non-trainable params", _si(profile.non_trainable_params)),
        ("Model size", f"{profile.memory_kib:.2f} KiB"),
        ("Model size (8-bit FP weights)", f"{profile.memory_kib_8bit:.2f} KiB"),
        ("Float-32 Equivalent", f"{profile.float32_kib:.2f} KiB"),
        ("Compression Ratio of Memory", f"{profile.compression_ratio:.2f}"),
        ("Number of MACs", _si(profile.macs)),
        ("Ratio of MACs that are binarized", f"{profile.binarized_mac_ratio:.4f}"),
    ]
    if energy:
        items += [
            ("Energy per inference (45 nm)", f"{profile.energy_pj / 1e6:.3f} uJ"),
            ("Same MACs in float32", f"{profile.energy_pj_float32 / 1e6:.3f} uJ"),
        ]
    w = max(len(k) for k, _ in items)
    summ = _table(f"{profile.name} summary", [], [[k.ljust(w), v] for k, v in items], [],
                  align_left=(0, 1))
    return stats + "\n" + summ
