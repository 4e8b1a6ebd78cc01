# A dms-retrofit export as a transformers model (trust_remote_code=True): the base decoder
# (Llama, Qwen2, Qwen3, Mistral) with Dynamic Memory Sparsification on. Written for
# dms-retrofit (not derived from other code); it follows the toolkit's C++ model exactly:
#   - decision logits per layer and KV head: adapter z = scale * (W rmsnorm(x) + b) - offset
#     on the residual entering the layer, or the query neuron z = scale * q[d-1] - offset of
#     each group's first query head (that coordinate is then zeroed); per-layer mode uses
#     head 0's logits for every head; a decision is hard: e = z > 0;
#   - delayed eviction: the decision at position j+1 marks token j; query i sees key j iff
#     j <= i and (i - j <= window or token j is unmarked), and inside the model's own
#     sliding window (Mistral);
#   - generate(): a cache that really drops a marked token once it is more than `window`
#     positions behind the newest one (memory follows the live tokens per head).
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_dms import DmsConfig


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def family(config):
    return getattr(config, "model_type", "llama")


def head_dim(config):
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_inv_freq(config):
    d = head_dim(config)
    theta = getattr(config, "rope_theta", 10000.0)
    inv = [1.0 / theta ** (2 * i / d) for i in range(d // 2)]
    s = getattr(config, "rope_scaling", None) or {}
    if s.get("rope_type", s.get("type")) == "llama3":
        old = float(s["original_max_position_embeddings"])
        low, high, factor = s["low_freq_factor"], s["high_freq_factor"], s["factor"]
        out = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen > old / low:
                f = f / factor
            elif wavelen >= old / high:
                smooth = (old / wavelen - low) / (high - low)
                f = (1 - smooth) * f / factor + smooth * f
            out.append(f)
        inv = out
    return torch.tensor(inv, dtype=torch.float64)


def rope(x, positions, inv):
    ang = positions.to(torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class DmsAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config
        self.H, self.K, self.d = c.num_attention_heads, c.num_key_value_heads, head_dim(c)
        fam = family(c)
        qkv_bias = fam == "qwen2" or bool(getattr(c, "attention_bias", False))
        self.q_proj = nn.Linear(c.hidden_size, self.H * self.d, bias=qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, self.K * self.d, bias=qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, self.K * self.d, bias=qkv_bias)
        self.o_proj = nn.Linear(self.H * self.d, c.hidden_size,
                                bias=bool(getattr(c, "attention_bias", False)) and fam != "qwen2")
        self.qk_norm = fam == "qwen3"
        if self.qk_norm:
            self.q_norm = RMSNorm(self.d, c.rms_norm_eps)
            self.k_norm = RMSNorm(self.d, c.rms_norm_eps)
        self.adapter = bool(c.dms_separate_alpha)
        if self.adapter:
            self.dms_proj_alpha = nn.Linear(c.hidden_size, self.K, bias=qkv_bias)
            self.dms_proj_alpha_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.scale, self.offset = c.dms_alpha_scale, c.dms_initial_alpha_offset
        self.per_layer = c.dms_alpha_per == "layer"
        self.eps = c.rms_norm_eps

    def qkvz(self, residual, h, positions, inv):
        B, T, _ = h.shape
        q = self.q_proj(h).view(B, T, self.H, self.d).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.K, self.d).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.K, self.d).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        G = self.H // self.K
        if self.adapter:
            z = (self.dms_proj_alpha(self.dms_proj_alpha_norm(residual)) * self.scale - self.offset)
            z = z.transpose(1, 2)  # [B, K, T]
        else:
            z = q[:, ::G, :, self.d - 1] * self.scale - self.offset
        if self.per_layer:
            z = z[:, :1].expand_as(z)
        if not self.adapter:
            q = self.zero_neuron(q)
        q = rope(q, positions, inv)
        if not self.adapter:
            q = self.zero_neuron(q)
        k = rope(k, positions, inv)
        return q, k, v, z

    def zero_neuron(self, q):
        keep = torch.ones(self.H, self.d, dtype=q.dtype, device=q.device)
        keep[:: self.H // self.K, self.d - 1] = 0
        return q * keep.view(1, self.H, 1, self.d)

    def attend(self, q, k, v, bias):
        """q [B, H, T, d], k/v [B, K, S, d], bias [B, K, T, S] -> [B, T, H*d]"""
        B, H, T, d = q.shape
        G = H // self.K
        qg = (q * (1.0 / math.sqrt(d))).view(B, self.K, G, T, d)
        scores = torch.einsum("bkgtd,bksd->bkgts", qg.float(), k.float()) + bias[:, :, None]
        p = torch.softmax(scores, dim=-1)
        out = torch.einsum("bkgts,bksd->bkgtd", p, v.float()).to(q.dtype)
        return out.reshape(B, H, T, d).transpose(1, 2).reshape(B, T, H * d)


class DmsLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = DmsAttention(c)
        mlp_bias = bool(getattr(c, "mlp_bias", False))
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=mlp_bias)
        self.mlp.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=mlp_bias)
        self.mlp.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=mlp_bias)

    def ffn(self, x):
        m = self.mlp
        return m.down_proj(F.silu(m.gate_proj(x)) * m.up_proj(x))


