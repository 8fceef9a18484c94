#!/usr/bin/env python3
"""compare_runs.py — a DAM run on the GPU against the same run on the CPU (standard library only, so
it runs anywhere): the losses of every step (from the progress lines "step N/M | loss X | ...") and
the learned coefficients (dam_coefficients.safetensors, every tensor, relative error by norm).

  compare_runs.py CPU_LOG GPU_LOG CPU_OUT_DIR GPU_OUT_DIR [loss_rtol coef_tol [loss_atol]]

Prints one OK / NOT OK line per comparison; exit status 1 when one fails. A step's losses agree when
|gpu - cpu| <= loss_atol + loss_rtol * |cpu|; the coefficients when their relative error by norm is
below coef_tol. Defaults: loss_rtol 2e-2 (about five bf16 roundings, 5 * 2^-8: the GPU computes its
activations in bf16), coef_tol 5e-2, loss_atol 2^-8 = 3.9e-3. The absolute part is needed because a
KL loss is a difference of cross-entropy terms of the size of the log-probabilities (O(1) and more),
not of the KL: bf16's relative rounding of 2^-8 on those terms is an absolute error of about 2^-8 on
the loss however small the loss is, so a relative tolerance alone fails a small KL on rounding noise."""
import json
import math
import re
import struct
import sys


def losses(path):
    out = []
    with open(path) as f:
        for line in f:
            m = re.match(r"^step\s+(\d+)/\d+ \| loss ([0-9.eE+-]+)", line)
            if m:
                out.append(float(m.group(2)))
    return out


def tensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    head = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, t in head.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = data[base + a:base + b]
        if t["dtype"] == "F32":
            vals = struct.unpack("<%df" % (len(raw) // 4), raw)
        elif t["dtype"] == "BF16":
            vals = [struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
        else:
            continue
        out[name] = vals
    return out


def main():
    a_log, b_log, a_dir, b_dir = sys.argv[1:5]
    loss_tol = float(sys.argv[5]) if len(sys.argv) > 5 else 2e-2
    coef_tol = float(sys.argv[6]) if len(sys.argv) > 6 else 5e-2
    loss_atol = float(sys.argv[7]) if len(sys.argv) > 7 else 2.0 ** -8
    bad = 0
    la, lb = losses(a_log), losses(b_log)
    if not la or len(la) != len(lb):
        print("NOT OK  loss lines: cpu %d, gpu %d" % (len(la), len(lb)))
        bad += 1
    else:
        # the worst step by its share of the allowed difference (<= 1 passes)
        share, i = max((abs(x - y) / (loss_atol + loss_tol * abs(x)), i) for i, (x, y) in enumerate(zip(la, lb)))
        ok = share <= 1.0
        bad += not ok
        print("%-7s losses of %d steps: worst at step %d, |%.5f - %.5f| = %.3e, %.2f of the allowed %.1e + %.1e * |cpu|"
              " (cpu last %.5f, gpu last %.5f)"
              % ("OK" if ok else "NOT OK", len(la), i + 1, la[i], lb[i], abs(la[i] - lb[i]), share, loss_atol,
                 loss_tol, la[-1], lb[-1]))
    ta = tensors(a_dir + "/dam_coefficients.safetensors")
    tb = tensors(b_dir + "/dam_coefficients.safetensors")
    num = den = 0.0
    missing = sorted(set(ta) ^ set(tb))
    for name in ta:
        if name in tb and len(ta[name]) == len(tb[name]):
            for x, y in zip(ta[name], tb[name]):
                num += (x - y) ** 2
                den += x * x
    rel = math.sqrt(num / den) if den > 0 else math.sqrt(num)
    ok = not missing and rel < coef_tol and len(ta) > 0
    bad += not ok
    print("%-7s coefficients: %d tensors, relative error by norm %.3e%s"
          % ("OK" if ok else "NOT OK", len(ta), rel, ("; differing names: %s" % missing[:5]) if missing else ""))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
