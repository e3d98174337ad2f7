"""Markdown tables of the benchmark's sections, with the reference figures beside them."""

from __future__ import annotations

from typing import Any

from benchmarks.config import REFERENCE


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats with 3 significant digits below 10, else 1 decimal."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def report(name: str, res: dict[str, Any], results: dict[str, Any]) -> str:
    """Markdown tables of one section, with the reference figures beside."""
    ref = REFERENCE
    if name == "dataset":
        rows = [[k, res[k]["samples_per_s_median"], res[k]["samples_per_s_max"], res[k]["n"]]
                for k in ("cold", "warm")]  # fmt: skip
        return f"### dataset ({res['dataroot']}, {res['vertebrae']} vertebrae)\n" + md_table(
            ["volume cache", "samples/s median", "samples/s max", "epochs"], rows
        )
    if name == "gan":
        rows = [[f"forward b1 {f['precision']}", f["median_ms"], f["min_ms"],
                 ref["gan_forward_ms_b1_fp32"]] for f in res["forward"]]  # fmt: skip
        rows += [[f"train step b{s['batch']} {s['precision']}", s["median_ms"], s["min_ms"],
                  1000 * ref["gan_train_step_s_b4_fp32"]] for s in res["train_step"]]  # fmt: skip
        head = f"### gan generator: {res['params_M']:.2f} M params, {res['size_mb_fp32']:.1f} MB"
        return head + "\n" + md_table(["what", "median ms", "min ms", "original ms"], rows)
    gan = {s["precision"]: s["median_ms"] for s in results.get("gan", {}).get("train_step", [])}
    rows = [[f"train step b{s['batch']} {s['precision']}", s["median_ms"], s["min_ms"],
             gan.get(s["precision"])] for s in res["train_step"]]  # fmt: skip
    u = res["unet_call_full_slice_fp32"]
    rows.append(["U-Net call, whole slice, b1 fp32", u["median_ms"], u["min_ms"], None])
    samp = [[e["batch"], e["precision"], e["steps"], e["ms_per_slice"]["median_ms"],
             e["ms_per_slice"]["min_ms"], e["per_step_ms"]["median_ms"], e["method"]]
            for e in res["sampling"]]  # fmt: skip
    v = res["vertebra"]
    est = ", ".join(f"{p} {s:.1f} s" for p, s in v["estimated_seconds"].items())
    return "\n".join([
        f"### diffusion U-Net: {res['params_M']:.2f} M params, {res['size_mb_fp32']:.1f} MB, "
        f"U-Net input {res['unet_input']}",
        md_table(["what", "median ms", "min ms", "GAN ms"], rows),
        f"diffusers U-Net reference: {ref['diffusers_unet_step_ms_256']:g} ms per step at 256 px"
        f" ({ref['diffusers_s_per_slice_25_steps']:g} s per slice at 25 steps)\n",
        md_table(["batch", "precision", "steps", "ms/slice median", "ms/slice min", "ms/step",
                  "how"], samp),
        res["sampling_note"] + "\n",
        f"whole vertebra: {v['slices']} slices, {v['calls']} call(s) of batch {v['batch']}, "
        f"{v['steps']} steps, {v['precision']}: **{v['seconds']:.1f} s** measured "
        f"(target < {v['target_s']:g} s: {'met' if v['meets_target'] else 'NOT met'}); "
        f"extrapolated from the per-step figures: {est}; GAN pipeline (original): "
        f"~{ref['gan_pipeline_s_per_vertebra']:.1f} s ({ref['gan_calls_per_vertebra']} calls "
        f"of {ref['gan_forward_ms_b1_fp32']:g} ms); ours at 130 calls: "
        + (", ".join(f"{p} {s:.1f} s" for p, s in v["gan_pipeline_s_ours"].items()) or "-"),
    ])  # fmt: skip
