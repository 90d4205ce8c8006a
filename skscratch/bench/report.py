"""The benchmark's report, as text."""

from __future__ import annotations

_PATHS = ("reference", "im2col", "direct", "fused", "skscratch", "torch")


def _table(rows: list[dict], gbs: float) -> list[str]:
    paths = [p for p in _PATHS if any(p in r["times"] for r in rows)]
    width = max(len(r["name"]) for r in rows)
    head = f"{'':<{width}}" + "".join(f"{p:>11}" for p in paths)
    lines = [head + ("   torch/skscratch" if "torch" in paths else "")]
    for r in rows:
        t = r["times"]
        cells = "".join(f"{t[p] * 1e3:9.1f}ms" if p in t else f"{'':>11}" for p in paths)
        if "torch" in t:
            cells += f"   {t['torch'] / t[r['fast']]:6.2f}x"
        lines.append(f"{r['name']:<{width}}{cells}")
        fast = t[r["fast"]]
        notes = []
        if "flops" in r:
            notes.append(f"{r['fast']}: {r['flops'] / fast / 1e9:.1f} GFLOP/s")
        if "bytes" in r:
            notes.append(f"{r['bytes'] / fast / gbs:.0%} of the copy bandwidth")
        if "images" in r:
            notes += [
                f"{p}: {r['images'] / t[p]:.1f} images/s" for p in ("skscratch", "torch") if p in t
            ]
        if notes:
            lines.append(f"{'':<4}" + ", ".join(notes))
    return lines


def format_report(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores; kernels on {m['kernel_threads']} threads"
        + (f"; torch {m['torch']} on {m['torch_threads']} threads" if "torch" in m else ""),
        f"times are medians of {result['settings']['repeats']} runs after "
        f"{result['settings']['warmup']} warm-up, float32",
        f"memory bandwidth (array copy, read + write): {result['copy_bandwidth'] / 1e9:.1f} GB/s",
    ]
    gbs = result["copy_bandwidth"]
    for title, key in (
        ("operations", "ops"),
        ("SK unit", "sk_unit"),
        ("training steps", "steps"),
    ):
        lines += ["", title, *_table(result[key], gbs)]
    lines += ["", "peak resident memory of a training step (fresh process, 3 steps)"]
    for r in result["memory"]:
        cells = [
            f"{f}: {r[f]['peak'] / 2**20:,.0f} MiB "
            f"({(r[f]['peak'] - r[f]['before']) / 2**20:+,.0f} over the model and data)"
            for f in ("skscratch", "torch")
            if f in r
        ]
        lines.append(f"  {r['name']}: " + ", ".join(cells))
    lines += ["", "training step of each framework alone (fresh process, its own default settings)"]
    for r in result["memory"]:
        cells = [
            f"{f}: {r['images'] / r[f]['step']:.1f} images/s"
            for f in ("skscratch", "torch")
            if f in r
        ]
        ratio = f" ({r['torch']['step'] / r['skscratch']['step']:.2f}x)" if "torch" in r else ""
        lines.append(f"  {r['name']}: " + ", ".join(cells) + ratio)
    c = result["compile"]
    lines += [
        "",
        f"first training step in a new process: {c['cold']:.1f} s with an empty kernel cache "
        f"(compiling), {c['warm']:.2f} s with the cache; later steps {c['later'] * 1e3:.0f} ms",
    ]
    return "\n".join(lines)
