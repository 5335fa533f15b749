"""Pre-training step speed of the CTAL model: forward + backward, no optimizer.

    python benchmarks/model.py --preset base --batch 4 --steps 3 --dtype fp32

Rows, all measured in the same run on the same batch:
  ctal (sdpa)   ctal_ds.model.CTALForPretraining, default attention backend
  ctal (sdpa, fused qkv)  the same with fused Q/K/V and K/V projection matmuls
  ctal (eager)  the same model with softmax(QK^T)V written out
  hf roberta    the same network assembled from Hugging Face `transformers` RoBERTa
                modules, with the same weights: text stream and MLM head from
                RobertaForMaskedLM, audio stream a RobertaEncoder whose layers have
                cross-attention (transformers builds those only with is_decoder=True;
                the benchmark passes explicit padding masks and clears is_causal, so
                they are bidirectional like CTAL's). Before timing, its loss is checked
                against ours.
  hf roberta (attn dropout 0.1)  with --own-defaults: the RoBERTa modules at their own
                default attention dropout (RobertaConfig: 0.1), under which SDPA leaves its
                fused kernel; CTAL's own default is 0.0, the setting of the rows above.
  matmul peak   a large square matmul in the same dtype: the machine's attainable
                FLOP/s, against which the rows' utilisation is given.

FLOPs are the matmul FLOPs of `ctal_ds.model.flops.training_flops`, counted per
utterance with its real lengths (L tokens, T frames; d hidden, f FFN, V vocabulary):

    text layer   8 L d^2 + 4 L^2 d + 4 L d f
    audio layer  8 T d^2 + 4 T^2 d            self-attention
               + 4 T d^2 + 4 L d^2 + 4 T L d  cross-attention to H_w^N
               + 4 T d f                      FFN
    frames       2 T 160 d
    heads        n_mlm (2 d^2 + 2 d V) + n_mcam (2 d^2 + 2 d 160)
    training     3 x forward - 2 T 160 d      (backward = 2 matmuls per forward matmul)

Each model runs one warm-up step, then --steps timed steps, the models taking turns
step by step. Rates use the best step (other processes only ever slow a step down;
the median is printed beside it). Samples/s and (frames + tokens)/s count real
positions only, not padding. The peak is the best single 2048^3 matmul, measured before and
after the rows.

bf16 rows are only reported on CPUs with bf16 units (the amx_bf16 or avx512_bf16 flag
in /proc/cpuinfo); elsewhere torch emulates bf16 in fp32 and the benchmark says so and
skips them. The load average is printed before and after, since other processes slow
the rows down. THP_MEM_ALLOC_ENABLE=1 in the environment (read by torch at start-up)
backs large tensors with transparent huge pages, which cuts the page-fault cost of
fresh activations; the header says whether it was set.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch import nn
from transformers import RobertaConfig
from transformers.models.roberta.modeling_roberta import RobertaEncoder, RobertaForMaskedLM

from ctal_ds.model import CTALConfig, CTALForPretraining, count_parameters
from ctal_ds.model.attention import set_fused_projections
from ctal_ds.model.flops import training_flops
from ctal_ds.model.pretraining import masked_acoustic_loss, masked_lm_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def make_batch(config: CTALConfig, batch: int, frames: int, tokens: int, seed: int = 0) -> dict:
    """A pre-training batch per docs/contracts.md; lengths vary down to 90 % of the maximum."""
    g = torch.Generator().manual_seed(seed)
    text_lengths = torch.randint(int(0.9 * tokens), tokens + 1, (batch,), generator=g)
    audio_lengths = torch.randint(int(0.9 * frames), frames + 1, (batch,), generator=g)
    text_lengths[0], audio_lengths[0] = tokens, frames
    text_mask = torch.arange(tokens)[None] < text_lengths[:, None]
    audio_mask = torch.arange(frames)[None] < audio_lengths[:, None]
    ids = torch.randint(5, config.vocab_size, (batch, tokens), generator=g)
    ids[:, 0] = 0
    ids = torch.where(text_mask, ids, config.pad_token_id)
    mlm = (torch.rand(batch, tokens, generator=g) < 0.15) & text_mask
    mlm[:, 0] = False
    feats = torch.randn(batch, frames, config.feat_dim, generator=g) * audio_mask[..., None]
    mcam = (torch.rand(batch, frames, generator=g) < 0.15) & audio_mask
    return {
        "input_ids": torch.where(mlm, 4, ids),
        "text_mask": text_mask,
        "audio_feats": feats.masked_fill(mcam[..., None], 0.0),
        "audio_mask": audio_mask,
        "mlm_labels": torch.where(mlm, ids, -100),
        "mcam_targets": feats,
        "mcam_mask": mcam,
    }


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The first `flags` line of /proc/cpuinfo; empty where there is none (non-Linux, non-x86)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_bf16_units(flags: set[str], machine: str | None = None) -> bool:
    """True on x86 CPUs with AMX-BF16 or AVX512-BF16; elsewhere bf16 is emulated."""
    machine = platform.machine() if machine is None else machine
    return machine in ("x86_64", "AMD64") and bool(flags & {"amx_bf16", "avx512_bf16"})


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


class HFReference(nn.Module):
    """CTAL built from transformers' RoBERTa modules (see the module docstring)."""

    def __init__(self, config: CTALConfig, attention_dropout: float | None = None):
        super().__init__()
        common = dict(
            hidden_size=config.hidden_size,
            num_attention_heads=config.num_heads,
            intermediate_size=config.ffn_size,
            hidden_act="gelu",
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=(
                config.attention_dropout if attention_dropout is None else attention_dropout
            ),
            layer_norm_eps=config.layer_norm_eps,
            pad_token_id=config.pad_token_id,
            type_vocab_size=1,
        )
        text_config = RobertaConfig(
            vocab_size=config.vocab_size,
            num_hidden_layers=config.num_text_layers,
            # RoBERTa numbers positions from pad_token_id + 1.
            max_position_embeddings=config.max_tokens + config.pad_token_id + 1,
            **common,
        )
        audio_config = RobertaConfig(
            num_hidden_layers=config.num_audio_layers,
            is_decoder=True,
            add_cross_attention=True,
            **common,
        )
        for c in (text_config, audio_config):
            c._attn_implementation = "sdpa"
        self.text = RobertaForMaskedLM(text_config)
        self.audio = RobertaEncoder(audio_config)
        for layer in self.audio.layer:
            layer.attention.self.is_causal = False
        self.frame_projection = nn.Linear(config.feat_dim, config.hidden_size)
        self.frame_position = nn.Embedding(config.max_frames, config.hidden_size)
        self.frame_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.mcam_head = CTALForPretraining(config, use_mlm=False).mcam_head

    def forward(self, batch: dict) -> dict:
        text_mask, audio_mask = batch["text_mask"], batch["audio_mask"]
        h_w = self.text.roberta(batch["input_ids"], attention_mask=text_mask).last_hidden_state
        frames = batch["audio_feats"].shape[1]
        positions = torch.arange(frames, device=audio_mask.device)
        feats = batch["audio_feats"].to(self.frame_projection.weight.dtype)
        h_a = self.dropout(self.frame_norm(self.frame_projection(feats) + self.frame_position(positions)))
        h_a = self.audio(
            h_a,
            attention_mask=audio_mask[:, None, None, :],
            encoder_hidden_states=h_w,
            encoder_attention_mask=text_mask[:, None, None, :],
        ).last_hidden_state
        mlm_loss = masked_lm_loss(self.text.lm_head, h_w, batch["mlm_labels"])[0]
        mcam_loss = masked_acoustic_loss(
            self.mcam_head, h_a, batch["mcam_targets"], batch["mcam_mask"]
        )[0]
        return {"loss": mlm_loss + mcam_loss}


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def _copy_attention(hf_attention: nn.Module, ours: nn.Module, norm: nn.Module) -> None:
    for name in ("query", "key", "value"):
        _copy(getattr(hf_attention.self, name), getattr(ours, name))
    _copy(hf_attention.output.dense, ours.output)
    _copy(hf_attention.output.LayerNorm, norm)


