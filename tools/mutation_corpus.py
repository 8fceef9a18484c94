#!/usr/bin/env python3
"""mutation_corpus.py — a seeded, reproducible corpus of damaged inputs (issue 24), run through dam_dist.

Three families, each mutated with random.Random(SEED) so that a run is reproducible case for case:
  tokenizer  the fixtures' tokenizer.json files: byte flips, truncations and structural JSON edits
             (a key removed, a value replaced by another type or an extreme number, an array
             emptied or doubled), loaded by `dam_dist tokenize` on a fixed text;
  tokens     a toy token file (`dam_dist toy`): bit flips anywhere in the file (data and HDF5
             metadata) and truncations, opened by `dam_dist inspect --data` (the same dataset_open
             every command uses), whose content hash must equal the original's when it accepts;
  ckpt       the newest checkpoint (step 6 of 12) of a toy run: bit flips anywhere, bit flips in
             the coefficient / Adam data, truncations; then `--resume auto` to the end, whose
             dam_coefficients.safetensors must equal an uninterrupted run's bit for bit.
Every case must end in a one-line error (exit 1, one stderr line "dam_dist: error: ...") or a
correct result (exit 0; for tokens and checkpoints the same content / coefficients as the intact
input). A crash (a signal, a sanitizer report, another exit status), a hang (over --timeout s) or a
silent acceptance (exit 0 with other content or coefficients) is a failure.

  tools/mutation_corpus.py [--fast] [--seed N] [--bin ./dam_dist] [--timeout S] [--keep DIR]
--fast: 16 + 15 + 12 cases (tests/cli_checksum.sh, under a minute); default 150 + 80 + 60.
Exit status 0 when every case passes; the last line sums the outcomes."""
import argparse, filecmp, json, os, random, re, shutil, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--fast", action="store_true")
ap.add_argument("--seed", type=int, default=24)
ap.add_argument("--bin", default=os.environ.get("DAM_BIN", "./dam_dist"))
ap.add_argument("--timeout", type=float, default=60)
ap.add_argument("--keep", help="keep the work directory (failing cases stay there)")
args = ap.parse_args()
BIN = os.path.abspath(args.bin)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = (16, 15, 12) if args.fast else (150, 80, 60)
rng = random.Random(args.seed)
W = args.keep or tempfile.mkdtemp(prefix="dam_mutation_")
os.makedirs(W, exist_ok=True)
env = dict(os.environ, OPENBLAS_NUM_THREADS="1", ASAN_OPTIONS="detect_leaks=0")
counts = {}
failures = []


def run(argv, stdin=None):
    t0 = time.time()
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, timeout=args.timeout, env=env, cwd=W)
    except subprocess.TimeoutExpired:
        return "hang", "", time.time() - t0
    err = p.stderr.decode("utf-8", "replace")
    run.stdout = p.stdout.decode("utf-8", "replace")
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("dam_dist: warning:")]
    if p.returncode == 0 and "Sanitizer" not in err:
        return "ok", err, time.time() - t0
    if p.returncode == 1 and len(lines) == 1 and lines[0].startswith("dam_dist: error: "):
        return "error", lines[0], time.time() - t0
    return "crash", "rc %d: %s" % (p.returncode, err[-400:]), time.time() - t0


def record(family, name, outcome, detail):
    counts.setdefault(family, {}).setdefault(outcome, 0)
    counts[family][outcome] += 1
    if outcome in ("crash", "hang", "silent"):
        failures.append("%s %s: %s %s" % (family, name, outcome, detail[:300]))


def flip_bits(data, k, lo=0, hi=None):
    b = bytearray(data)
    hi = len(b) if hi is None else hi
    for _ in range(k):
        i = rng.randrange(lo, hi)
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


# ---------------------------------------------------------------- tokenizer.json
def mutate_json(obj):
    """One structural edit somewhere in the tree."""
    paths = []

    def walk(o, path):
        if isinstance(o, dict):
            for k in list(o)[:64]:
                paths.append(path + [k])
                walk(o[k], path + [k])
        elif isinstance(o, list):
            for i in range(min(len(o), 8)):
                paths.append(path + [i])
                walk(o[i], path + [i])

    walk(obj, [])
    if not paths:
        return obj
    path = rng.choice(paths)
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    key = path[-1]
    op = rng.randrange(6)
    if op == 0 and isinstance(parent, dict):
        del parent[key]
    elif op == 1:
        parent[key] = rng.choice([None, True, "", "x" * 300, [], {}, -1, 2**31, 2**63, 1e308, -0.5, "\udcff"[:0]])
    elif op == 2 and isinstance(parent[key], list):
        parent[key] = [] if rng.random() < 0.5 else parent[key] + parent[key]
    elif op == 3 and isinstance(parent[key], str):
        parent[key] = rng.choice(["", parent[key] * 2, parent[key][::-1], "(((", "[^", "\\p{Zz}", "\u0000"])
    elif op == 4 and isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool):
        parent[key] = rng.choice([-1, 0, 2**31 - 1, 2**31, 10**12, 0.5])
    else:
        parent[key] = rng.choice([0, "str", [1, 2], {"type": "BPE"}])
    return obj