class DmsPreTrainedModel(PreTrainedModel):
    config_class = DmsConfig
    base_model_prefix = "model"
    _no_split_modules = ["DmsLayer"]

    def _init_weights(self, module):
        pass  # every weight comes from the export


class DmsForCausalLM(DmsPreTrainedModel):
    """The base decoder with DMS. forward() runs a whole sequence with the eviction mask;
    generate() decodes with the evicting cache. Extra outputs: `decisions` [L, B, K, T]
    (hard, 0/1) and `decision_logits` (the z above)."""

    def __init__(self, config):
        super().__init__(config)
        c = config
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.model.layers = nn.ModuleList([DmsLayer(c) for _ in range(c.num_hidden_layers)])
        self.model.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        # A tied head is the embedding itself (no parameter of its own: nothing for a loader
        # to leave untied or uninitialised).
        self.tied = bool(getattr(c, "tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.window = int(c.dms_window_size)
        sliding = getattr(c, "sliding_window", None) if family(c) == "mistral" else None
        self.sliding = int(sliding) if sliding else 0
        self.eviction = not bool(c.dms_disable_eviction)
        # RoPE frequencies are computed when first used, not kept as a buffer: loaders that
        # build the model on the meta device leave buffers they did not read uninitialised.
        self._inv_freq = None
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return None if self.tied else self.lm_head

    def inv_freq(self, device):
        if self._inv_freq is None or self._inv_freq.device != device:
            self._inv_freq = rope_inv_freq(self.config).to(device)
        return self._inv_freq

    def head(self, x):
        h = self.model.norm(x)
        return F.linear(h, self.model.embed_tokens.weight) if self.tied else self.lm_head(h)

    def visible(self, age, marked):
        """The visibility rule, for tensors (the mask) and plain ints/bools (the cache):
        age = i - j, marked = token j's mark -> bool."""
        ok = age >= 0
        if self.eviction:
            ok = ok & ((age <= self.window) | (marked == 0))
        if self.sliding > 0:
            ok = ok & (age < self.sliding)
        return ok

    def forward(self, input_ids, labels=None, **kwargs):
        B, T = input_ids.shape
        pos = torch.arange(T, device=input_ids.device)
        age = pos[:, None] - pos[None, :]  # [T, S]
        x = self.model.embed_tokens(input_ids)
        zs, es = [], []
        for layer in self.model.layers:
            att = layer.self_attn
            q, k, v, z = att.qkvz(x, layer.input_layernorm(x), pos, self.inv_freq(x.device))
            e = z > 0  # [B, K, T]
            marked = torch.zeros_like(e)
            marked[..., :-1] = e[..., 1:]  # the decision at j+1 marks token j
            vis = self.visible(age[None, None], marked[:, :, None, :])  # [B, K, T, S]
            bias = torch.zeros(vis.shape, dtype=torch.float32, device=x.device)
            bias.masked_fill_(~vis, float("-inf"))
            x = x + att.o_proj(att.attend(q, k, v, bias))
            x = x + layer.ffn(layer.post_attention_layernorm(x))
            zs.append(z)
            es.append(e)
        logits = self.head(x)
        out = CausalLMOutputWithPast(logits=logits)
        out["decision_logits"] = torch.stack(zs)
        out["decisions"] = torch.stack(es).to(logits.dtype)
        if labels is not None:
            out["loss"] = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        return out

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens=32, do_sample=False, temperature=1.0,
                 eos_token_id=None, **kwargs):
        """Token by token through the evicting cache (batch 1 per row). Afterwards
        `self.dms_cache_stats` holds, per layer and KV head, the peak number of cached
        entries and the end-of-sequence count, and the three compression figures."""
        rows = []
        stats = []
        for b in range(input_ids.shape[0]):
            ids, st = self._generate_row(input_ids[b], max_new_tokens, do_sample, temperature,
                                         eos_token_id)
            rows.append(ids)
            stats.append(st)
        width = max(len(r) for r in rows)
        pad = self.config.eos_token_id if self.config.eos_token_id is not None else 0
        out = torch.full((len(rows), width), pad, dtype=input_ids.dtype, device=input_ids.device)
        for b, r in enumerate(rows):
            out[b, : len(r)] = torch.tensor(r, dtype=input_ids.dtype)
        self.dms_cache_stats = stats
        return out

    def _generate_row(self, prompt, max_new_tokens, do_sample, temperature, eos_token_id):
        L = len(self.model.layers)
        K = self.config.num_key_value_heads
        # Per layer and head: cached (pos, k, v, marked) entries, oldest first.
        cache = [[[] for _ in range(K)] for _ in range(L)]
        peak = [[0] * K for _ in range(L)]
        reads = full = 0.0
        ids = prompt.tolist()
        n_prompt = len(ids)
        i = 0
        while i < len(ids):
            if i >= n_prompt and len(ids) >= n_prompt + max_new_tokens:
                break  # the last new token is returned, not fed
            token = torch.tensor([[ids[i]]], device=prompt.device)
            x = self.model.embed_tokens(token)
            pos = torch.tensor([i], device=prompt.device)
            for l, layer in enumerate(self.model.layers):
                att = layer.self_attn
                q, k, v, z = att.qkvz(x, layer.input_layernorm(x), pos, self.inv_freq(x.device))
                keys, vals = [], []
                for h in range(K):
                    entries = cache[l][h]
                    if i >= 1 and bool(z[0, h, 0] > 0) and entries and entries[-1][0] == i - 1:
                        entries[-1][3] = True
                    # Drop what the rule takes away before token i reads, then admit it.
                    entries[:] = [e for e in entries if self.visible(i - e[0], e[3])]
                    entries.append([i, k[0, h, 0], v[0, h, 0], False])
                    peak[l][h] = max(peak[l][h], len(entries))
                    reads += len(entries)
                    full += i + 1
                    keys.append(torch.stack([e[1] for e in entries]))
                    vals.append(torch.stack([e[2] for e in entries]))
                S = max(len(kk) for kk in keys)
                kt = torch.zeros(1, K, S, att.d, dtype=k.dtype, device=k.device)
                vt = torch.zeros_like(kt)
                bias = torch.full((1, K, 1, S), float("-inf"), device=k.device)
                for h in range(K):
                    n = len(keys[h])
                    kt[0, h, :n], vt[0, h, :n], bias[0, h, 0, :n] = keys[h], vals[h], 0.0
                x = x + att.o_proj(att.attend(q, kt, vt, bias))
                x = x + layer.ffn(layer.post_attention_layernorm(x))
            if i + 1 >= n_prompt and len(ids) < n_prompt + max_new_tokens:
                logits = self.head(x)[0, -1].float()
                if do_sample:
                    nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1))
                else:
                    nxt = int(logits.argmax())
                ids.append(nxt)
                if eos_token_id is not None and nxt == eos_token_id:
                    break
            i += 1
        held = sum(len(cache[l][h]) for l in range(L) for h in range(K))
        seen = i * L * K  # tokens fed through the cache
        return ids, {"peak_entries": peak,
                     "entries_now": [[len(cache[l][h]) for h in range(K)] for l in range(L)],
                     "effective_kv_cr": full / reads if reads else 1.0,
                     "end_of_sequence_kv_cr": seen / held if held else 1.0}