def _copy_ffn(hf_layer: nn.Module, ours: nn.Module) -> None:
    _copy(hf_layer.intermediate.dense, ours.ffn.up)
    _copy(hf_layer.output.dense, ours.ffn.down)
    _copy(hf_layer.output.LayerNorm, ours.ffn_norm.norm)


@torch.no_grad()
def copy_weights(hf: HFReference, ours: CTALForPretraining) -> None:
    """Give the RoBERTa-module model CTAL's weights, so both compute the same function."""
    text_emb, hf_emb = ours.ctal.text_encoder.embeddings, hf.text.roberta.embeddings
    hf_emb.word_embeddings.weight.copy_(text_emb.token.weight)
    offset = ours.config.pad_token_id + 1
    hf_emb.position_embeddings.weight[offset:].copy_(text_emb.position.weight)
    hf_emb.token_type_embeddings.weight.zero_()
    _copy(hf_emb.LayerNorm, text_emb.norm)
    for hf_layer, layer in zip(hf.text.roberta.encoder.layer, ours.ctal.text_encoder.layers):
        _copy_attention(hf_layer.attention, layer.self_attention, layer.self_attention_norm.norm)
        _copy_ffn(hf_layer, layer)
    _copy(hf.text.lm_head.dense, ours.mlm_head.dense)
    _copy(hf.text.lm_head.layer_norm, ours.mlm_head.norm)
    hf.text.lm_head.bias.copy_(ours.mlm_head.decoder.bias)

    audio_emb = ours.ctal.audio_encoder.embeddings
    _copy(hf.frame_projection, audio_emb.projection)
    _copy(hf.frame_position, audio_emb.position)
    _copy(hf.frame_norm, audio_emb.norm)
    for hf_layer, layer in zip(hf.audio.layer, ours.ctal.audio_encoder.layers):
        _copy_attention(hf_layer.attention, layer.self_attention, layer.self_attention_norm.norm)
        _copy_attention(hf_layer.crossattention, layer.cross_attention, layer.cross_attention_norm.norm)
        _copy_ffn(hf_layer, layer)
    _copy(hf.mcam_head, ours.mcam_head)


