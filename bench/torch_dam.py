#!/usr/bin/env python3
"""A straightforward PyTorch DAM, the baseline of bench/bench_real_shape.sh (benchmark only: needs
torch, safetensors and h5py; never CI).

It trains the same thing as dam_dist on a dam_dist run config (e.g. the one `dam_dist toy` writes):
- every weight of the sources (embedding, each linear layer, each RMSNorm) merged as
  W = sum_i W_i * diag(c_i), with c_i one coefficient per input column (per element for a norm),
  initialised to 1/N; a tied embedding is also the output layer;
- a Llama forward written in torch (RMSNorm, rotate-half rope, grouped-query attention through
  F.scaled_dot_product_attention, SwiGLU MLP), fp32, torch autograd;
- per dataset k: KL(source k || merged) at temperature tau on dataset k's rows, times tau^2,
  averaged over its tokens; the source's logits come from its own forward (no gradient);
- plus similarity * mean over source pairs of cos(c_i, c_j), summed over every coefficient tensor;
- gradient clipping to max_grad_norm, then AdamW on the coefficients only.
All datasets go through the merged model in one batch (the merged weights are built once per step).
Rows are read in order, batch_size per dataset per step, like dam_dist, so the step losses of both
can be compared line by line.

With --bf16 the forwards run under torch.autocast("cpu", dtype=torch.bfloat16): the linear layers'
inputs and weights rounded to bf16 with fp32 accumulation (what dam_dist's parallel.cpu_matmul "bf16"
does to its GEMMs); the losses stay fp32.

usage: torch_dam.py --config RUN_CONFIG.json [--steps N] [--threads T] [--bf16]
Prints one line per step and, last, "torch_dam: median s/step S (steps 3..N), peak RSS R KiB".
"""
import argparse
import json
import os
import resource
import statistics
import time

import h5py
import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def load_source(path):
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    tensors = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(path, name)))
    return cfg, {k: v.float() for k, v in tensors.items()}


def rope_tables(cfg, T):
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    theta = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    ang = torch.outer(torch.arange(T).float(), inv)
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def rmsnorm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def llama_forward(cfg, W, ids, cos, sin):
    """Logits [B, T, V] of a Llama model whose weights W[name] are given (merged or a source's)."""
    B, T = ids.shape
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    h = F.embedding(ids, W["model.embed_tokens.weight"])
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        x = rmsnorm(h, W[p + "input_layernorm.weight"], eps)
        q = F.linear(x, W[p + "self_attn.q_proj.weight"]).view(B, T, H, hd).transpose(1, 2)
        k = F.linear(x, W[p + "self_attn.k_proj.weight"]).view(B, T, KV, hd).transpose(1, 2)
        v = F.linear(x, W[p + "self_attn.v_proj.weight"]).view(B, T, KV, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + F.linear(a.transpose(1, 2).reshape(B, T, H * hd), W[p + "self_attn.o_proj.weight"])
        x = rmsnorm(h, W[p + "post_attention_layernorm.weight"], eps)
        g = F.linear(x, W[p + "mlp.gate_proj.weight"])
        u = F.linear(x, W[p + "mlp.up_proj.weight"])
        h = h + F.linear(F.silu(g) * u, W[p + "mlp.down_proj.weight"])
    h = rmsnorm(h, W["model.norm.weight"], eps)
    lm = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    return F.linear(h, lm)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="a dam_dist run config (JSON)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="forwards under bf16 autocast")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base_dir = os.path.dirname(os.path.abspath(a.config))
    with open(a.config) as f:
        run = json.load(f)
    loss_cfg, train = run.get("loss", {}), run.get("train", {})
    tau = float(loss_cfg.get("temperature", 2.0))
    lam = float(loss_cfg.get("similarity", 0.01))
    B, T = int(train.get("batch_size", 1)), int(train.get("seq_len", 0))
    srcs, data = [], []
    for m in run["models"]:
        cfg, w = load_source(os.path.join(base_dir, m["path"]))
        srcs.append(w)
        with h5py.File(os.path.join(base_dir, m["dataset"]), "r") as f:
            ids = torch.from_numpy(f["input_ids"][:]).long()
        data.append(ids[:, :T] if T else ids)
    T = data[0].shape[1]
    N = len(srcs)
    names = list(srcs[0].keys())
    # one coefficient per input column of a matrix, per element of a vector (RMSNorm)
    coefs = {n: torch.full((N, srcs[0][n].shape[-1]), 1.0 / N, requires_grad=True) for n in names}
    opt = torch.optim.AdamW(list(coefs.values()), lr=float(train.get("lr", 1e-3)),
                            betas=tuple(train.get("betas", (0.9, 0.999))), eps=float(train.get("eps", 1e-8)),
                            weight_decay=float(train.get("weight_decay", 0.0)))
    max_norm = float(train.get("max_grad_norm", 1.0))
    cos, sin = rope_tables(cfg, T)
    times = []
    print(f"torch_dam: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast' if a.bf16 else 'fp32'}, "
          f"{N} sources, {sum(v.numel() for v in srcs[0].values())} parameters per source, "
          f"{B} x {T} tokens x {N} datasets per step", flush=True)
    for step in range(a.steps):
        t0 = time.perf_counter()
        batches = [d[[(step * B + b) % d.shape[0] for b in range(B)]] for d in data]
        # each source on its own dataset
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            teacher = [llama_forward(cfg, srcs[k], batches[k], cos, sin).float() for k in range(N)]
        merged = {n: sum(srcs[i][n] * coefs[n][i] for i in range(N)) for n in names}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            z = llama_forward(cfg, merged, torch.cat(batches), cos, sin).float()
        kls = []
        for k in range(N):
            logq = F.log_softmax(z[k * B:(k + 1) * B].float() / tau, dim=-1)
            logp = F.log_softmax(teacher[k] / tau, dim=-1)
            kl = F.kl_div(logq, logp, log_target=True, reduction="sum") * tau * tau / (B * T)
            kls.append(kl)
        sim = 0.0
        pairs = N * (N - 1) // 2
        for n in names:
            c = coefs[n]
            for i in range(N):
                for j in range(i + 1, N):
                    den = torch.clamp(c[i].norm() * c[j].norm(), min=1e-8)
                    sim = sim + lam / pairs * (c[i] @ c[j]) / den
        loss = sum(kls) + sim
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(list(coefs.values()), max_norm)
        opt.step()
        dt = time.perf_counter() - t0
        times.append(dt)
        print(f"step {step + 1:4d}/{a.steps} | loss {loss.item():.5f} | kl "
              + " ".join(f"{x.item():.5f}" for x in kls)
              + f" | sim {sim.item():.5f} | gnorm {gnorm.item():.3g} | {dt:.2f} s", flush=True)
    steady = times[2:] if len(times) > 2 else times
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"torch_dam: median s/step {statistics.median(steady):.3f} (steps {3 if len(times) > 2 else 1}.."
          f"{len(times)}), peak RSS {rss} KiB", flush=True)


if __name__ == "__main__":
    main()