def tokenizer_family(n):
    srcs = sorted(d for d in os.listdir(os.path.join(REPO, "tests/fixtures/tokenizers")))
    text = "Hello world, 12+35=47! caf\u00e9 \u4f60\u597d\n".encode()
    for c in range(n):
        src = os.path.join(REPO, "tests/fixtures/tokenizers", srcs[c % len(srcs)], "tokenizer.json")
        data = open(src, "rb").read()
        kind = ("flip", "truncate", "json", "json2")[c % 4]
        if kind == "flip":
            data = flip_bits(data, rng.randrange(1, 5))
        elif kind == "truncate":
            data = data[: rng.randrange(len(data))]
        else:
            obj = json.loads(data)
            for _ in range(1 if kind == "json" else 3):
                obj = mutate_json(obj)
            data = json.dumps(obj).encode()
        d = os.path.join(W, "tok%03d" % c)
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "tokenizer.json"), "wb").write(data)
        outcome, detail, _ = run([BIN, "tokenize", "--tokenizer", d], stdin=text)
        record("tokenizer", "tok%03d (%s of %s)" % (c, kind, srcs[c % len(srcs)]), outcome, detail)
        if outcome in ("ok", "error"):
            shutil.rmtree(d)


# ---------------------------------------------------------------- token files
def h5_offset(path, dataset):
    out = subprocess.run(["h5dump", "-p", "-H", "-d", dataset, path], capture_output=True, text=True).stdout
    m = re.search(r"OFFSET (\d+)", out)
    s = re.search(r"SIZE (\d+)", out)
    return (int(m.group(1)), int(s.group(1))) if m and s else None


def content_line(out):
    m = re.search(r"content xxh64 ([0-9a-f]+)", out)
    return m.group(1) if m else None


def tokens_family(n, toy):
    src = os.path.join(toy, "data/m0.h5")
    ref = subprocess.run([BIN, "inspect", "--data", src], capture_output=True, text=True, env=env).stdout
    want = content_line(ref)
    ids = h5_offset(src, "/input_ids")
    orig = open(src, "rb").read()
    for c in range(n):
        kind = ("flip-ids", "flip-any", "truncate")[c % 3]
        if kind == "flip-ids" and ids:
            data = flip_bits(orig, rng.randrange(1, 3), ids[0], ids[0] + ids[1])
        elif kind == "truncate":
            data = orig[: rng.randrange(len(orig))]
        else:
            data = flip_bits(orig, rng.randrange(1, 4))
        p = os.path.join(W, "tokens%03d.h5" % c)
        open(p, "wb").write(data)
        outcome, detail, _ = run([BIN, "inspect", "--data", p])
        if outcome == "ok":
            outcome = "correct" if content_line(run.stdout) == want else "silent"
            detail = run.stdout
        record("tokens", "tokens%03d (%s)" % (c, kind), outcome, detail)
        if outcome in ("correct", "error"):
            os.remove(p)


# ---------------------------------------------------------------- checkpoints
def ckpt_family(n, toy):
    cfg = os.path.join(toy, "ck.json")  # beside the toy: its paths are relative to it
    text = open(os.path.join(toy, "config.json")).read()
    open(cfg, "w").write(text.replace('"output":', '"checkpoint": {"every": 2, "keep": 0}, "output":'))
    run([BIN, "--config", cfg, "--out", os.path.join(W, "ref")])
    ref = os.path.join(W, "ref/dam_coefficients.safetensors")
    base = os.path.join(W, "base")
    subprocess.run([BIN, "--config", cfg, "--out", base, "--max-steps", "6"], capture_output=True, env=env)
    step6 = os.path.join(base + ".ckpt", "step_00000006.h5")
    orig = open(step6, "rb").read()
    names = subprocess.run(["h5ls", "-r", step6], capture_output=True, text=True).stdout
    tensors = [l.split()[0] for l in names.splitlines() if " Dataset " in l]
    for c in range(n):
        kind = ("flip-data", "flip-any", "truncate", "flip-data")[c % 4]
        if kind == "flip-data":
            t = rng.choice(tensors)
            off = h5_offset(step6, t)
            data = flip_bits(orig, 1, off[0], off[0] + off[1])
            kind += " " + t
        elif kind == "truncate":
            data = orig[: rng.randrange(len(orig))]
        else:
            data = flip_bits(orig, rng.randrange(1, 4))
        out = os.path.join(W, "ck%03d" % c)
        shutil.copytree(base + ".ckpt", out + ".ckpt")
        open(os.path.join(out + ".ckpt", "step_00000006.h5"), "wb").write(data)
        outcome, detail, _ = run([BIN, "--config", cfg, "--out", out, "--resume", "auto"])
        if outcome == "ok":
            got = os.path.join(out, "dam_coefficients.safetensors")
            outcome = "correct" if os.path.exists(got) and filecmp.cmp(got, ref, shallow=False) else "silent"
        record("ckpt", "ck%03d (%s)" % (c, kind), outcome, detail)
        if outcome in ("correct", "error"):
            shutil.rmtree(out + ".ckpt", ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            for f in (out + ".metrics.jsonl",):
                if os.path.exists(f):
                    os.remove(f)


t0 = time.time()
toy = os.path.join(W, "toy")
subprocess.run([BIN, "toy", "--out", toy, "--size", "tiny", "--models", "2", "--seed", "5"], capture_output=True,
               check=True, env=env)
tokenizer_family(N[0])
tokens_family(N[1], toy)
ckpt_family(N[2], toy)
for f in failures:
    print("FAIL", f)
for fam, c in counts.items():
    print("%-9s %s" % (fam, ", ".join("%s %d" % kv for kv in sorted(c.items()))))
bad = sum(c.get(k, 0) for c in counts.values() for k in ("crash", "hang", "silent"))
total = sum(sum(c.values()) for c in counts.values())
if not args.keep and not bad:
    shutil.rmtree(W, ignore_errors=True)
print("mutation corpus (seed %d): %d cases in %.0f s: %d crashes, %d hangs, %d silent acceptances" %
      (args.seed, total, time.time() - t0, sum(c.get("crash", 0) for c in counts.values()),
       sum(c.get("hang", 0) for c in counts.values()), sum(c.get("silent", 0) for c in counts.values())))
sys.exit(1 if bad else 0)