def training_step(model: nn.Module, batch: dict) -> float:
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    model(batch)["loss"].backward()
    return time.perf_counter() - start


def interleaved_step_times(
    models: dict[str, nn.Module], batch: dict, steps: int
) -> dict[str, list[float]]:
    """Seconds of each timed step of each model, the models taking turns step by step.

    Taking turns spreads the load of other processes on a shared machine over all
    rows instead of penalising whichever ran while it peaked.
    """
    for model in models.values():
        training_step(model, batch)  # warm-up: allocator and kernel selection
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(steps):
        for name, model in models.items():
            times[name].append(training_step(model, batch))
    return times


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of single size^3 matmuls: the attainable peak, so the best, not the mean."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base", choices=["tiny", "base", "large"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=800, help="max frames (800 = 10 s)")
    parser.add_argument("--tokens", type=int, default=40, help="max tokens")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    # On a machine shared with other jobs, OpenMP threads wait on each other and make
    # timings erratic; --threads 1 gives stable numbers there.
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--own-defaults", action="store_true",
        help="also time the RoBERTa modules at their own default attention dropout (0.1)",
    )  # fmt: skip
    args = parser.parse_args()
    print(f"cpu: {cpu_model()}  load average: {load_average()}  "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")  # fmt: skip
    if args.dtype == "bf16" and not has_bf16_units(cpu_flags()):
        print(
            f"bf16 is emulated on this CPU ({platform.machine()}, no amx_bf16 / avx512_bf16 flag "
            "in /proc/cpuinfo): its bf16 rows would time the emulation, so they are skipped"
        )
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)

    # Dropout off: timing the same arithmetic in every row and comparing losses exactly.
    config = CTALConfig.preset(args.preset, dropout=0.0)
    batch = make_batch(config, args.batch, args.frames, args.tokens)
    batch["audio_feats"] = batch["audio_feats"].to(dtype)
    ours = CTALForPretraining(config).to(dtype).train()
    eager = CTALForPretraining(config.replace(attn_impl="eager")).to(dtype).train()
    eager.load_state_dict(ours.state_dict())
    fused = CTALForPretraining(config).to(dtype).train()
    fused.load_state_dict(ours.state_dict())
    set_fused_projections(fused, True)
    hf = HFReference(config)
    copy_weights(hf, ours)
    hf = hf.to(dtype).train()

    with torch.no_grad():
        losses = {name: m(batch)["loss"].item() for name, m in [("ours", ours), ("hf", hf)]}
    text_lengths = batch["text_mask"].sum(1).tolist()
    audio_lengths = batch["audio_mask"].sum(1).tolist()
    flops = training_flops(
        config, text_lengths, audio_lengths,
        int((batch["mlm_labels"] != -100).sum()), int(batch["mcam_mask"].sum()),
    )  # fmt: skip
    positions = sum(text_lengths) + sum(audio_lengths)

    print(
        f"preset={args.preset} params={count_parameters(ours) / 1e6:.1f}M dtype={args.dtype} "
        f"batch={args.batch} frames<={args.frames} tokens<={args.tokens} steps={args.steps} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"training FLOPs per step (matmul): {flops / 1e9:.1f} G")
    print(f"loss ours={losses['ours']:.6f} hf={losses['hf']:.6f} |diff|={abs(losses['ours'] - losses['hf']):.2e}")

    peak = matmul_peak(dtype)
    models = {
        "ctal (sdpa)": ours,
        "ctal (sdpa, fused qkv)": fused,
        "ctal (eager)": eager,
        "hf roberta modules": hf,
    }
    if args.own_defaults:
        hf_default = HFReference(config, attention_dropout=RobertaConfig().attention_probs_dropout_prob)
        copy_weights(hf_default, ours)
        models["hf roberta (attn dropout 0.1)"] = hf_default.to(dtype).train()
    step_times = interleaved_step_times(models, batch, args.steps)
    peak = max(peak, matmul_peak(dtype))
    print(f"load average after: {load_average()}")
    header = (
        f"{'model':<30} {'best s':>8} {'median s':>9} {'samples/s':>10} {'pos/s':>9} "
        f"{'GFLOP/s':>9} {'of peak':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, times in step_times.items():
        seconds = min(times)
        achieved = flops / seconds
        print(
            f"{name:<30} {seconds:>8.3f} {statistics.median(times):>9.3f} "
            f"{args.batch / seconds:>10.2f} {positions / seconds:>9.0f} "
            f"{achieved / 1e9:>9.1f} {100 * achieved / peak:>7.1f}%"
        )
    print(f"{'matmul peak':<30} {'':>8} {'':>9} {'':>10} {'':>9} {peak / 1e9:>9.1f} {'100.0%':>8}")


if __name__ == "__main__":
    main()
